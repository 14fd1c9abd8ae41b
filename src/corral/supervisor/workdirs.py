"""Working directories: ``run/<process>/<index>`` per instance, emptied for each new run,
and ``run/<process>/last-failed``, the directory of the last run that failed (kept for
inspection, one per process).  Directories given as ``cwd`` are the user's: created if
missing, never emptied or removed."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

from corral.protocol import paths
from corral.spec import ProcessSpec

from .environment import Environment
from .identity import give_workdir
from .instance import Instance


class Workdirs:
    """The working directories of the instances under ``state_dir``."""

    def __init__(self, state_dir: Path, environment: Environment) -> None:
        self._run = paths.run_dir(state_dir)
        self._environment = environment

    def path(self, inst: Instance) -> Path:
        """``run/<process>/<index>`` (``<index>@<gen>`` after a spec change)."""
        leaf = f"{inst.index}@{inst.gen}" if inst.gen else str(inst.index)
        return self._run / inst.service / leaf

    def cwd(self, inst: Instance, spec: ProcessSpec) -> str:
        """Where ``inst``'s process (and its hooks) run: ``cwd`` if given, else its own
        directory, created (owned by the process's user) if missing."""
        if spec.cwd is not None:
            return self._environment.effective(spec, inst).cwd or spec.cwd
        workdir = self.path(inst)
        if not workdir.is_dir():
            workdir.mkdir(parents=True, exist_ok=True)
            give_workdir(workdir, spec)
        return str(workdir)

    def fresh(self, inst: Instance, spec: ProcessSpec, workdir: Path) -> None:
        """Empty ``workdir`` for a new run; the last failed run's is kept as
        ``run/<process>/last-failed`` for inspection (one per process)."""
        if spec.cwd is not None:
            workdir.mkdir(parents=True, exist_ok=True)
            return
        if workdir.exists():
            if inst.failed_run:
                kept = workdir.parent / "last-failed"
                shutil.rmtree(kept, ignore_errors=True)
                workdir.rename(kept)
            else:
                shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True, exist_ok=True)
        give_workdir(workdir, spec)
        inst.failed_run = False

    def forget(self, inst: Instance, spec: ProcessSpec | None) -> None:
        """Remove an ended instance's directory, or keep it as ``last-failed`` if its last
        run failed.  Directories given as ``cwd`` are the user's."""
        if spec is None or spec.cwd is not None:
            return
        workdir = self.path(inst)
        if not workdir.exists():
            return
        if inst.failed_run:
            kept = workdir.parent / "last-failed"
            shutil.rmtree(kept, ignore_errors=True)
            with contextlib.suppress(OSError):
                workdir.rename(kept)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
