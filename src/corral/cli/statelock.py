"""Whether a launcher holds a state directory, seen from the outside.

A launcher holds ``<state>/LOCK`` with ``flock`` for its whole life (an upgrade in place
keeps it).  The kernel lists every held lock in ``/proc/locks``; reading it says whether
the lock is held without taking it (taking it, even for a moment, could make a launcher
that starts in that moment refuse to run).
"""

from __future__ import annotations

import os
from pathlib import Path

from corral.protocol import paths

_LOCKS = "/proc/locks"


def held(state_dir: Path) -> bool | None:
    """Whether a launcher holds ``state_dir`` (None: cannot tell, e.g. no ``/proc``)."""
    try:
        st = os.stat(paths.lock_file(state_dir))
    except FileNotFoundError:
        return False
    except OSError:
        return None
    wanted = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open(_LOCKS, encoding="ascii", errors="replace") as f:
            for line in f:
                fields = line.split()
                # "1: FLOCK  ADVISORY  WRITE <pid> <maj>:<min>:<inode> 0 EOF"; a waiter's
                # line has "->" after the number.
                if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == wanted:
                    return True
    except OSError:
        return None
    return False
