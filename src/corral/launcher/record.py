"""The launcher's children record, and stopping what a launcher that died left running.
STDLIB ONLY.

A launcher killed with SIGKILL (the OOM killer, a careless ``kill -9``) cannot stop its
services: they run on, re-parented to init, and the next launcher on the same state
directory would start a second copy of each beside the first.  So the launcher keeps a
record of its children in ``<state>/run/launcher-children.jsonl``, one JSON object a
line: a header, then one line per child::

    {"version": 1, "boot_id": "…", "launcher": "<pid>.<start>"}
    {"name": "web/0", "pid": 120, "pgid": 120, "start": 99812, "mark": "web/0@77.500.3",
     "stop_signal": "TERM", "stop_timeout": 8.0, "cgroup": null}

``start`` is the process's start time (``/proc/<pid>/stat`` field 22), so a pid that was
reused by another process never matches; ``boot_id`` voids a record from before a reboot
(start times count from boot).

How it is written, and why: it is on the restart path.  A rewrite by temp file and rename
costs milliseconds on ext4 (a rename over an existing file flushes its data), a
thousand times an append, so the launcher appends instead: at the end of a loop turn
that spawned, the new children's lines in one ``pwrite``, however many spawns the turn
had (figures in docs/benchmarks.md, "Figures behind the code").  An exit
writes nothing: an entry whose process is gone matches nothing.  When dead lines
outnumber live ones (2 x live + 64), the file is compacted in place (the live lines from
offset 0, then ``ftruncate``).  A kill cuts a write at worst at a page boundary: the
reader skips a line it cannot decode, and whatever a cut loses is still found by the
instance marks (below), only with the default stop.  There is no fsync: the record only
matters while the processes it names can run, that is within this boot; the page cache
survives a killed launcher, and after a power loss the boot id voids the file.

At start, before anything else runs, a launcher that finds a record stops what it names
(:func:`plan`, then :func:`stop`): each recorded process whose start time still matches,
with its process group; every process that carries an instance mark of the dead
launcher (see :mod:`.procs`: daemons that left the group, children spawned after the last
write); the processes of its cgroup leaves; and the descendants of all these.  Each group
gets its recorded stop signal, and KILL once its recorded stop timeout has passed; the
launcher waits until they are gone and only then starts the supervisor.  A clean exit
removes the record.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from corral.protocol import defaults
from corral.protocol import messages as m

from . import procs

RECORD_VERSION = 1
#: After KILL, how long to wait for the processes to be gone before going on anyway
#: (a process in uninterruptible sleep dies when its I/O ends).
KILL_WAIT = 5.0


class RecordError(ValueError):
    """The record cannot be read as one (another version, or damaged)."""


@dataclass(frozen=True)
class Entry:
    """One recorded child: who it is, and how to stop it."""

    name: str
    pid: int
    pgid: int
    start: int
    mark: str
    stop_signal: str = defaults.STOP_SIGNAL
    stop_timeout: float = defaults.STOP_TIMEOUT
    cgroup: str | None = None

    def encode(self) -> str:
        return json.dumps({"name": self.name, "pid": self.pid, "pgid": self.pgid,
                           "start": self.start, "mark": self.mark,
                           "stop_signal": self.stop_signal, "stop_timeout": self.stop_timeout,
                           "cgroup": self.cgroup}, separators=(",", ":"))

    @classmethod
    def decode(cls, data: Any) -> Entry:
        """Raises :class:`RecordError` naming the bad field."""
        if not isinstance(data, dict):
            raise RecordError("a child is not an object")
        ints: dict[str, int] = {}
        for key in ("pid", "pgid", "start"):
            value = data.get(key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise RecordError(f"a child's {key!r} is not a number")
            ints[key] = value
        name, mark, sig = data.get("name"), data.get("mark"), data.get("stop_signal")
        timeout, cgroup = data.get("stop_timeout"), data.get("cgroup")
        if not isinstance(name, str) or not isinstance(mark, str):
            raise RecordError("a child's 'name' or 'mark' is not a string")
        if not isinstance(sig, str):
            raise RecordError(f"{name}: 'stop_signal' is not a signal name")
        try:
            m.signal_number(sig)
        except ValueError:
            raise RecordError(f"{name}: unknown stop signal {sig!r}") from None
        if (not isinstance(timeout, (int, float)) or isinstance(timeout, bool)
                or not 0 <= timeout < 1e7):
            raise RecordError(f"{name}: 'stop_timeout' is not a number of seconds")
        if cgroup is not None and not isinstance(cgroup, str):
            raise RecordError(f"{name}: 'cgroup' is not a path")
        return cls(name=name, pid=ints["pid"], pgid=ints["pgid"], start=ints["start"],
                   mark=mark, stop_signal=sig, stop_timeout=float(timeout), cgroup=cgroup)


@dataclass(frozen=True)
class Record:
    """A launcher's record: which boot, which launcher, which children."""

    boot_id: str
    launcher: str  # "<pid>.<start>", as in the instance marks
    children: list[Entry]


