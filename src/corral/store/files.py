"""Atomic file writes for the stores: a kill at any instant leaves the old or the new file.

The same recipe as :mod:`corral.supervisor.statefile` (temp file in the same directory,
fsync, rename, fsync of the directory), kept here because the stores are a leaf and must
not import the supervisor; and stricter: the temp file is created with ``O_EXCL`` and its
final mode, so a secret is never readable by anyone else, not even for an instant.
"""

from __future__ import annotations

import os
from pathlib import Path

from corral.errors import StateWriteFailed


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` atomically; the file has ``mode`` from its creation.

    Raises:
        StateWriteFailed: it could not be written (a full disk, an I/O error); ``path`` is
            as it was and the temp file is removed.
    """
    try:
        _replace(path, data, mode)
    except OSError as exc:
        raise StateWriteFailed(path, exc) from None


def _replace(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.unlink()  # left by a crash of this pid's predecessor: O_EXCL below needs it gone
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        # The umask may take bits away (a 0444 blob would come out 0400 under 0077);
        # fchmod gives exactly ``mode``, and O_CREAT never gave more than it.
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.rename(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        raise
    try:
        fsync_dir(path.parent)
    except OSError:
        pass  # the new file is in place; only its durability across a power loss is unsure


def fsync_dir(path: Path) -> None:
    """fsync a directory, so that a rename into it survives a power loss."""
    dir_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
