"""Reading the launcher's log files: the last lines, and following across rotation.

The launcher appends to ``<service>.log`` and rotates it to ``.1`` ... ``.keep`` (see
:mod:`corral.launcher.logfile`).  A tail reads backwards from the current file into older
ones until it has ``n`` lines.

A follower knows a file by its identity, not its name: it holds the file open and reads
it to the end whatever it has been renamed to (even once rotated past ``keep`` and
deleted), then goes on with the file that came after it.  Where it is is a
:class:`Cursor` (inode, offset of the next record, and the file's start in the whole
log), handed out with every batch of records so that a client that lost its connection,
or a follower started by a new supervisor, resumes exactly there: nothing twice, nothing
missed.  When the files between the one it read and the next it can open were rotated
away unread, it says how many bytes it skipped (from each file's ``START_XATTR``); without
that attribute it can only say that some may have been.

Reading keeps up with a fast writer: 1 MiB a read and one decode per read, never a pause
while there is data; at the end of the live file it polls (the launcher is another
process, and there is no event to wait on without inotify), from 5 ms after data up to
0.1 s when idle.  Memory stays bounded whatever the file holds: rotated files are read in
the same chunks (never whole), and a run of bytes with no newline (``raw`` format) is cut
into 64 KiB records, as the launcher does for stamped lines.  It reads only as fast as its
consumer takes batches, so a client that stops reading stops it.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from io import FileIO
from pathlib import Path

from corral.launcher.logfile import START_XATTR

FOLLOW_INTERVAL = 0.1  # the longest pause at the end of the live file
FIRST_INTERVAL = 0.005  # the first pause after data: a busy writer is looked at often
#: How long a follower stays silent before yielding an empty batch (a keepalive).
IDLE_BATCH = 15.0
MAX_RECORD = 64 * 1024  # the launcher's split size for long stamped lines
_BLOCK = 64 * 1024
_READ = 1024 * 1024


@dataclass(frozen=True)
class Cursor:
    """A position in a service's log: the file (inode) and the offset of the next record
    in it, with the file's offset in the whole log (``start``) when the file records one.

    Its text form, ``INODE:OFFSET[:START]``, is what the API hands out as the event id of
    each batch; inode 0 means "before the first file" (nothing was written yet).
    """

    ino: int
    offset: int
    start: int | None = None

    def token(self) -> str:
        tail = "" if self.start is None else f":{self.start}"
        return f"{self.ino}:{self.offset}{tail}"

    @classmethod
    def parse(cls, text: str) -> Cursor:
        """The cursor of ``token()``'s text; ValueError when it is not one."""
        parts = text.strip().split(":")
        if not 2 <= len(parts) <= 3 or not all(p.isdigit() for p in parts):
            raise ValueError(f"{text[:40]!r} is not INODE:OFFSET[:START]")
        return cls(int(parts[0]), int(parts[1]), int(parts[2]) if len(parts) == 3 else None)

    @property
    def position(self) -> int | None:
        """The offset in the whole log, when the file's start is known."""
        return None if self.start is None else self.start + self.offset


#: Where a follower of a log that has no file yet stands: at the log's first byte.
BEFORE_FIRST = Cursor(0, 0, 0)


@dataclass
class Batch:
    """What a follower yields: records (decoded, without newlines) and the cursor just
    after them.  ``skipped`` says that bytes were lost just before these records: how many,
    or ``None`` when the files do not tell; 0 when nothing was."""

    lines: list[str]
    cursor: Cursor
    skipped: int | None = 0


class _Log:
    """One log file held open: whatever it is renamed to, this reads the same file."""

    def __init__(self, handle: FileIO) -> None:
        self.handle = handle
        self.ino = os.fstat(handle.fileno()).st_ino
        self._start: int | None = None

    def start(self) -> int | None:
        """The file's offset in the whole log (read when first needed: a file is given
        its attribute just after it is created, and may be opened in between)."""
        if self._start is None:
            try:
                self._start = int(os.getxattr(self.handle.fileno(), START_XATTR))
            except (OSError, ValueError):
                return None
        return self._start

    def size(self) -> int:
        return os.fstat(self.handle.fileno()).st_size

    def cursor(self, offset: int) -> Cursor:
        return Cursor(self.ino, offset, self.start())

    def close(self) -> None:
        self.handle.close()


