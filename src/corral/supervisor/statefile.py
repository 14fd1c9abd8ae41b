"""The supervisor's state files: a kill at any instant leaves the previous or the next
version (:mod:`corral.atomic`: temp file, fsync, rename, fsync of the directory; the
directory made if missing).  A write that fails (a full disk, an I/O error) removes its temp
file and raises :class:`~corral.errors.StateWriteFailed`: the old file is intact, and the
caller refuses the change.
"""

from __future__ import annotations

import json
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


def read_json(path: Path, default: Any) -> Any:
    """Load ``path`` as JSON, or return ``default`` if it does not exist."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return default


def write_json(path: Path, value: Any) -> None:
    atomic_write(path, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode())
