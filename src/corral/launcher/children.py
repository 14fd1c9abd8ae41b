"""The child table: the services a launcher started and what it owes the supervisor about
their exits.  STDLIB ONLY.

A :class:`ChildTable` maps the pid of every running service process to its
:class:`Child`.  It also counts the spawns of each name (``List`` and ``Spawned`` report
them), keeps the ``Exited`` messages the supervisor has not acknowledged (replayed after
the next ``Hello``), and remembers recent exits for a ``Terminate`` that comes late.

It keeps the **standing orders** too: a child's ``on_exit`` (a
:class:`~corral.protocol.standing.StandingOrder`, or None: wait for the supervisor) says
what its next exit calls for, and what order the process started then gets;
:meth:`ChildTable.take_order` hands it over at that exit, and a delayed respawn waits in
``respawns`` (by the old pid) until it is due, where :meth:`ChildTable.order` may still
change or cancel it.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from corral.protocol import messages as m
from corral.protocol.standing import StandingOrder

from . import record
from .output import PipeReader
from .server import ExitQueue, Message

# How many exits are remembered for a Terminate of a process that is already gone.
RECENT_EXITS = 1000


@dataclass
class Child:
    """A service process the launcher started."""

    name: str
    pid: int
    argv: list[str]
    started_at: float
    readers: list[PipeReader]
    terminate_waiters: list[Any] = field(default_factory=list)
    killed: bool = False
    cgroup: str | None = None
    oom_base: int | None = None  # memory.events oom_kill when it started
    mark: str = ""  # its CORRAL_INSTANCE_ID
    entry: record.Entry | None = None  # for the children record, once it is written
    strays: set[int] = field(default_factory=set)  # left-behind processes signalled
    request: Message | None = None  # the Spawn that started it, for a respawn
    on_exit: StandingOrder | None = None  # its standing order


@dataclass
class Respawn:
    """A respawn waiting for its delay: the child that exited, the order's delay, when it
    exited (``time.monotonic()``), how long it had run, and the order of the process the
    respawn starts."""

    child: Child
    after_ms: int
    exited_at: float
    ran_ms: float = 0.0
    then: StandingOrder | None = None

    def due_in(self, now: float) -> float:
        """Seconds until it is due (0 or less: now)."""
        return self.exited_at + self.after_ms / 1000 - now


class ChildTable(Mapping[int, Child]):
    """Running children by pid (a read-only mapping; :meth:`add` and :meth:`remove`
    change it), with ``spawns`` per name, the unacknowledged ``exits`` and
    ``recent_exits`` by pid."""

    def __init__(self) -> None:
        self._by_pid: dict[int, Child] = {}
        self.spawns: Counter[str] = Counter()
        self.exits = ExitQueue()
        self.recent_exits: dict[int, m.Exited] = {}
        self.respawns: dict[int, Respawn] = {}  # exited pid -> its respawn, not yet due

    def __getitem__(self, pid: int) -> Child:
        return self._by_pid[pid]

    def __iter__(self) -> Iterator[int]:
        return iter(self._by_pid)

    def __len__(self) -> int:
        return len(self._by_pid)

    def add(self, child: Child) -> int:
        """Take in a child just spawned; return how many spawns its name has had."""
        self._by_pid[child.pid] = child
        self.spawns[child.name] += 1
        return self.spawns[child.name]

    def remove(self, pid: int) -> Child:
        """Forget the child ``pid`` (it was reaped)."""
        return self._by_pid.pop(pid)

    def order(self, pid: int, on_exit: StandingOrder | None) -> bool:
        """Make ``on_exit`` the standing order of the running child ``pid``, or of the
        respawn that waits for its delay since ``pid`` exited (where it is applied to
        that exit: None, or a delay of None, cancels it); False when ``pid`` is neither."""
        child = self._by_pid.get(pid)
        if child is not None:
            child.on_exit = on_exit
            return True
        waiting = self.respawns.get(pid)
        if waiting is None:
            return False
        after, then, _ = (None, None, False) if on_exit is None else \
            on_exit.at_exit(waiting.ran_ms)
        if after is None:
            del self.respawns[pid]
        else:
            waiting.after_ms, waiting.then = after, then
        return True

    def cancel_order(self, pid: int) -> None:
        """No standing order for ``pid`` any more, running or waiting (a stop)."""
        self.order(pid, None)

    def take_order(self, child: Child,
                   ran_ms: float) -> tuple[int | None, StandingOrder | None, bool]:
        """What the standing order of ``child``, just reaped after ``ran_ms``, says of this
        exit (see :meth:`.StandingOrder.at_exit`; ``(None, None, False)`` without one).
        The order is used up."""
        order, child.on_exit = child.on_exit, None
        return (None, None, False) if order is None else order.at_exit(ran_ms)

    def exited(self, child: Child, code: int, oom_killed: bool | None,
               respawn_after_ms: int | None = None, cooled: bool = False,
               spawns: int | None = None) -> m.Exited:
        """The ``Exited`` report of a child that was reaped with exit ``code`` (negative:
        the signal), queued until the supervisor acknowledges it; ``respawn_after_ms``:
        the standing order the launcher carries out for this exit (``cooled``: the one for
        a child that outlived the order's cooldown); ``spawns``: its name's count when it
        exited (given when a respawn was counted first)."""
        exited: m.Exited = {
            "type": m.EXITED, "name": child.name, "pid": child.pid, "at": time.time(),
            "exit_code": code if code >= 0 else None,
            "signal": m.signal_name(-code) if code < 0 else None,
            "last_lines": [line[:1000].decode(errors="replace")
                           for line in child.readers[0].recent if line],
            "spawns": self.spawns[child.name] if spawns is None else spawns,
        }
        if oom_killed is not None:
            exited["oom_killed"] = oom_killed
        if child.strays:
            exited["strays"] = sorted(child.strays)
        if respawn_after_ms is not None:
            exited["respawn_after_ms"] = respawn_after_ms
            if cooled:
                exited["cooled"] = True
        self.recent_exits[child.pid] = exited
        if len(self.recent_exits) > RECENT_EXITS:
            self.recent_exits.pop(next(iter(self.recent_exits)))
        return self.exits.add(exited)

    def waiting(self, now: float) -> list[m.WaitingRespawn]:
        """The ``respawns`` of a ``Children`` reply (``now``: ``time.monotonic()``)."""
        found: list[m.WaitingRespawn] = []
        for pid, waiting in self.respawns.items():
            entry: m.WaitingRespawn = {"name": waiting.child.name, "old_pid": pid,
                                       "due_in_ms": max(0, round(waiting.due_in(now) * 1000))}
            exited = self.recent_exits.get(pid)
            if exited is not None:
                entry["exited"] = exited
            found.append(entry)
        return found

    def listing(self) -> list[m.ChildInfo]:
        """The ``children`` of a ``Children`` reply."""
        return [{"name": c.name, "pid": c.pid, "started_at": c.started_at, "argv": c.argv,
                 "spawns": self.spawns[c.name], "cgroup": c.cgroup,
                 "on_exit": None if c.on_exit is None else c.on_exit.wire()}
                for c in self._by_pid.values()]