def header(boot_id: str, launcher: str) -> str:
    """The record's first line."""
    return json.dumps({"version": RECORD_VERSION, "boot_id": boot_id, "launcher": launcher},
                      separators=(",", ":"))


def parse(text: str) -> Record:
    """Read a record.  A child line that cannot be decoded is skipped (a write cut by a
    kill); a later line for the same mark wins.

    Raises:
        RecordError: the header is missing, damaged or of another version.
    """
    first, _, rest = text.partition("\n")
    try:
        data = json.loads(first)
    except ValueError as exc:
        raise RecordError(f"the first line is not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise RecordError("the first line is not a JSON object")
    if data.get("version") != RECORD_VERSION:
        raise RecordError(f"version {data.get('version')!r}; this launcher reads "
                          f"version {RECORD_VERSION}")
    boot, launcher = data.get("boot_id"), data.get("launcher")
    if not isinstance(boot, str) or not isinstance(launcher, str):
        raise RecordError("'boot_id' or 'launcher' is not a string")
    children: dict[str, Entry] = {}
    for line in rest.split("\n"):
        try:
            entry = Entry.decode(json.loads(line))
        except (ValueError, RecordError):
            continue
        children.pop(entry.mark, None)
        children[entry.mark] = entry
    return Record(boot_id=boot, launcher=launcher, children=list(children.values()))


def load(path: str) -> Record | None:
    """The record at ``path``; None if there is none.  Raises :class:`RecordError`."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise RecordError(f"cannot read it ({exc.strerror})") from None
    return parse(text)


class Writer:
    """The launcher's own record file: a header, lines appended, compacted in place.

    Every method raises OSError when the file cannot be written (a read-only or full
    state directory); the launcher says so once and goes on without it.
    """

    def __init__(self, path: str, boot_id: str, launcher: str) -> None:
        self.path = path
        self.header = (header(boot_id, launcher) + "\n").encode()
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        self.size = 0
        self.lines = 0  # child lines in the file, live or dead
        self._put(self.header, 0)
        self.size = len(self.header)

    @classmethod
    def resume(cls, path: str, fd: int, header: bytes, size: int, lines: int) -> Writer:
        """The writer of a launcher this one replaced in place (same process, same file)."""
        writer = cls.__new__(cls)
        writer.path, writer.fd, writer.header = path, fd, header
        writer.size, writer.lines = size, lines
        return writer

    def append(self, entries: list[str]) -> None:
        """Add children's lines (:meth:`Entry.encode`) in one write."""
        data = "".join(entry + "\n" for entry in entries).encode()
        self._put(data, self.size)
        self.size += len(data)
        self.lines += len(entries)

    def crowded(self, live: int) -> bool:
        """Whether dead lines have piled up (more than 2 x ``live`` + 64 lines in all)."""
        return self.lines > 2 * live + 64

    def compact(self, live: list[str]) -> None:
        """Rewrite the file in place with the ``live`` children's lines only."""
        data = self.header + "".join(entry + "\n" for entry in live).encode()
        self._put(data, 0)
        os.ftruncate(self.fd, len(data))
        self.size, self.lines = len(data), len(live)

    def close(self) -> None:
        """At a clean exit: nothing of ours runs any more, so no record is left."""
        os.close(self.fd)
        with contextlib.suppress(OSError):
            os.unlink(self.path)

    def _put(self, data: bytes, offset: int) -> None:
        view = memoryview(data)
        while view:
            done = os.pwrite(self.fd, view, offset)
            view, offset = view[done:], offset + done


# --------------------------------------------------------------------- what to stop
@dataclass
class Group:
    """The processes to stop for one recorded child (or one mark no entry names)."""

    entry: Entry
    pids: list[int] = field(default_factory=list)


def plan(record: Record, table: dict[int, procs.Stat], mark_of: Callable[[int], str | None],
         cgroup_procs: Callable[[str], list[int]], spare: set[int]) -> list[Group]:
    """Which live processes belong to the dead launcher of ``record``, by child, in the
    order to stop them (reverse spawn order).  Pure: the process table, the mark reader
    and the cgroup reader are given.

    A process belongs to it if it is a recorded child whose start time matches, a member
    of such a child's process group, in a recorded cgroup, carries an instance mark of
    that launcher, or descends from one of these.  ``spare`` (the new launcher and its
    ancestors) is never included.
    """
    live = {pid: stat for pid, stat in table.items() if stat.alive and pid not in spare}
    owner: dict[int, Entry] = {}
    by_mark = {entry.mark: entry for entry in record.children}
    leaders = {entry.pgid: entry for entry in record.children
               if (s := live.get(entry.pid)) is not None and s.start == entry.start}
    for entry in leaders.values():
        owner[entry.pid] = entry
    for entry in record.children:
        if entry.cgroup:
            for pid in cgroup_procs(entry.cgroup):
                if pid in live:
                    owner.setdefault(pid, entry)
    for pid, stat in live.items():
        if stat.pgrp in leaders:
            owner.setdefault(pid, leaders[stat.pgrp])
    for pid in live:
        if pid in owner:
            continue
        mark = mark_of(pid)
        parsed = procs.parse_mark(mark) if mark else None
        if mark and parsed and parsed[1] == record.launcher:
            if mark not in by_mark:  # spawned after the last write: the fallback stop
                by_mark[mark] = Entry(name=parsed[0], pid=0, pgid=0, start=0, mark=mark)
            owner[pid] = by_mark[mark]
    kids: dict[int, list[int]] = {}
    for pid, stat in live.items():
        kids.setdefault(stat.ppid, []).append(pid)
    todo = list(owner)
    while todo:
        parent = todo.pop()
        for kid in kids.get(parent, []):
            if kid not in owner:
                owner[kid] = owner[parent]
                todo.append(kid)
    groups: dict[str, Group] = {}
    order = [*reversed(record.children), *(e for e in by_mark.values()
                                            if e not in record.children)]
    for entry in order:
        groups.setdefault(entry.mark, Group(entry))
    for pid, entry in sorted(owner.items()):
        groups[entry.mark].pids.append(pid)
    return [group for group in groups.values() if group.pids]


# ------------------------------------------------------------------------- stopping
@dataclass
class _Target:
    pid: int
    start: int
    group: Group
    fd: int | None  # a pidfd: signals reach this very process, never a reused pid


@dataclass
class Outcome:
    """How a :func:`stop` went: processes that exited on the stop signal, were killed,
    and (pids) were still there when the launcher gave up waiting."""

    graceful: int = 0
    killed: int = 0
    left: list[int] = field(default_factory=list)


def stop(groups: list[Group], table: dict[int, procs.Stat],
         hurry: Callable[[], bool] = lambda: False,
         clock: Callable[[], float] = time.monotonic) -> Outcome:
    """Send each group its stop signal, KILL what is left of it after its stop timeout
    (or at once, from the moment ``hurry()`` says so: the launcher was told to stop), and
    return once every process is gone (or ``KILL_WAIT`` after the last KILL)."""
    targets: list[_Target] = []
    for group in groups:
        for pid in group.pids:
            fd = _pidfd(pid)
            # Checked after the pidfd is open: from here on the fd names this process.
            if procs.alive_as(pid, table[pid].start):
                targets.append(_Target(pid, table[pid].start, group, fd))
            elif fd is not None:
                os.close(fd)
    outcome = Outcome()
    now = clock()
    deadlines: dict[int, float] = {}
    for target in targets:
        signum = m.signal_number(target.group.entry.stop_signal)
        _send(target, signum)
        if signum not in (signal.SIGKILL, signal.SIGCONT):
            _send(target, signal.SIGCONT)  # a stopped process must see the signal
        deadlines[id(target.group)] = now + target.group.entry.stop_timeout
    killed: set[int] = set()
    give_up = None
    while True:
        targets = [t for t in targets if _still(t, outcome, killed)]
        now = clock()
        if not targets:
            return outcome
        if hurry():
            deadlines = dict.fromkeys(deadlines, now)
        for target in targets:
            if target.pid not in killed and now >= deadlines[id(target.group)]:
                _send(target, signal.SIGKILL)
                killed.add(target.pid)
        if all(t.pid in killed for t in targets):
            give_up = give_up or now + KILL_WAIT
            if now >= give_up:
                outcome.left = [t.pid for t in targets]
                for target in targets:
                    if target.fd is not None:
                        os.close(target.fd)
                return outcome
        wait = min([deadlines[id(t.group)] - now for t in targets if t.pid not in killed]
                   + [0.05])
        _wait_exits([t.fd for t in targets if t.fd is not None], max(wait, 0.001))


def _still(target: _Target, outcome: Outcome, killed: set[int]) -> bool:
    if procs.alive_as(target.pid, target.start):
        return True
    if target.pid in killed:
        outcome.killed += 1
    else:
        outcome.graceful += 1
    if target.fd is not None:
        os.close(target.fd)
    return False


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (OSError, AttributeError):  # gone, or a kernel before 5.3
        return None


def _send(target: _Target, signum: int) -> None:
    with contextlib.suppress(OSError):
        if target.fd is not None:
            signal.pidfd_send_signal(target.fd, signum)
        elif procs.alive_as(target.pid, target.start):
            os.kill(target.pid, signum)


def _wait_exits(fds: list[int], timeout: float) -> None:
    """Sleep until one of the pidfds says its process exited, or ``timeout`` passed."""
    if not fds:
        time.sleep(min(timeout, 0.01))
        return
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    poller.poll(timeout * 1000)


def cgroup_procs(path: str) -> list[int]:
    """The pids in a cgroup directory (none when it is gone)."""
    try:
        with open(os.path.join(path, "cgroup.procs")) as f:
            return [int(line) for line in f if line.strip()]
    except (OSError, ValueError):
        return []
