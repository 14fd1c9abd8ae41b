"""The supervisor's state files: a kill at any instant leaves the previous or the next
version (:mod:`corral.atomic`: temp file, fsync, rename, fsync of the directory; the
directory made if missing).  A write that fails (a full disk, an I/O error) removes its temp
file and raises :class:`~corral.errors.StateWriteFailed`: the old file is intact, and the
caller refuses the change.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from corral import atomic
from corral.errors import StateWriteFailed


def atomic_write(path: Path, data: bytes, mode: int = 0o600, *, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically (file mode ``mode``); its directory is
    created if it does not exist.  ``durable=False``: no fsync, for a file that matters
    only while processes it describes run (a power loss ends them, and it is made again).

    Raises:
        StateWriteFailed: nothing was replaced; the temp file is gone.
    """
    try:
        atomic.write(path, data, mode, durable=durable)
    except OSError as exc:
        raise StateWriteFailed(path, exc) from None


# ``.<name>.tmp<pid>``: what atomic_write here, the stores' and the event log's write.
_TEMPORARY = re.compile(r"^\..+\.tmp(\d+)$")
# Where the supervisor and its stores keep files (never a service's working directory).
_STATE_DIRS = (".", "run", "resources", "cluster", "tls")


def remove_leftovers(state_dir: Path) -> list[Path]:
    """Remove the temporary files of state writes that a kill cut short (a supervisor killed
    between creating one and renaming it); returns what was removed.

    Call it at start, before anything is written: a supervisor is the only writer of these
    files and its predecessor is gone by then, so a temporary file of another pid is one
    that nothing will ever finish or write again.
    """
    removed = []
    for sub in _STATE_DIRS:
        try:
            names = os.listdir(state_dir / sub)
        except OSError:
            continue
        for name in names:
            match = _TEMPORARY.match(name)
            if match is None or int(match.group(1)) == os.getpid():
                continue
            path = state_dir / sub / name
            try:
                path.unlink()
            except OSError:
                continue  # a directory, or already gone: nothing of ours to clean
            removed.append(path)
    return removed


def read_json(path: Path, default: Any) -> Any:
    """Load ``path`` as JSON, or return ``default`` if it does not exist."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return default


def write_json(path: Path, value: Any) -> None:
    atomic_write(path, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode())
