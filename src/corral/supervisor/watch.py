"""The health watch of one instance: runs its probe every ``interval`` in a task of its own.

Each probe is bounded by the check's timeout (see :mod:`corral.health.probes`), so a check
that hangs delays nothing but its own next run.  Results go to a callback together with
the pid they were taken for, so a late result about a process that has since been
replaced is recognised and dropped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping

from corral.health.probes import Result, probe
from corral.spec import HealthSpec

#: Runs a check once: ``probe(spec, env, cwd, user=..., group=...)``.
Probe = Callable[..., Awaitable[Result]]


class HealthWatch:
    """Probe one instance until :meth:`stop` (``run_probe``: how a check is run; the
    real one by default, a fake in unit tests)."""

    def __init__(self, spec: HealthSpec, pid: int, env: Mapping[str, str], cwd: str | None,
                 on_result: Callable[[int, Result], None], run_probe: Probe = probe) -> None:
        self.spec = spec
        self._probe = run_probe
        self.pid = pid
        self._env = env
        self._cwd = cwd
        self._on_result = on_result
        self.user: str | None = None    # an exec check runs as the service's user
        self.group: str | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> HealthWatch:
        self._task = asyncio.create_task(self._run(), name=f"health-{self.pid}")
        return self

    async def _run(self) -> None:
        if self.spec.start_period > 0:
            await asyncio.sleep(self.spec.start_period)
        while True:
            result = await self._probe(self.spec, self._env, self._cwd, user=self.user,
                                       group=self.group)
            self._on_result(self.pid, result)
            await asyncio.sleep(self.spec.interval)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
