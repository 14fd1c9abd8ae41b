"""Reading the launcher's log files: the last lines, and following across rotation.

The launcher appends to ``<service>.log`` and rotates it to ``.1`` ... ``.keep``.  A
tail reads backwards from the current file into older ones until it has ``n`` lines.
A follower polls the file's size (the launcher is another process, so there is no event
to wait on without inotify; 0.1 s is well under a person's notice) and notices rotation
by the inode changing: it then finishes the renamed file before switching.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

FOLLOW_INTERVAL = 0.1
_BLOCK = 64 * 1024


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


def _newer_rotations(path: Path, inode: int, limit: int = 1000) -> list[bytes]:
    """Contents of the rotated files newer than the one with ``inode``, oldest first."""
    newer: list[Path] = []
    for index in range(1, limit):
        rotated = path.with_name(f"{path.name}.{index}")
        try:
            if os.stat(rotated).st_ino == inode:
                break
        except FileNotFoundError:
            return []  # ours is gone already: nothing reliable to add
        newer.append(rotated)
    contents = []
    for rotated in reversed(newer):
        try:
            contents.append(rotated.read_bytes())
        except FileNotFoundError:
            pass
    return contents


async def follow(path: Path, n: int) -> AsyncIterator[str]:
    """Yield the last ``n`` lines, then every new line as it is written, forever."""
    for line in tail(path, n):
        yield line
    handle = None
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
                data = handle.read(1024 * 1024)
                if data:
                    *complete, carry = (carry + data).split(b"\n")
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
                    # in the renamed file: finish it before switching.
                    rest = handle.read()
                    handle.close()
                    # Several rotations may have happened since the last look: the
                    # files between ours and the new one hold lines too.
                    for between in _newer_rotations(path, inode):
                        rest += between
                    if rest:
                        *complete, carry = (carry + rest).split(b"\n")
                        for raw in complete:
                            yield raw.decode(errors="replace")
                handle = path.open("rb")
                inode = current
                continue
            await asyncio.sleep(FOLLOW_INTERVAL)
    finally:
        if handle is not None:
            handle.close()
