"""What the launcher reads in ``/proc``: start times, parents, children and instance marks.
STDLIB ONLY.

A pid alone names nothing for long: it is reused once its process is reaped.  A pid
together with its start time (``/proc/<pid>/stat`` field 22, clock ticks since boot) names
one process for the whole life of the host's current boot, which is why the launcher's
children record (:mod:`.record`) keeps both, and the boot id with them.

Every spawn's environment carries an **instance mark**, ``CORRAL_INSTANCE_ID=<name>@<launcher
pid>.<launcher start>.<n>`` (``n`` counts the launcher's spawns), and every descendant that
does not clear its environment inherits it.  Without a cgroup, that is what ties a daemon
that called ``setsid()`` (it left the process group and the session) to the instance that
started it: the launcher is the subreaper it is re-parented to, and reads the mark from
``/proc/<pid>/environ`` (readable for the launcher's own user, and for root).

Every reader here returns None or an empty result for a process that is gone or cannot be
read; none raises ``OSError``.  :func:`kill` and :func:`killpg` signal a process or group
that may be gone already.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

ENV_INSTANCE_ID = "CORRAL_INSTANCE_ID"
_MARK_KEY = ENV_INSTANCE_ID.encode() + b"="


@dataclass(frozen=True)
class Stat:
    """The fields of ``/proc/<pid>/stat`` the launcher uses."""

    pid: int
    state: str  # R, S, D, Z (zombie), X (dead), ...
    ppid: int
    pgrp: int
    session: int
    start: int  # field 22: clock ticks after boot

    @property
    def alive(self) -> bool:
        """Running, not a zombie waiting for its parent."""
        return self.state not in ("Z", "X", "x")


def parse_stat(text: str) -> Stat:
    """Parse a ``/proc/<pid>/stat`` line.

    The command name (field 2) is in parentheses and may hold spaces and parentheses
    itself, so the fields are counted from the *last* ``)``.

    Raises:
        ValueError: not a stat line.
    """
    head, sep, tail = text.rpartition(")")
    fields = tail.split()
    if not sep or len(fields) < 20:
        raise ValueError(f"not a /proc stat line: {text[:80]!r}")
    return Stat(pid=int(head.split("(", 1)[0]), state=fields[0], ppid=int(fields[1]),
                pgrp=int(fields[2]), session=int(fields[3]), start=int(fields[19]))


def read_stat(pid: int) -> Stat | None:
    """The process's stat, or None when it is gone (or unreadable)."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return parse_stat(os.read(fd, 4096).decode(errors="replace"))
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)


def start_time(pid: int) -> int | None:
    """Field 22 of the process's stat: when it started, in clock ticks after boot."""
    stat = read_stat(pid)
    return stat.start if stat is not None else None


def alive_as(pid: int, start: int) -> bool:
    """True if ``pid`` is alive (not a zombie) and is the process that started at
    ``start``: a reused pid is another process and never matches."""
    stat = read_stat(pid)
    return stat is not None and stat.alive and stat.start == start


def children(pid: int) -> list[int]:
    """The process's direct children (``/proc/<pid>/task/<tid>/children`` of every thread;
    a process re-parented to a subreaper is listed under one of its threads)."""
    try:
        return [int(x) for x in children_text(pid).split()]
    except ValueError:
        return []


