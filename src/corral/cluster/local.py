"""The embedded default: service groups on one host, without etcd.

Everything a cluster offers works here for the groups of this one supervisor: its census
(its own members, always alive), group configs with the same version rule, binds between
its local groups.  Group configs are kept in ``<state>/cluster/config.json`` (written
atomically), so they survive restarts; the census is rebuilt from what the supervisor
registers.  Joining a cluster later changes no target file: the process specs are the
same, only the backend is.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from corral import atomic
from corral.errors import CorralError, StateWriteFailed

from .backend import BaseBackend, ClusterListener
from .census import LinkStatus
from .records import GroupConfig, Identity, check_config, refuse_unless_newer

_FORMAT = 1


class LocalBackend(BaseBackend):
    """:class:`~corral.cluster.backend.ClusterBackend` for one host.

    Args:
        identity: this supervisor's member name, host and address.
        state_dir: where ``cluster/config.json`` lives; None keeps configs in memory only.
    """

    def __init__(self, identity: Identity, state_dir: Path | None = None) -> None:
        super().__init__(identity)
        self._path = state_dir / "cluster" / "config.json" if state_dir is not None else None
        self._configs: dict[str, GroupConfig] = {}

    async def probe(self) -> None:
        return None

    async def start(self, listener: ClusterListener) -> None:
        """Load the stored configs.  Raises CorralError naming the file if it is damaged."""
        self._configs = self._load()
        self._listener = listener
        self._emit_link(self.link())
        for group, config in self._configs.items():
            self._emit_config(group, config)

    async def wait_synced(self, timeout: float) -> None:
        return None

    async def close(self, *, leave: bool = False) -> None:
        self._listener = None

    def link(self) -> LinkStatus:
        return LinkStatus("local", True, self._identity.member)

    def group_config(self, service_group: str) -> GroupConfig | None:
        return self._configs.get(service_group)

    async def apply_config(self, service_group: str, version: int,
                           values: Mapping[str, Any]) -> GroupConfig:
        new = check_config(service_group, version, values)
        current = self._configs.get(service_group)
        if current is not None and current.version == version and current.values == new.values:
            return current
        refuse_unless_newer(service_group, current, version)
        configs = {**self._configs, service_group: new}
        self._save(configs)
        self._configs = configs
        self._emit_config(service_group, new)
        return new

    def _load(self) -> dict[str, GroupConfig]:
        if self._path is None:
            return {}
        try:
            raw = json.loads(self._path.read_bytes())
            return {group: GroupConfig(int(item["version"]), dict(item["values"]))
                    for group, item in raw["configs"].items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CorralError(f"{self._path}: cannot read the group configs: {exc}") from None

    def _save(self, configs: Mapping[str, GroupConfig]) -> None:
        if self._path is None:
            return
        data = {"format": _FORMAT, "configs": {g: c.to_json() for g, c in sorted(configs.items())}}
        try:
            os.makedirs(self._path.parent, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise CorralError(f"{self._path}: cannot write the group configs: "
                              f"{exc.strerror or exc}") from None
        try:
            atomic.write(self._path, json.dumps(data, indent=1, sort_keys=True).encode() + b"\n")
        except OSError as exc:
            raise StateWriteFailed(self._path, exc) from None
