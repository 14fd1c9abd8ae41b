"""The launcher's CPU scheduling policy: ``SCHED_BATCH``, so that it never preempts a
dying service.  STDLIB ONLY.

A service process that exits closes its pipes and signals its parent on its way out, and
each of those wakes the launcher, on the dying process's own CPU (the kernel puts a task
woken by one about to sleep next to it).  Under the default policy the woken launcher
preempts the dying process there and then, and runs its Python while the exit waits: the
exit, and so the restart, comes ~0.1-0.2 ms later.  A ``SCHED_BATCH`` task is never
preempted *for* on wake-up: the launcher runs once the exit is complete (or at once on an
idle CPU).  Its weight (nice value) is unchanged, so it gets the same share of the CPU;
on a CPU that a busy service holds, it runs at the end of that service's time slice
(a few ms at most) rather than at once.

Nothing the launcher starts inherits it: services and the supervisor start with the
default policy.  A launcher started under any other policy (``chrt``, a unit's
``CPUSchedulingPolicy=``) keeps it, and its children inherit it as usual.

Example::

    lower_wakeups()                       # at start
    os.posix_spawn(..., scheduler=for_children())
    reset(pid)                            # a child started another way
"""

from __future__ import annotations

import contextlib
import os

_DEFAULT = (os.SCHED_OTHER, os.sched_param(0))
# What a child must be set to (the default policy) while the launcher runs SCHED_BATCH;
# None while it runs what it was started with.
_children: tuple[int, os.sched_param] | None = None


def lower_wakeups() -> bool:
    """Run the launcher under ``SCHED_BATCH`` if it runs under the default policy; True
    if it now does.  Nothing changes where the policy cannot be set (a seccomp filter)."""
    global _children
    if _children is not None:
        return True
    try:
        if os.sched_getscheduler(0) != os.SCHED_OTHER:
            return False
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except OSError:
        return False
    _children = _DEFAULT
    return True


def restore() -> None:
    """Back to the default policy (before the launcher executes its next build, which
    decides for itself)."""
    global _children
    if _children is not None:
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, *_children)
        _children = None


def for_children() -> tuple[int, os.sched_param] | None:
    """``os.posix_spawn``'s ``scheduler`` for a child: the default policy while the
    launcher runs ``SCHED_BATCH``, else None (the child inherits the launcher's)."""
    return _children


def reset(pid: int) -> None:
    """Give ``pid``, a child just started without :func:`for_children` (``subprocess``
    cannot set a policy), the default policy; best effort, and only if it still runs
    the launcher's own."""
    if _children is None:
        return
    with contextlib.suppress(OSError):
        if os.sched_getscheduler(pid) == os.SCHED_BATCH:
            os.sched_setscheduler(pid, *_children)