def _ino(path: Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return None


def _snapshot(path: Path, keep: int) -> list[_Log]:
    """The log's files, opened, oldest first: a run with no file missing in between.

    Opened newest first: a rotation in the middle of the scan then only makes a file
    show up twice (dropped by inode), never leaves a gap.  Two rotations in the middle
    could also put a newer file after an older one, so a scan during which the current
    file changed is done again.
    """
    names = [path, *(path.with_name(f"{path.name}.{i}") for i in range(1, keep + 1))]
    logs: list[_Log] = []
    for _ in range(100):
        for log in logs:
            log.close()
        before = _ino(path)
        logs, seen = [], set()
        for name in names:
            try:
                log = _Log(FileIO(name, "rb"))
            except FileNotFoundError:
                continue
            if log.ino in seen:
                log.close()
                continue
            seen.add(log.ino)
            logs.append(log)
        if _ino(path) == before and (before is None or (logs and logs[0].ino == before)):
            break
    logs.reverse()
    return logs


def _last_lines(fd: int, end: int, n: int) -> list[bytes]:
    """The last ``n`` lines of the file before offset ``end`` (which ends a line)."""
    data = b""
    start = end
    while start > 0 and data.count(b"\n") <= n:
        size = min(_BLOCK, start)
        start -= size
        data = os.pread(fd, size, start) + data
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if start > 0:
        lines = lines[1:]  # the first piece may be a partial line
    return lines[-n:] if n > 0 else []


def _record_end(log: _Log) -> int:
    """Where the last whole record of ``log`` ends: its size, less a partial last line
    (looked for in the last 64 KiB only: a longer one is not replayed)."""
    size = log.size()
    tail = os.pread(log.handle.fileno(), min(size, MAX_RECORD), max(0, size - MAX_RECORD))
    newline = tail.rfind(b"\n")
    return size if newline < 0 else size - (len(tail) - newline - 1)


def tail(path: Path, n: int, keep: int = 20) -> list[str]:
    """The last ``n`` lines of ``path`` and its rotations, oldest first."""
    lines: list[bytes] = []
    for index in range(keep + 1):
        source = path if index == 0 else path.with_name(f"{path.name}.{index}")
        try:
            with FileIO(source, "rb") as f:
                lines = _last_lines(f.fileno(), os.fstat(f.fileno()).st_size,
                                    n - len(lines)) + lines
        except FileNotFoundError:
            if index > 0:
                break
            continue
        if len(lines) >= n:
            break
    return [line.decode(errors="replace") for line in lines[-n:]]


def _records(carry: bytes, data: bytes) -> tuple[list[str], bytes]:
    """The complete records of ``carry + data`` and the partial rest.  One decode for the
    whole read (a newline never falls inside a UTF-8 sequence); a rest longer than
    :data:`MAX_RECORD` (bytes with no newline, ``raw`` format) is cut into records so that
    the follower's memory stays bounded."""
    last = data.rfind(b"\n")
    if last < 0:
        rest = carry + data
        lines = []
    else:
        body = carry + data[:last] if carry else data[:last]
        lines = body.decode(errors="replace").split("\n")
        rest = data[last + 1:]
    while len(rest) > MAX_RECORD:
        lines.append(rest[:MAX_RECORD].decode(errors="replace"))
        rest = rest[MAX_RECORD:]
    return lines, rest


class _Follower:
    """The state of one follow: the file being read, the files known to come after it
    (held open, so that they cannot vanish), and what is known about the gap before the
    next one."""

    def __init__(self, path: Path, keep: int) -> None:
        self.path = path
        self.keep = keep
        self.current: _Log | None = None
        self.next: list[_Log] = []
        self.carry = b""
        self.cursor = BEFORE_FIRST
        # When the next file may not follow the last one read directly: the log offset
        # expected next (None: unknown), and whether an unknown gap is worth saying.
        self.gap_from: int | None = None
        self.gap_possible = False
        self.warn_unknown = False

    def close(self) -> None:
        for log in [self.current, *self.next]:
            if log is not None:
                log.close()
        self.current, self.next = None, []

    def start(self, n: int, cursor: Cursor | None) -> Batch:
        """Open the log where ``cursor`` points (``None``: at its end, after the last
        ``n`` records) and return the first batch: the tail, or what was skipped."""
        logs = _snapshot(self.path, self.keep)
        if cursor is None:
            if not logs:
                return Batch([], BEFORE_FIRST)
            self.current = logs[-1]
            end = _record_end(self.current)
            self.current.handle.seek(end)
            lines = self._tail(logs[:-1], end, n) if n > 0 else []
            for old in logs[:-1]:
                old.close()
            self.cursor = self.current.cursor(end)
            return Batch(lines, self.cursor)
        self.cursor = cursor
        for index, log in enumerate(logs):
            start = log.start()
            if (log.ino == cursor.ino and cursor.offset <= log.size()
                    and (start is None or cursor.start is None or start == cursor.start)):
                for old in logs[:index]:
                    old.close()
                self.current, self.next = log, logs[index + 1:]
                log.handle.seek(cursor.offset)
                return Batch([], cursor)
        # The cursor's file is gone (or has not been written yet): what is left comes after.
        self.next = logs
        self.gap_from = cursor.position
        self.gap_possible = True
        self.warn_unknown = cursor.ino != 0
        return self._advance() or Batch([], self.cursor)

    def _tail(self, older: list[_Log], end: int, n: int) -> list[str]:
        assert self.current is not None
        lines = _last_lines(self.current.handle.fileno(), end, n)
        try:
            for log in reversed(older):
                if len(lines) >= n:
                    break
                lines = _last_lines(log.handle.fileno(), log.size(), n - len(lines)) + lines
        except OSError:
            pass
        return [line.decode(errors="replace") for line in lines[-n:]]

    def read(self) -> Batch | None:
        """One read of the current file: its whole records (maybe none: a partial one);
        None at the end of the file."""
        if self.current is None:
            return None
        data = self.current.handle.read(_READ)
        if not data:
            return None
        lines, self.carry = _records(self.carry, data)
        offset = self.current.handle.tell() - len(self.carry)
        if offset >= 0:  # else the partial record began in an earlier file
            self.cursor = self.current.cursor(offset)
        return Batch(lines, self.cursor)

    def _advance(self) -> Batch | None:
        """Close the finished current file and go on with the next known one; a batch
        when that says something (a gap, or a partial record that will never end)."""
        if not self.next:
            return None
        said: Batch | None = None
        nxt = self.next.pop(0)
        if self.gap_possible:
            start = nxt.start()
            if self.gap_from is not None and start is not None:
                gap: int | None = max(0, start - self.gap_from)
            else:
                gap = None if self.warn_unknown else 0
            if gap != 0:
                lines = [self.carry.decode(errors="replace")] if self.carry else []
                self.carry = b""
                said = Batch(lines, nxt.cursor(0), gap)
        if self.current is not None:
            self.current.close()
        self.current = nxt
        self.cursor = nxt.cursor(0) if not self.carry else self.cursor
        self.gap_possible = self.warn_unknown = False
        return said

    def look(self) -> Batch | bool:
        """At the end of the current file: go on to the next one if the current one was
        rotated (a batch when that says something, else True); False when there is
        nothing newer yet."""
        if self.next:
            return self._advance() or True
        live = _ino(self.path)
        if self.current is not None and live == self.current.ino:
            return False
        if live is None and self.current is None:
            return False
        logs = _snapshot(self.path, self.keep)
        if self.current is None:
            if not logs:
                return False
            self.next = logs
            if not self.gap_possible:  # followed from before the first file
                self.gap_from, self.gap_possible, self.warn_unknown = 0, True, False
            return self._advance() or True
        index = next((i for i, log in enumerate(logs) if log.ino == self.current.ino), None)
        if index is None:
            # Rotated past keep: the files after it may have gone too.
            start = self.current.start()
            self.gap_from = None if start is None else start + self.current.size()
            self.gap_possible = self.warn_unknown = True
            newer = logs
        else:
            logs.pop(index).close()  # the same file as current, opened again
            for old in logs[:index]:
                old.close()
            newer = logs[index:]
        if not newer:
            return False
        self.next = newer
        # Records written between our last read and the rotation are still in the
        # current file: read it to its end before going on.
        return True


async def follow(path: Path, n: int, keep: int = 20,
                 cursor: Cursor | None = None) -> AsyncGenerator[Batch, None]:
    """Yield batches of records: first the last ``n`` (or, from ``cursor``, nothing but
    a note of what was skipped), then every new record as it is written, forever.

    Every batch carries the cursor after its records; a batch with no records is sent
    first (the starting cursor), after a skip, and after :data:`IDLE_BATCH` seconds of
    silence (a keepalive that repeats the cursor).
    """
    follower = _Follower(path, keep)
    try:
        yield follower.start(n, cursor)
        pause = FIRST_INTERVAL
        quiet_since = time.monotonic()
        while True:
            batch = follower.read()
            if batch is not None:
                if batch.lines:
                    yield batch
                    pause, quiet_since = FIRST_INTERVAL, time.monotonic()
                    # A fast client may never make the send wait: let the rest of the
                    # supervisor run between batches all the same.
                    await asyncio.sleep(0)
                continue
            moved = follower.look()
            if isinstance(moved, Batch):
                yield moved
                continue
            if moved:
                continue
            if time.monotonic() - quiet_since >= IDLE_BATCH:
                yield Batch([], follower.cursor)
                quiet_since = time.monotonic()
            await asyncio.sleep(pause)
            pause = min(pause * 2, FOLLOW_INTERVAL)
    finally:
        follower.close()
