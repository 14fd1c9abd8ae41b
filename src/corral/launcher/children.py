"""The child table: the services a launcher started and what it owes the supervisor about
their exits.  STDLIB ONLY.

A :class:`ChildTable` maps the pid of every running service process to its
:class:`Child`.  It also counts the spawns of each name (``List`` and ``Spawned`` report
them), keeps the ``Exited`` messages the supervisor has not acknowledged (replayed after
the next ``Hello``), and remembers recent exits for a ``Terminate`` that comes late.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from corral.protocol import messages as m

from . import record
from .output import PipeReader
from .server import ExitQueue

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


class ChildTable(Mapping[int, Child]):
    """Running children by pid (a read-only mapping; :meth:`add` and :meth:`remove`
    change it), with ``spawns`` per name, the unacknowledged ``exits`` and
    ``recent_exits`` by pid."""

    def __init__(self) -> None:
        self._by_pid: dict[int, Child] = {}
        self.spawns: Counter[str] = Counter()
        self.exits = ExitQueue()
        self.recent_exits: dict[int, m.Exited] = {}

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

    def exited(self, child: Child, code: int, oom_killed: bool | None) -> m.Exited:
        """The ``Exited`` report of a child that was reaped with exit ``code`` (negative:
        the signal), queued until the supervisor acknowledges it."""
        exited: m.Exited = {
            "type": m.EXITED, "name": child.name, "pid": child.pid, "at": time.time(),
            "exit_code": code if code >= 0 else None,
            "signal": m.signal_name(-code) if code < 0 else None,
            "last_lines": [line[:1000].decode(errors="replace")
                           for line in child.readers[0].recent if line],
            "spawns": self.spawns[child.name],
        }
        if oom_killed is not None:
            exited["oom_killed"] = oom_killed
        if child.strays:
            exited["strays"] = sorted(child.strays)
        self.recent_exits[child.pid] = exited
        if len(self.recent_exits) > RECENT_EXITS:
            self.recent_exits.pop(next(iter(self.recent_exits)))
        return self.exits.add(exited)

    def listing(self) -> list[m.ChildInfo]:
        """The ``children`` of a ``Children`` reply."""
        return [{"name": c.name, "pid": c.pid, "started_at": c.started_at, "argv": c.argv,
                 "spawns": self.spawns[c.name], "cgroup": c.cgroup}
                for c in self._by_pid.values()]
