"""Service log files: size-rotated, shared by a service's instances.  STDLIB ONLY.

:class:`LogFile` appends whole records with one ``writev`` each.  When a write would take
the file past ``max_bytes`` it is renamed ``.1`` (older ones shift up to ``keep``) and a
new file is opened.

A write that fails (a full disk, an I/O error) never blocks a service and never leaves a
torn record: what the file took of a failed write is cut back to the last whole record,
the rest is dropped and counted, and once writing works again one record says how much
was dropped and when.

Each file carries the extended attribute :data:`START_XATTR`: how many bytes of the
service's output went into the files before it.  A follower that finds files rotated
away unread can then say exactly how many bytes it skipped (where the file system keeps
no user attributes, it can only say that some were).
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

#: The log's offset of a file's first byte, in decimal: the sum of the sizes of the files
#: before it (since this log was first written, as far as the launcher knows).
START_XATTR = "user.corral.start"
try:
    IOV_MAX = max(16, os.sysconf("SC_IOV_MAX"))
except (ValueError, OSError):
    IOV_MAX = 1024

#: What one write takes: whole records, in pieces that are written with one ``writev``.
Pieces = Sequence[bytes | memoryview]

_second_cache: tuple[int, bytes] = (-1, b"")


def timestamp() -> bytes:
    """Now as RFC 3339 UTC with microseconds, e.g. ``2026-11-21T23:59:01.123456Z``."""
    global _second_cache
    ns = time.time_ns()
    sec, rem = divmod(ns, 1_000_000_000)
    if _second_cache[0] != sec:
        _second_cache = (sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)).encode())
    return b"%s.%06dZ" % (_second_cache[1], rem // 1000)


class DropReport(NamedTuple):
    """A log file stopped taking output (``dropping``), or takes it again: how much was
    dropped (this time), from when until when, and why."""

    dropping: bool
    bytes: int
    records: int
    since: float
    until: float
    error: str


class LogFile:
    """One size-rotated log file, shared by every instance of a service.

    Error handling: a write that fails (disk full, I/O error, file removed) is cut back to
    the last whole record it wrote, and the rest is dropped and counted, so that the
    service never blocks on a full pipe and the file never holds a torn record.  The next
    write tries again (reopening the file); the first one that works is preceded by one
    record, ``<time> <launcher pid> E [corral] dropped N bytes (M records) of output from
    T1 to T2: <error>`` (the launcher also calls :meth:`retry` now and then, so the record
    comes even when the service has stopped writing).  ``on_drop(log, report)`` is called
    when dropping starts and when it ends (:class:`DropReport`); the totals stay in
    ``dropped_bytes_total`` and ``dropped_records_total``.
    """

    def __init__(self, path: str, max_bytes: int, keep: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        self.users = 0
        self._fd = -1
        self._size = 0
        self._ends_line = True  # raw output may stop mid-line; a note then starts a line
        self.on_drop: Callable[[LogFile, DropReport], None] | None = None
        # The drop in progress (since is None while writing works) and the totals.
        self.drop_since: float | None = None
        self.drop_last = 0.0
        self.drop_error = ""
        self.dropped_bytes = 0
        self.dropped_records = 0
        self.dropped_bytes_total = 0
        self.dropped_records_total = 0
        self._start = 0  # the open file's START_XATTR
        self._next_start = 0  # START_XATTR for a file this LogFile creates

    def _open(self) -> None:
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                           0o640)
        self._size = os.fstat(self._fd).st_size
        try:
            self._start = int(os.getxattr(self._fd, START_XATTR))
        except (OSError, ValueError):  # a new file, or none of this file system's
            self._start = self._next_start
            try:
                os.setxattr(self._fd, START_XATTR, b"%d" % self._start)
            except OSError:
                pass

    def _rotate(self) -> None:
        # From the file itself: hooks append to it too (the supervisor, O_APPEND).
        self._next_start = self._start + os.fstat(self._fd).st_size
        self.close()
        if self.keep <= 0:
            _unlink(self.path)
        else:
            for i in range(self.keep - 1, 0, -1):
                _rename(f"{self.path}.{i}", f"{self.path}.{i + 1}")
            _rename(self.path, f"{self.path}.1")

    def write(self, pieces: Pieces) -> None:
        """Append ``pieces`` (whole records) as one write, rotating first if they would
        overflow the file; on failure, drop and count them (see the class)."""
        total = sum(len(p) for p in pieces)
        if total == 0:
            return
        if len(pieces) > IOV_MAX:  # writev refuses more pieces than that (EINVAL)
            pieces = [b"".join(pieces)]
        try:
            if self._fd < 0:
                self._open()
            if self._size > 0 and self._size + total > self.max_bytes:
                self._rotate()
                self._open()
            if self.drop_since is not None:
                self._write_note()
            written = os.writev(self._fd, pieces)
            if written < total:  # a short write: the disk is full, or about to be
                self._finish(pieces, written, total)
        except OSError as exc:
            self._dropped(pieces, 0, total, exc)
            return
        self._size += total
        self._ends_line = pieces[-1][-1:] == b"\n"

    def _finish(self, pieces: Pieces, written: int, total: int) -> None:
        """Complete a short write; if that fails, cut the file back to the last whole
        record and raise :class:`_Torn` saying how much of ``pieces`` it keeps."""
        data = b"".join(pieces)
        try:
            while written < total:
                written += os.write(self._fd, data[written:])
        except OSError as exc:
            kept = data.rfind(b"\n", 0, written) + 1
            self._cut(written - kept)
            raise _Torn(kept, exc) from None

    def _cut(self, extra: int) -> None:
        """Truncate the last ``extra`` bytes (a torn record) off the end of the file."""
        if extra <= 0:
            return
        try:
            os.ftruncate(self._fd, max(0, os.fstat(self._fd).st_size - extra))
        except OSError:
            pass

    def _write_note(self) -> None:
        """Say in the file how much was dropped, before the first write that works.

        Raises OSError if the note cannot be written whole (nothing of it is left)."""
        note = (b"%s%s %d E [corral] dropped %d bytes (%d records) of output from %s to %s: "
                b"%s\n" % (b"" if self._ends_line else b"\n", timestamp(), os.getpid(),
                            self.dropped_bytes, self.dropped_records,
                            rfc3339(self.drop_since or 0.0), rfc3339(self.drop_last),
                            self.drop_error.encode(errors="replace")))
        written = 0
        try:
            written = os.write(self._fd, note)
            if written < len(note):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError:
            self._cut(written)
            raise
        self._size += len(note)
        self._ends_line = True
        report = self._report(False)
        self.drop_since = None
        self.dropped_bytes = self.dropped_records = 0
        if self.on_drop is not None:
            self.on_drop(self, report)

    def retry(self) -> bool:
        """Try to write the note of a drop in progress, for when no output comes to do it;
        True once it is written (or nothing was dropped)."""
        if self.drop_since is None:
            return True
        try:
            if self._fd < 0:
                self._open()
            self._write_note()
        except OSError:
            self.close()
            return False
        if self.users <= 0:
            self.close()
        return True

    def _report(self, dropping: bool) -> DropReport:
        return DropReport(dropping, self.dropped_bytes, self.dropped_records,
                          self.drop_since or self.drop_last, self.drop_last, self.drop_error)

    def _dropped(self, pieces: Pieces, kept: int, total: int, exc: OSError) -> None:
        if isinstance(exc, _Torn):
            kept, exc = exc.kept, exc.cause
        lost = total - kept
        data = b"".join(pieces)
        records = data.count(b"\n", kept) + (0 if data.endswith(b"\n") else 1)
        now = time.time()
        starting = self.drop_since is None
        if starting:
            self.drop_since = now
        self.drop_last = now
        self.drop_error = exc.strerror or str(exc)
        self.dropped_bytes += lost
        self.dropped_records += records
        self.dropped_bytes_total += lost
        self.dropped_records_total += records
        self.close()
        if starting and self.on_drop is not None:
            self.on_drop(self, self._report(True))

    def close(self) -> None:
        """Close the file descriptor (the next write reopens it)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class _Torn(OSError):
    """A write failed after part of it reached the file; ``kept`` bytes of it remain."""

    def __init__(self, kept: int, cause: OSError) -> None:
        super().__init__(cause.errno, cause.strerror)
        self.kept = kept
        self.cause = cause


def rfc3339(epoch: float) -> bytes:
    """``epoch`` as RFC 3339 UTC with microseconds."""
    whole = int(epoch)
    return b"%s.%06dZ" % (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)).encode(),
                          int((epoch - whole) * 1_000_000))


def _rename(src: str, dst: str) -> None:
    try:
        os.rename(src, dst)
    except FileNotFoundError:
        pass


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass

