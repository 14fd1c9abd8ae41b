"""CPU time and RSS of a whole process tree, read from ``/proc``.

Why not psutil here: ``psutil.Process.children()`` walks every process on the host to
find one tree, so sampling 1,000 services would cost a million ``/proc`` reads every
round.  The kernel lists a task's children in ``/proc/<pid>/task/<tid>/children``, so a
tree costs one small read per process in it, and a ``sleep`` costs two reads in all.
Children started from threads other than the main one are found through their thread's
own ``children`` file.
"""

from __future__ import annotations

import os
from typing import NamedTuple

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


class Usage(NamedTuple):
    """Cumulative CPU seconds and current resident memory of a tree (a tuple: built
    1,000 times a round, where a frozen dataclass costs twice as much)."""

    cpu_seconds: float
    rss_bytes: int
    processes: int


def _read(path: str) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)


def _children(pid: int, threads: int) -> list[int]:
    """Children of ``pid``; a single-threaded process costs one read, no listdir."""
    if threads > 1:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            return []
    else:
        tids = [str(pid)]
    out: list[int] = []
    for tid in tids:
        data = _read(f"/proc/{pid}/task/{tid}/children")
        if data:
            out += [int(x) for x in data.split()]
    return out


class TreeSampler:
    """:func:`usage` for the same roots round after round, at a fraction of the cost.

    Each root's ``/proc/<pid>/schedstat``, ``stat`` and ``children`` stay open and are
    re-read with ``pread`` at offset 0 (the kernel regenerates them): one syscall a file
    instead of open, read and close.  ``schedstat`` (the task's run time in ns) is read
    first: a single-threaded root that has not run since the last round, and had no
    children, cannot have used CPU, forked or made a thread, and its usage is the last one
    read (``schedstat`` is the main thread's own, so a multi-threaded root is read in
    full).  Generating ``schedstat`` costs the kernel about a quarter of ``stat`` (figures
    in docs/benchmarks.md, "Figures behind the code"), so an idle service costs one cheap
    read a round.  Its memory is
    still read afresh every ``REFRESH_EVERY`` rounds (the kernel may reclaim pages of an
    idle process).  An open ``/proc/<pid>`` file stays bound to that process, so a reused
    pid number can never be read by mistake.  Descendants (rare, and changing) are read
    the plain way.  At most ``max_open`` roots are kept open (three fds each); the others
    are read the plain way too.
    """

    #: A root that had no children is asked for new ones every this many rounds (a
    #: ``sleep`` then costs one read a round, not two); one that has some, every round.
    CHILDREN_EVERY = 5
    #: An idle childless root is read in full at least this often (60 s at 2 s a round).
    REFRESH_EVERY = 30

    def __init__(self, max_open: int = 2000) -> None:
        self.max_open = max_open
        self._open: dict[int, _Root] = {}
        self._seen: set[int] = set()
        self._childless: set[int] = set()
        self._round = 0

    def usage(self, root: int) -> Usage | None:
        """Like :func:`usage`; None once ``root`` is gone.  An idle root's answer is the
        same :class:`Usage` object as last round's."""
        self._seen.add(root)
        entry = self._open.get(root)
        if entry is None:
            if len(self._open) >= self.max_open:
                return usage(root)
            entry = self._open_root(root)
            if entry is None:
                return usage(root)
        try:
            ran = os.pread(entry.schedstat, 256, 0)
            # schedstat is the main thread's alone: only a single-threaded root can be
            # judged idle by it (a thread must be made by running, which moves it).
            if (ran == entry.ran and entry.single and entry.last is not None
                    and root in self._childless
                    and self._round - entry.read_at < self.REFRESH_EVERY):
                return entry.last
            stat = os.pread(entry.stat, 4096, 0)
            fields = stat.rsplit(b")", 1)[-1].split(None, 22)  # up to rss, no further
            threads = int(fields[17])
            if threads == 1 and root in self._childless and self._round % self.CHILDREN_EVERY:
                kids = []
            elif threads == 1:
                kids = os.pread(entry.children, 4096, 0).split()
            else:
                kids = [str(k).encode() for k in _children(root, threads)]
        except (OSError, IndexError, ValueError):
            self.forget(root)
            return None
        if kids:
            self._childless.discard(root)
        else:
            self._childless.add(root)
        ticks = int(fields[11]) + int(fields[12])
        pages = int(fields[21])
        count = 1
        for kid in kids:
            sub = usage(int(kid))
            if sub is not None:
                ticks += round(sub.cpu_seconds * CLOCK_TICKS)
                pages += sub.rss_bytes // PAGE_SIZE
                count += sub.processes
        entry.ran, entry.read_at, entry.single = ran, self._round, threads == 1
        entry.last = Usage(ticks / CLOCK_TICKS, pages * PAGE_SIZE, count)
        return entry.last

    def end_round(self) -> None:
        """Close the files of roots not sampled since the last call (ended instances)."""
        for root in [r for r in self._open if r not in self._seen]:
            self.forget(root)
        self._childless &= self._seen
        self._seen.clear()
        self._round += 1

    def forget(self, root: int) -> None:
        entry = self._open.pop(root, None)
        if entry is not None:
            for fd in (entry.schedstat, entry.stat, entry.children):
                os.close(fd)

    def close(self) -> None:
        for root in list(self._open):
            self.forget(root)

    def _open_root(self, root: int) -> _Root | None:
        fds: list[int] = []
        try:
            for name in ("schedstat", "stat", f"task/{root}/children"):
                fds.append(os.open(f"/proc/{root}/{name}", os.O_RDONLY | os.O_CLOEXEC))
        except OSError:
            for fd in fds:
                os.close(fd)
            return None
        entry = self._open[root] = _Root(*fds)
        return entry


class _Root:
    """A sampled root's open files and its last full reading."""

    __slots__ = ("children", "last", "ran", "read_at", "schedstat", "single", "stat")

    def __init__(self, schedstat: int, stat: int, children: int) -> None:
        self.schedstat, self.stat, self.children = schedstat, stat, children
        self.ran = b""          # schedstat's text at the last full reading
        self.read_at = 0        # round of the last full reading
        self.single = False     # single-threaded at the last full reading
        self.last: Usage | None = None


def usage(root: int) -> Usage | None:
    """The tree under ``root`` (included), or None if ``root`` is gone."""
    ticks = 0
    pages = 0
    count = 0
    stack = [root]
    while stack:
        pid = stack.pop()
        stat = _read(f"/proc/{pid}/stat")
        if stat is None:
            if pid == root:
                return None
            continue
        # Fields after the command name (which may hold spaces and parentheses), counted
        # from 0 = field 3 of proc(5): [11] utime, [12] stime, [17] threads, [21] rss pages.
        fields = stat.rsplit(b")", 1)[-1].split()
        ticks += int(fields[11]) + int(fields[12])
        pages += int(fields[21])
        count += 1
        stack += _children(pid, int(fields[17]))
    return Usage(ticks / CLOCK_TICKS, pages * PAGE_SIZE, count)
