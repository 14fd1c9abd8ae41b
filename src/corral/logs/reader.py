"""Reading the launcher's log files: the last lines, and following across rotation.

The launcher appends to ``<service>.log`` and rotates it to ``.1`` ... ``.keep``.  A
tail reads backwards from the current file into older ones until it has ``n`` lines.
A follower polls the file's size (the launcher is another process, so there is no event
to wait on without inotify; 0.1 s is well under a person's notice) and notices rotation
by the inode changing: it then finishes the renamed file before switching.

A follower holds a bounded amount of memory whatever the file holds: it reads 1 MiB at a
time, reads rotated files in the same chunks (never whole), and cuts a run of bytes with no
newline (``raw`` format) into 64 KiB records, as the launcher does for stamped lines.  It
reads only as fast as its consumer takes lines, so a client that stops reading stops it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import BinaryIO

FOLLOW_INTERVAL = 0.1
MAX_RECORD = 64 * 1024  # the launcher's split size for long stamped lines
_BLOCK = 64 * 1024
_READ = 1024 * 1024


def _last_lines(path: Path, n: int) -> list[bytes]:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            end = f.tell()
            data = b""
            while end > 0 and data.count(b"\n") <= n:
                start = max(0, end - _BLOCK)
                f.seek(start)
                data = f.read(end - start) + data
                end = start
    except FileNotFoundError:
        return []
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if end > 0:
        lines = lines[1:]  # the first piece may be a partial line
    return lines[-n:] if n > 0 else []


def tail(path: Path, n: int, keep: int = 20) -> list[str]:
    """The last ``n`` lines of ``path`` and its rotations, oldest first."""
    lines: list[bytes] = []
    for index in range(keep + 1):
        source = path if index == 0 else path.with_name(f"{path.name}.{index}")
        if index > 0 and not source.exists():
            break
        lines = _last_lines(source, n - len(lines)) + lines
        if len(lines) >= n:
            break
    return [line.decode(errors="replace") for line in lines[-n:]]


def _newer_rotations(path: Path, inode: int, limit: int = 1000) -> list[BinaryIO]:
    """The rotated files newer than the one with ``inode``, opened, oldest first.

    They are opened at once, so a further rotation (which renames them) cannot make us
    read the wrong file; the caller reads and closes them.
    """
    newer: list[Path] = []
    for index in range(1, limit):
        rotated = path.with_name(f"{path.name}.{index}")
        try:
            if os.stat(rotated).st_ino == inode:
                break
        except FileNotFoundError:
            return []  # ours is gone already: nothing reliable to add
        newer.append(rotated)
    handles: list[BinaryIO] = []
    for rotated in reversed(newer):
        try:
            handles.append(rotated.open("rb"))
        except FileNotFoundError:
            pass
    return handles


def _chunks(handle: BinaryIO) -> Iterator[bytes]:
    while data := handle.read(_READ):
        yield data


def _split(carry: bytes, data: bytes) -> tuple[list[bytes], bytes]:
    """The complete lines of ``carry + data`` and the partial rest; a rest longer than
    :data:`MAX_RECORD` (bytes with no newline, ``raw`` format) is cut into records so the
    follower's memory stays bounded."""
    *complete, rest = (carry + data).split(b"\n")
    while len(rest) > MAX_RECORD:
        complete.append(rest[:MAX_RECORD])
        rest = rest[MAX_RECORD:]
    return complete, rest


async def follow(path: Path, n: int) -> AsyncIterator[str]:
    """Yield the last ``n`` lines, then every new line as it is written, forever."""
    for line in tail(path, n):
        yield line
    handle: BinaryIO | None = None
    inode = -1
    carry = b""
    try:
        try:
            handle = path.open("rb")
            handle.seek(0, os.SEEK_END)
            inode = os.fstat(handle.fileno()).st_ino
        except FileNotFoundError:
            handle = None
        while True:
            if handle is not None:
                data = handle.read(_READ)
                if data:
                    complete, carry = _split(carry, data)
                    for raw in complete:
                        yield raw.decode(errors="replace")
                    continue
            try:
                current = os.stat(path).st_ino
            except FileNotFoundError:
                current = -1
            if current != inode and current != -1:
                if handle is not None:
                    # Lines written between our last read and the rotation are still
                    # in the renamed file: finish it before switching.  Several rotations
                    # may have happened since the last look: the files between ours and
                    # the new one hold lines too.
                    sources = [handle, *_newer_rotations(path, inode)]
                    handle = None
                    try:
                        for source in sources:
                            for data in _chunks(source):
                                complete, carry = _split(carry, data)
                                for raw in complete:
                                    yield raw.decode(errors="replace")
                    finally:
                        for source in sources:
                            source.close()
                try:
                    handle = path.open("rb")
                except FileNotFoundError:  # rotated again, or the service was unloaded
                    handle, current = None, -1
                inode = current
                continue
            await asyncio.sleep(FOLLOW_INTERVAL)
    finally:
        if handle is not None:
            handle.close()
