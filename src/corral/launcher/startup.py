"""What the launcher process does to itself as it starts.  STDLIB ONLY.

- :func:`take_lock`: hold ``<state>/LOCK`` for life, so that one launcher runs per state
  directory (an upgrade in place keeps the descriptor, and with it the lock);
- :func:`set_child_subreaper`: become the reaper of orphaned descendants, so that a
  daemon a service leaves behind comes to the launcher (see :mod:`.strays`);
- :func:`close_inherited_on_exec`: keep what the launcher inherited away from services.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import sys
from pathlib import Path

from corral.protocol import paths

_PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>


def close_inherited_on_exec() -> None:
    """Mark every fd above stdio close-on-exec.

    Services are started with ``posix_spawn``, which passes on whatever is inheritable;
    an fd the launcher itself inherited (from a shell, an init system, a test harness)
    must not reach them, as ``close_fds`` guaranteed with ``subprocess``.
    """
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2:
            with contextlib.suppress(OSError):  # the listing's own fd, closed by now
                os.set_inheritable(fd, False)


def set_child_subreaper() -> None:
    """Become the reaper of orphaned descendants (what PID 1 does for everyone)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        print("corral-launcher: cannot become a child subreaper; orphaned grandchildren "
              "will be reaped by init", file=sys.stderr)


def take_lock(state_dir: Path) -> int:
    """Hold ``<state>/LOCK`` for the launcher's lifetime; one launcher per directory.

    Error handling: if another launcher holds it, print one line and exit 1.
    """
    fd = os.open(paths.lock_file(state_dir), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise
        other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        print(f"corral: another launcher (pid {other}) is already running on {state_dir}; "
              "stop it first with: corral sup stop --state-dir " + str(state_dir),
              file=sys.stderr)
        raise SystemExit(1) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
