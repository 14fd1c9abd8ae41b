"""A launcher that runs nothing: it answers the supervisor's requests as the real one
does, records them, and reports exits when a test says a process died.

:class:`FakeLauncher` is a :class:`corral.supervisor.launcher_client.LauncherClient` with
no connection: a ``Spawn`` gets a ``Spawned`` with a made-up pid (or the ``Error`` a test
asked for), a ``Terminate`` a ``Terminated`` (at once, or when the test releases it),
``Signal``, ``Listen`` and ``Notify`` an ``Ok``, ``List`` the children it "runs".  Every
request is kept in :attr:`FakeLauncher.requests`, in order.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from corral.protocol import messages as m
from corral.supervisor.clock import Clock
from corral.supervisor.launcher_client import LauncherClient, Message


@dataclass
class Child:
    """A process the fake launcher pretends to run."""

    name: str
    pid: int
    started_at: float
    spawns: int
    argv: list[str] = field(default_factory=list)

    def info(self) -> Message:
        """Its entry in a ``Children`` reply."""
        return {"name": self.name, "pid": self.pid, "started_at": self.started_at,
                "argv": self.argv, "spawns": self.spawns}


class FakeLauncher(LauncherClient):
    """Answers launcher requests in memory.

    Args:
        clock: gives ``started_at`` and exit times.
        on_exit: the supervisor's exit handler (``Supervisor.on_exit``); set it later with
            :attr:`on_exit` when the supervisor is built after the launcher.
        first_pid: the first made-up pid.

    Attributes:
        requests: every request, in order, as sent (``Spawn`` bodies decoded).
        children: what it runs, by pid.
        spawn_errors: launcher name -> error code (``ExecFailed``...) its next Spawns get.
        hold_terminates: when true, a ``Terminate`` is answered only by :meth:`finish_stop`.
    """

    def __init__(self, clock: Clock, on_exit: Callable[[Message], None] | None = None,
                 first_pid: int = 40_000) -> None:
        super().__init__(on_exit=self._exited, on_shutdown=lambda: None, on_lost=lambda: None)
        self.on_exit: Callable[[Message], None] = on_exit or (lambda message: None)
        self.clock = clock
        self.requests: list[Message] = []
        self.children: dict[int, Child] = {}
        self.spawn_errors: dict[str, str] = {}
        self.hold_terminates = False
        self.held: dict[int, asyncio.Future[Message]] = {}
        self.launcher_pid = first_pid - 1
        self._pids = itertools.count(first_pid)
        self._spawns: dict[str, int] = {}
        self._seq = itertools.count(1)

    # ------------------------------------------------------------------ the test's side
    def run(self, name: str, spawns: int = 1) -> Child:
        """Pretend ``name`` already runs (a child a new supervisor finds in ``List``)."""
        self._spawns[name] = max(self._spawns.get(name, 0), spawns)
        child = Child(name, next(self._pids), self.clock.time(), spawns)
        self.children[child.pid] = child
        return child

    def exit(self, name: str, exit_code: int | None = 1, signal: str | None = None) -> Message:
        """The running child called ``name`` exits: report it as the launcher would."""
        pid = self.pid_of(name)
        if pid is None:
            raise LookupError(f"no child named {name!r} runs (running: "
                              f"{sorted(c.name for c in self.children.values())})")
        child = self.children.pop(pid)
        self.held.pop(pid, None)
        message: Message = {"type": m.EXITED, "seq": next(self._seq), "name": name,
                            "pid": pid, "exit_code": exit_code, "signal": signal,
                            "at": self.clock.time(), "spawns": child.spawns,
                            "last_lines": []}
        self.on_exit(message)
        return message

    def pid_of(self, name: str) -> int | None:
        """The pid of the running child called ``name``, if one runs."""
        return next((c.pid for c in self.children.values() if c.name == name), None)

    def names(self) -> list[str]:
        """The names of the running children, sorted."""
        return sorted(c.name for c in self.children.values())

    def finish_stop(self, pid: int, method: str = m.GRACEFUL) -> None:
        """Answer the held ``Terminate`` of ``pid``: the child is gone."""
        future = self.held.pop(pid)
        self.children.pop(pid, None)
        future.set_result(self._terminated(method))

    def take(self) -> list[tuple[str, Any]]:
        """The requests since the last call, each as ``(type, name or pid)``; forgets
        them."""
        taken, self.requests = self.requests, []
        return [(r["type"], r.get("name", r.get("pid"))) for r in taken]

    # ------------------------------------------------------------- the supervisor's side
    def send_request(self, message: Message) -> asyncio.Future[Message]:
        self.requests.append(dict(message))
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        kind = message.get("type")
        if kind == m.SPAWN:
            future.set_result(self._spawn(message))
        elif kind == m.TERMINATE:
            pid = int(message["pid"])
            if pid in self.children and self.hold_terminates:
                self.held[pid] = future
            else:
                method = m.GRACEFUL if self.children.pop(pid, None) else m.ALREADY_EXITED
                future.set_result(self._terminated(method))
        elif kind == m.LIST:
            future.set_result({"type": m.CHILDREN, "id": None, "listeners": [],
                               "children": [c.info() for c in self.children.values()]})
        elif kind == m.LISTEN:
            future.set_result({"type": m.LISTENING, "id": None, "name": message.get("name"),
                               "host": message.get("host"), "port": message.get("port")})
        elif kind in (m.SIGNAL, m.NOTIFY, m.UNLISTEN):
            future.set_result({"type": m.OK, "id": None, "existed": False})
        else:
            future.set_result({"type": m.ERROR, "id": None, "code": m.E_BAD_REQUEST,
                               "message": f"the fake launcher does not answer {kind}"})
        return future

    def send_encoded(self, body: bytes, extra: bytes = b"") -> asyncio.Future[Message]:
        message: Message = json.loads(b"{" + extra + body[1:])
        return self.send_request(message)

    def close(self) -> None:
        """Nothing to close."""

    def _spawn(self, message: Message) -> Message:
        name = str(message["name"])
        code = self.spawn_errors.get(name)
        if code is not None:
            return {"type": m.ERROR, "id": None, "code": code,
                    "message": f"cannot start {name}: {code}"}
        self._spawns[name] = self._spawns.get(name, 0) + 1
        child = Child(name, next(self._pids), self.clock.time(), self._spawns[name],
                      list(message.get("argv", [])))
        self.children[child.pid] = child
        return {"type": m.SPAWNED, "id": None, "pid": child.pid,
                "started_at": child.started_at, "spawns": child.spawns}

    @staticmethod
    def _terminated(method: str) -> Message:
        signal = "TERM" if method == m.GRACEFUL else None
        return {"type": m.TERMINATED, "id": None, "method": method,
                "exit_code": None, "signal": signal}

    def _exited(self, message: Message) -> None:
        self.on_exit(message)
