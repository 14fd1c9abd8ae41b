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
from dataclasses import dataclass

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Usage:
    """Cumulative CPU seconds and current resident memory of a tree."""

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
