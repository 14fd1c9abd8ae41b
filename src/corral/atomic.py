"""Atomic file writes: a kill at any instant leaves the old file or the new one.  LEAF:
imports the stdlib only, so the stores, the supervisor, the API and the CLI share it.

The one recipe: a temp file beside the target (``.<name>.tmp<pid>``), created with its final
mode (``O_EXCL``: never readable by more than ``mode`` allows, not even for an instant), the
data written and fsynced, the temp renamed over the target, and the directory fsynced, so
the rename itself survives a power loss.  Any failure (a full disk, an I/O error, a check of
the caller's that raises) removes the temp file and leaves the target as it was.

Errors are the ``OSError`` itself: what a failed write means is the caller's to say (a state
change refused with :class:`~corral.errors.StateWriteFailed`, a CLI line, a lost hint).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


def write(path: Path | str, data: bytes, mode: int = 0o600, *, durable: bool = True,
          make_dirs: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically.

    Args:
        mode: the file's mode from its creation (the umask may narrow it, never widen it).
        durable: fsync the file and the directory.  Without it the new content outlives a
            killed process (the page cache has it) but not a power loss.
        make_dirs: create the directory (and its parents) when it is missing.

    Raises:
        OSError: nothing was replaced, and the temp file is gone.
    """
    with replacing(path, mode, durable=durable, make_dirs=make_dirs) as f:
        f.write(data)


@contextlib.contextmanager
def replacing(path: Path | str, mode: int = 0o600, *, durable: bool = True,
              make_dirs: bool = True) -> Iterator[BinaryIO]:
    """A file to write the new content of ``path`` into; it replaces ``path`` when the
    block ends, and is removed instead when the block raises (the exception goes on).

    For content that comes in pieces and is checked before it may replace the old
    (a download and its digest).  Arguments and errors as :func:`write`.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    if make_dirs:
        path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()  # left by a killed process that had this pid: O_EXCL needs it gone
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        with open(fd, "wb", closefd=True) as f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    if durable:
        # The new file is in place either way; a failed directory fsync only leaves its
        # durability across a power loss unsure, which is no reason to report the write failed.
        with contextlib.suppress(OSError):
            fsync_dir(path.parent)


def fsync_dir(path: Path | str) -> None:
    """fsync a directory, so that a rename into it survives a power loss."""
    dir_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
