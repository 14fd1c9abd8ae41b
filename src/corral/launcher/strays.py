"""Strays: the processes of an instance that a signal to its process group misses.
STDLIB ONLY.

Without a cgroup (every non-root corral, hybrid hosts), a daemon that double-forks or calls
``setsid()`` leaves its service's process group, and a stop that signals the group misses
it.  The launcher is the subreaper of such processes (they are re-parented to it when their
parent dies), and each carries the mark of the instance it came from
(``CORRAL_INSTANCE_ID``, inherited through the environment).  :class:`Strays` finds them
(descendants that left the group while the main process runs, orphans by their mark), says
once per process that an instance left them behind, sweeps orphans whose instance has
already ended, and at the launcher's exit kills whatever is left in its tree.
"""

from __future__ import annotations

import signal
import sys
import time
from typing import TYPE_CHECKING

from . import procs
from .children import Child
from .keeper import SUPERVISOR_NAME

if TYPE_CHECKING:
    from .pid1 import Launcher

# Orphans re-parented a moment after their instance's exit was handled are looked for
# this long after an orphan is reaped (its children come to the launcher then).
SWEEP_DELAY = 0.05
# At exit, how long the launcher waits for the strays it killed to be reaped.
FINAL_WAIT = 2.0


class Strays:
    """The stray processes of ``launcher``'s instances."""

    def __init__(self, launcher: Launcher) -> None:
        self._launcher = launcher
        self._marks: dict[int, str | None] = {}  # re-parented pid -> its mark
        self._own_children = procs.OwnChildren()
        self._sweep_pending = False

    def of(self, child: Child, exiting: bool = False) -> list[int]:
        """Processes of ``child``'s instance that a signal to its process group misses:
        descendants of its main process that left the group (while it runs), and
        processes re-parented to the launcher that carry its mark, with their
        descendants.  None with a cgroup: the cgroup holds them all.  ``exiting``: its
        main process has exited and is not reaped yet (a child of the launcher, not an
        orphan)."""
        if child.cgroup:
            return []
        roots = [pid for pid in self._orphans(child.pid if exiting else None)
                 if self._mark(pid) == child.mark]
        if self._launcher.children.get(child.pid) is child:  # not reaped: its pid is still its own
            roots.extend(procs.children(child.pid))
        else:
            # It exited: what it forked in its group came to us and dies with the group;
            # a daemon one of those forked comes to us when it dies, and the sweep its
            # reaping starts kills it (a service with many workers pays no walk per exit).
            roots = [pid for pid in roots if _group(pid) != child.pid]
        if not roots:
            return []
        return [pid for pid in procs.subtree(roots) if _group(pid) not in (child.pid, None)]

    def _orphans(self, unreaped: int | None = None) -> list[int]:
        """The launcher's children that it did not start: processes re-parented to it.
        ``unreaped``: a child that has exited and is not in the child table any more."""
        launcher = self._launcher
        listed = self._own_children.read()
        known = len(launcher.children) + (launcher.keeper.sup is not None) + \
            (unreaped is not None)
        if listed.count(b" ") <= known:
            return []  # the common case, with no pid parsed (1,000 services: ~100 us less)
        sup = launcher.keeper.sup.proc.pid if launcher.keeper.sup is not None else None
        return [pid for pid in map(int, listed.split())
                if pid not in launcher.children and pid != sup and pid != unreaped]

    def _mark(self, orphan: int) -> str | None:
        """An orphan's instance mark (cached: the pid stays the orphan's until we reap it)."""
        if orphan not in self._marks:
            self._marks[orphan] = procs.mark_of(orphan)
        return self._marks[orphan]

    def note(self, child: Child, strays: list[int]) -> None:
        """Say (once per process) that ``child`` left processes behind; they are reported
        with its exit."""
        new = [pid for pid in strays if pid not in child.strays]
        if new:
            child.strays.update(new)
            print(f"corral-launcher: {_left_behind(child.name, new)}; stopping "
                  f"{_them(new)} with the instance", file=sys.stderr)

    def reaped(self, orphan: int) -> None:
        """An orphan that was re-parented to the launcher was reaped: nothing to tell, but
        its own children are the launcher's now, and may belong to an instance that has
        ended."""
        self._marks.pop(orphan, None)
        if not self._launcher.stopping:
            self.sweep_soon()

    def sweep_soon(self) -> None:
        """Look for orphans of ended instances a moment from now (once)."""
        if not self._sweep_pending:
            self._sweep_pending = True
            self._launcher.reactor.call_later(SWEEP_DELAY, self._sweep)

    def _sweep(self) -> None:
        """Kill orphans whose instance has already ended (re-parented after its exit was
        handled).  The supervisor's own (a hook, a check) are left to finish."""
        self._sweep_pending = False
        launcher = self._launcher
        live = {child.mark for child in launcher.children.values()}
        ended: dict[str, list[int]] = {}
        for pid in self._orphans():
            mark = self._mark(pid)
            parsed = procs.parse_mark(mark) if mark else None
            if (mark and parsed and parsed[1] == launcher.ident and mark not in live
                    and parsed[0] != SUPERVISOR_NAME):
                ended.setdefault(mark, []).append(pid)
        for mark, roots in ended.items():
            pids = procs.subtree(roots)
            line = _left_behind(mark.rpartition("@")[0], pids)
            for pid in pids:
                procs.kill(pid, signal.SIGKILL)
            print(f"corral-launcher: {line} after it ended; killed {_them(pids)}",
                  file=sys.stderr)

    def final_sweep(self) -> None:
        """At exit: kill whatever is still in the launcher's process tree (every service
        has stopped: what is left was left behind), say whose it was, and reap it."""
        launcher = self._launcher
        pids = procs.subtree(procs.children(launcher.pid))
        if not pids:
            return
        owners: dict[str, list[int]] = {}
        for pid in pids:
            mark = procs.mark_of(pid)
            owners.setdefault(mark.rpartition("@")[0] if mark else "", []).append(pid)
        lines = [f"{_left_behind(name or 'a process without an instance mark', left)}; "
                 f"killed {_them(left)}" for name, left in owners.items()]
        for pid in pids:
            procs.kill(pid, signal.SIGKILL)
        for line in lines:
            print(f"corral-launcher: at exit, {line}", file=sys.stderr)
        deadline = time.monotonic() + FINAL_WAIT
        while procs.children(launcher.pid) and time.monotonic() < deadline:
            launcher.reap()
            time.sleep(0.005)  # exiting: nothing else to wait on


def _left_behind(name: str, pids: list[int]) -> str:
    """``web/0 left 2 processes behind (pid 7 sleep, pid 9 sh)``."""
    listed = ", ".join(f"pid {pid} {procs.command(pid)}" for pid in pids)
    return f"{name} left {len(pids)} process{'es' if len(pids) != 1 else ''} behind ({listed})"


def _them(pids: list[int]) -> str:
    return "it" if len(pids) == 1 else "them"


def _group(pid: int) -> int | None:
    """The process group of a live process; None when it is gone or a zombie."""
    stat = procs.read_stat(pid)
    return stat.pgrp if stat is not None and stat.alive else None