def children_text(pid: int) -> bytes:
    """The raw ``children`` lists of the process's threads: pids, each followed by a
    space (so ``count(b" ")`` is the number of children, without parsing them)."""
    found = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return b""
    for tid in tids:
        try:
            fd = os.open(f"/proc/{pid}/task/{tid}/children", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            found.append(_read_all(fd))
        except OSError:
            pass
        finally:
            os.close(fd)
    return b"".join(found)


class OwnChildren:
    """:func:`children_text` of the calling process, cheaply: every exit of a service asks
    whether orphans came to the launcher, and a listing of ``/proc/<pid>/task`` then
    opening and closing a ``children`` file costs ~50 µs after idle, against ~5 for two
    calls on descriptors kept open (the ``task`` directory's link count is 2 + its
    threads; with one thread, its one ``children`` file is read from offset 0 again)."""

    _SIZE = 256 * 1024  # 30,000 children and more; a fuller listing is read the long way

    def __init__(self) -> None:
        self._pid = 0
        self._task = self._children = -1

    def read(self) -> bytes:
        pid = os.getpid()
        if pid != self._pid:  # first use, or a forked copy of the caller
            self._pid = pid
            try:
                self._task = os.open(f"/proc/{pid}/task", os.O_RDONLY | os.O_DIRECTORY
                                     | os.O_CLOEXEC)
                self._children = os.open(f"/proc/{pid}/task/{pid}/children",
                                         os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                self._task = self._children = -1
        try:
            if self._children >= 0 and os.fstat(self._task).st_nlink == 3:
                listed = os.pread(self._children, self._SIZE, 0)
                if len(listed) < self._SIZE:
                    return listed
        except OSError:
            pass
        return children_text(pid)


def subtree(roots: list[int]) -> list[int]:
    """``roots`` and all their descendants, each once (parents before children)."""
    seen: set[int] = set()
    order: list[int] = []
    todo = list(roots)
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        order.append(pid)
        todo.extend(children(pid))
    return order


def make_mark(name: str, launcher: str, n: int) -> str:
    """The instance mark of a launcher's ``n``-th spawn (``launcher`` is ``<pid>.<start>``)."""
    return f"{name}@{launcher}.{n}"


def parse_mark(mark: str) -> tuple[str, str, int] | None:
    """``"web/0@3@120.998.7"`` -> ``("web/0@3", "120.998", 7)``; None if it is not a mark."""
    name, sep, rest = mark.rpartition("@")
    pid, dot, tail = rest.partition(".")
    start, dot2, n = tail.partition(".")
    if not (sep and name and dot and dot2 and pid.isdigit() and start.isdigit()
            and n.isdigit()):
        return None
    return name, f"{pid}.{start}", int(n)


def mark_in(environ: bytes) -> str | None:
    """The instance mark in an ``environ`` block (NUL-separated ``KEY=value``), or None."""
    if environ.startswith(_MARK_KEY):
        start = len(_MARK_KEY)
    else:
        at = environ.find(b"\0" + _MARK_KEY)
        if at < 0:
            return None
        start = at + 1 + len(_MARK_KEY)
    end = environ.find(b"\0", start)
    return environ[start:end if end >= 0 else len(environ)].decode(errors="replace")


def mark_of(pid: int) -> str | None:
    """The process's instance mark (from the environment it was exec'ed with), or None:
    no mark, a process that is gone, or one whose environment we may not read."""
    try:
        fd = os.open(f"/proc/{pid}/environ", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return mark_in(_read_all(fd))
    except OSError:
        return None
    finally:
        os.close(fd)


def command(pid: int) -> str:
    """The process's name (``comm``), for messages; ``?`` if it is gone."""
    try:
        with open(f"/proc/{pid}/comm", "rb") as f:
            return f.read().decode(errors="replace").strip() or "?"
    except OSError:
        return "?"


def all_stats() -> dict[int, Stat]:
    """Every process on the host (that we can see), by pid."""
    table: dict[int, Stat] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return table
    for name in names:
        if name.isdigit():
            stat = read_stat(int(name))
            if stat is not None:
                table[stat.pid] = stat
    return table


def kill(pid: int, signum: int) -> None:
    """Send ``signum`` to ``pid``; nothing if it is gone."""
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def killpg(pgid: int, signum: int) -> None:
    """Send ``signum`` to the process group ``pgid``; nothing if it is gone (or no longer
    ours to signal)."""
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def boot_id() -> str:
    """This boot's id (start times count from boot: a record from another boot is void)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)
