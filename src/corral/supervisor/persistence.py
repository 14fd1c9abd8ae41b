"""The supervisor's files in the state directory, read at start and written atomically.

- ``target.yaml``: the loaded specs, in load order (the file's own text after
  ``sup run --target``);
- ``desired.json``: which services the user stopped, and each service's generation;
- ``rollout.json``: the last rollout's record (a new supervisor resumes or shows it);
- ``run/spawn_base.json``: per launcher name, the launcher's Spawn count before the
  current record's first spawn (restarts are the launcher's count less this);
- ``run/ports.json``: which instance holds which port (a new supervisor adopts them).

Each JSON file carries its format (see :mod:`.formats`, which the supervisor runs over the
directory before it reads any of them); the readers here also take a file of an older
format, brought up to date as it is read.
A write that fails raises :class:`~corral.errors.StateWriteFailed` and leaves the old
file as it was; the ``run/`` files are caches, which their callers write best effort.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from pathlib import Path
from typing import Any

from corral.protocol import paths
from corral.spec import Target
from corral.states import Desired

from . import formats, statefile
from .instance import Service


class StateFiles:
    """Reads and writes the supervisor's files under ``state_dir``."""

    def __init__(self, state_dir: Path) -> None:
        self.target_path = state_dir / "target.yaml"
        self.desired_path = state_dir / "desired.json"
        self.rollout_path = state_dir / "rollout.json"
        self.spawn_base_path = paths.run_dir(state_dir) / "spawn_base.json"
        self.ports_path = paths.run_dir(state_dir) / "ports.json"

    def stored_target(self) -> str | None:
        """The text of ``target.yaml``, None when there is none."""
        return self.target_path.read_text() if self.target_path.exists() else None

    def save_target_text(self, text: str) -> None:
        statefile.atomic_write(self.target_path, text.encode())

    def save(self, target: Target, services: Mapping[str, Service],
             without: Set[str] = frozenset()) -> None:
        """Persist the desired state: ``target`` and which of ``services`` are stopped
        (``without``: services being removed, saved as gone)."""
        statefile.atomic_write(self.target_path, target.to_yaml().encode())
        self.save_desired(services, without)

    def save_desired(self, services: Mapping[str, Service],
                     without: Set[str] = frozenset()) -> None:
        kept = {n: s for n, s in services.items() if n not in without}
        statefile.write_json(self.desired_path, {
            "format": formats.DESIRED,
            "down": sorted(n for n, s in kept.items() if s.desired is Desired.DOWN),
            "gen": {n: s.gen for n, s in kept.items() if s.gen}})

    def desired(self) -> tuple[set[str], dict[str, Any]]:
        """The stopped services, and each service's generation (as stored)."""
        stored = self._read("desired.json", self.desired_path, {})
        return set(stored.get("down", [])), dict(stored.get("gen", {}))

    def rollout(self) -> Any:
        """The last rollout's record as saved (None: no rollout yet).

        Raises:
            ValueError: the file is not JSON.
        """
        return self._read("rollout.json", self.rollout_path, None)

    def save_rollout(self, state: dict[str, Any]) -> None:
        statefile.write_json(self.rollout_path, {**state, "format": formats.ROLLOUT})

    def spawn_base(self) -> dict[str, int]:
        doc = self._read("run/spawn_base.json", self.spawn_base_path, {})
        base: dict[str, int] = {k: v for k, v in doc.items() if k != "format"}
        return base

    def save_spawn_base(self, base: dict[str, int]) -> None:
        statefile.write_json(self.spawn_base_path, {**base, "format": formats.SPAWN_BASE})

    def ports(self) -> dict[str, dict[str, int]]:
        doc = self._read("run/ports.json", self.ports_path, {})
        held: dict[str, dict[str, int]] = {k: v for k, v in doc.items() if k != "format"}
        return held

    def save_ports(self, held: dict[str, dict[str, int]]) -> None:
        statefile.write_json(self.ports_path, {**held, "format": formats.PORTS})

    @staticmethod
    def _read(name: str, path: Path, default: Any) -> Any:
        """``path`` (file ``name`` of :data:`formats.CURRENT`) in the current format, or
        ``default`` if it does not exist.

        Raises:
            ValueError: the file is not JSON.
            formats.TooNew: the file is of a newer format.
        """
        doc = statefile.read_json(path, None)
        return default if doc is None else formats.upgrade(name, path, doc)
