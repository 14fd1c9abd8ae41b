"""The only door the API may use into the supervisor.

Read models are plain JSON-able dicts (see ``docs/api.md``); commands are coroutines
that return once their effect is visible (a stopped service is down, a started one has
its pid).  Process-level requests (restart or stop the supervisor) are callbacks given
by the composition root, :mod:`corral.daemon`.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import psutil

from corral import __version__
from corral.errors import SpecError
from corral.logs import reader
from corral.protocol import paths
from corral.spec import ProcessSpec, load_process, validate_process

from .events import Event, rfc3339
from .loop import Supervisor


class Facade:
    """What the API can see and do.

    Args:
        supervisor: the running supervisor.
        request_exit: ``request_exit(code)`` ends the supervisor process with ``code``
            after the current response is sent (0: restart me; 84: stop everything).
    """

    def __init__(self, supervisor: Supervisor, request_exit: Callable[[int], None]) -> None:
        self._sup = supervisor
        self._request_exit = request_exit

    # reads
    def status(self) -> dict[str, Any]:
        launcher = self._sup.launcher
        counts: dict[str, int] = {"total": len(self._sup.services)}
        for entry in self._sup.status():
            counts[entry["state"]] = counts.get(entry["state"], 0) + 1
        return {"version": __version__,
                "launcher_pid": launcher.launcher_pid if launcher else None,
                "supervisor_pid": os.getpid(), "state_dir": str(self._sup.state_dir),
                "started_at": rfc3339(self._sup.started_at),
                "uptime_s": round(time.time() - self._sup.started_at, 3),
                "services": counts}

    def services(self) -> list[dict[str, Any]]:
        return self._sup.status()

    def service(self, name: str) -> dict[str, Any]:
        return self._sup.get(name).as_dict()

    def history(self, name: str) -> dict[str, Any]:
        """CPU and RSS points of the last hour, per instance (for charts)."""
        service = self._sup.get(name)
        return {"name": name, "instances": [
            {"index": i.index, "points": [{"at": rfc3339(t), "cpu": c, "rss": r}
                                          for t, c, r in i.history]}
            for i in sorted(service.instances.values(), key=lambda i: i.index)]}

    def events(self, n: int, service: str | None) -> list[Event]:
        if service is not None:
            self._sup.get(service)
        return self._sup.events.recent(n, service)

    def event_count(self) -> int:
        """Events recorded since this supervisor started (the last event's ``seq``)."""
        last = self._sup.events.recent(1)
        return int(last[0]["seq"]) if last else 0

    def own_processes(self) -> list[dict[str, Any]]:
        """CPU seconds, RSS and uptime of the supervisor and the launcher themselves
        (for ``/metrics``); a process that cannot be read is left out."""
        launcher = self._sup.launcher
        pids = [("supervisor", os.getpid())]
        if launcher is not None and launcher.launcher_pid:
            pids.append(("launcher", launcher.launcher_pid))
        figures = []
        for role, pid in pids:
            try:
                proc = psutil.Process(pid)
                with proc.oneshot():
                    times = proc.cpu_times()
                    figures.append({"process": role, "pid": pid,
                                    "cpu_seconds": times.user + times.system,
                                    "rss_bytes": proc.memory_info().rss,
                                    "uptime_s": max(0.0, time.time() - proc.create_time())})
            except psutil.Error:
                continue
        return figures

    def subscribe(self) -> asyncio.Queue[Event | None]:
        return self._sup.events.subscribe()

    def unsubscribe(self, queue: asyncio.Queue[Event | None]) -> None:
        self._sup.events.unsubscribe(queue)

    def log_path(self, name: str) -> Path:
        self._sup.get(name)
        return paths.logs_dir(self._sup.state_dir) / f"{name}.log"

    def log_tail(self, name: str, n: int) -> list[str]:
        keep = self._sup.get(name).spec.logs.keep
        return reader.tail(self.log_path(name), n, keep)

    def log_follow(self, name: str, n: int) -> AsyncIterator[str]:
        return reader.follow(self.log_path(name), n)

    # commands
    def parse_spec(self, spec: dict[str, Any] | None, text: str | None,
                   source: str) -> ProcessSpec:
        """Validate a process entry given as a dict or as YAML text."""
        if text is not None:
            return load_process(text, source)
        if spec is None:
            raise SpecError("give either 'spec' (an object) or 'yaml' (text)")
        return validate_process(spec, source)

    async def load(self, spec: ProcessSpec) -> str:
        self._sup.conflict_if_stopping()
        return await self._sup.load(spec)

    async def unload(self, name: str) -> None:
        self._sup.conflict_if_stopping()
        await self._sup.unload(name)

    async def start(self, name: str) -> None:
        self._sup.conflict_if_stopping()
        await self._sup.start(name)

    async def stop(self, name: str) -> None:
        self._sup.conflict_if_stopping()
        await self._sup.stop(name)

    async def restart(self, name: str) -> None:
        self._sup.conflict_if_stopping()
        await self._sup.restart(name)

    async def reload(self, name: str) -> None:
        self._sup.conflict_if_stopping()
        await self._sup.reload(name)

    async def scale(self, name: str, instances: int) -> None:
        self._sup.conflict_if_stopping()
        await self._sup.scale(name, instances)

    async def wait_ready(self, name: str, timeout: float | None) -> None:
        if timeout is not None:
            await self._sup.wait_ready(name, timeout)

    def restart_supervisor(self) -> None:
        self._request_exit(0)

    def stop_supervisor(self) -> None:
        self._request_exit(84)

