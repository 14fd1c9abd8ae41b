"""Who answers a health check on a fixed port: the instance it judges, or another process.

A tcp or http check on a fixed port connects to whoever listens there.  While an old
instance still holds the port, a check of the new one started beside it reaches the old one
and passes; so a rollout asks, before it trusts a passing check, whether the old instance's
process tree holds that port and the new one's does not.  (A check of a port no instance
holds, such as a database the process needs, is trusted as it is.)  Linux ``/proc`` only:
where it cannot be read, the answer is "cannot tell", and the check is trusted.
"""

from __future__ import annotations

import os

_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's "st" column


def listening_inodes(port: int) -> set[int]:
    """Inodes of the TCP sockets listening on ``port`` (IPv4 and IPv6, any address)."""
    inodes: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) < 10 or fields[3] != _LISTEN:
                continue
            if int(fields[1].rpartition(":")[2], 16) == port:
                inodes.add(int(fields[9]))
    return inodes


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (those that can be seen), parents first."""
    tree, queue = [], [pid]
    while queue:
        current = queue.pop(0)
        tree.append(current)
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{current}/task/{task}/children") as f:
                    queue += [int(child) for child in f.read().split()]
            except OSError:
                continue
    return tree


def holds(port: int, pid: int) -> bool | None:
    """Whether process ``pid`` or one of its descendants has a socket listening on
    ``port``; None when that cannot be told (``/proc`` unreadable)."""
    inodes = listening_inodes(port)
    if not inodes:
        return False
    readable = False
    for member in process_tree(pid):
        try:
            fds = os.listdir(f"/proc/{member}/fd")
        except OSError:
            continue
        readable = True
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{member}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:[") and int(link[8:-1]) in inodes:
                return True
    return False if readable else None


def reaches_other(port: int, judged: int, other: int) -> bool:
    """Whether a check on ``port`` meant for process ``judged`` can only be reaching
    process ``other``: ``other`` holds the port and ``judged`` does not (when either cannot
    be told, the check is given the benefit of the doubt)."""
    return holds(port, other) is True and holds(port, judged) is False
