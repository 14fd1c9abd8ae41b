"""Service output: the pipes the launcher owns and the log files it writes.  STDLIB ONLY.

Each service instance has two pipes (stdout, stderr).  The launcher reads whole chunks
(up to 1 MiB; the pipes are enlarged to 1 MiB) and appends them to
``<state>/logs/<service>.log`` in one of two formats:

``stamped`` (default)
    one record a line, ``<RFC 3339 UTC µs> <pid> <O|E> <text>``.  The timestamp is taken
    once per read, not once per line: per-line work in Python tops out near 50 MB/s,
    while ``bytes.replace`` over a chunk runs at hundreds of MB/s.  Lines longer than
    64 KiB are split into several records, never dropped.  A partial last line is held
    until its newline arrives (or the pipe closes).
``raw``
    the bytes as they come, for programs that stamp their own lines.

Files rotate by size: when a write would take the file past ``max_bytes`` it is renamed
``.1`` (older ones shift up to ``keep``) and a new file is opened.  The writer never waits
for the supervisor: the launcher keeps draining pipes whether or not one is connected.

A write that fails (a full disk, an I/O error) never blocks a service and never leaves a
torn record: what the file took of a failed write is cut back to the last whole record,
the rest is dropped and counted, and once writing works again one record says how much
was dropped and when (:class:`LogFile`).

A reader may also copy its records to an :class:`Echo`, one of the launcher's own output
descriptors (``sup run --log-stdout``), prefixed ``<service>[<instance>] <O|E> ``.  An echo
never makes the launcher wait: it writes without blocking, and a reader that does not keep
up loses records on that descriptor only (counted), never in the files.

Each file carries the extended attribute :data:`START_XATTR`: how many bytes of the
service's output went into the files before it.  A follower that finds files rotated
away unread can then say exactly how many bytes it skipped (where the file system keeps
no user attributes, it can only say that some were).
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import stat
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import NamedTuple

READ_SIZE = 1024 * 1024
PIPE_SIZE = 1024 * 1024
MAX_LINE = 64 * 1024
RECENT = 5
# Every window of this many bytes must hold a newline for all lines to be <= MAX_LINE.
_WINDOW = MAX_LINE // 2
#: The log's offset of a file's first byte, in decimal: the sum of the sizes of the files
#: before it (since this log was first written, as far as the launcher knows).
START_XATTR = "user.corral.start"
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
try:
    IOV_MAX = max(16, os.sysconf("SC_IOV_MAX"))
except (ValueError, OSError):
    IOV_MAX = 1024

_second_cache: tuple[int, bytes] = (-1, b"")


def timestamp() -> bytes:
    """Now as RFC 3339 UTC with microseconds, e.g. ``2026-11-21T23:59:01.123456Z``."""
    global _second_cache
    ns = time.time_ns()
    sec, rem = divmod(ns, 1_000_000_000)
    if _second_cache[0] != sec:
        _second_cache = (sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)).encode())
    return b"%s.%06dZ" % (_second_cache[1], rem // 1000)


def enlarge_pipe(fd: int) -> None:
    """Ask for a 1 MiB pipe buffer (fewer wake-ups, bigger chunks); best effort."""
    try:
        fcntl.fcntl(fd, _F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass


Pieces = Sequence[bytes | memoryview]


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


# What an echo keeps for a reader that is behind (a burst), at most: the rest is dropped.
ECHO_BUFFER = 4 * 1024 * 1024
# Errors after which a descriptor never takes data again: its reader is gone.
_GONE = frozenset({errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.EIO, errno.EBADF,
                   errno.ENXIO})


class Echo:
    """One of the launcher's own output descriptors (stdout, stderr), never waited on.

    Records go out whole or not at all.  What the descriptor does not take at once waits
    in a buffer of at most ``ECHO_BUFFER`` bytes (``on_pending(echo)`` asks the loop to
    call :meth:`flush` when the descriptor is writable), so a reader that keeps up on
    average loses nothing to a burst.  Records that do not fit in the buffer are dropped
    and counted (``dropped_records``, ``dropped_bytes``, and ``on_drop(echo)`` on each
    drop); the buffer always ends on a record boundary, so the reader never sees a torn
    or mixed line.  A reader gone for good (EPIPE; EIO from a terminal that hung up) is
    not written to again (``gone``).

    Pipes, FIFOs and terminals are reopened through ``/proc/self/fd`` so that the
    launcher's ``O_NONBLOCK`` is on a file description of its own, never on one it shares
    with a shell (a pipe is also enlarged to 1 MiB); a socket (journald's stdout) is
    written with ``MSG_DONTWAIT``; regular files and ``/dev/null`` are written as they are:
    they never make a writer wait.
    """

    def __init__(self, fd: int, label: str) -> None:
        self.label = label
        self.fd, self._sock, self.pollable = _own_nonblocking(fd)
        self.gone = self.fd < 0
        self.error = "closed" if self.gone else ""
        self.buffer = bytearray()
        self.dropped_records = 0
        self.dropped_bytes = 0
        # What the launcher has reported of it so far (its report is throttled).
        self.reported_records = 0
        self.reported_bytes = 0
        self.reported_gone = False
        self.reporting = False
        self.on_drop: Callable[[Echo], None] | None = None
        self.on_pending: Callable[[Echo], None] | None = None

    def write(self, pieces: Pieces, count: Callable[[], int]) -> None:
        """Send the whole records ``pieces``, keep them for later, or drop them;
        ``count()`` says how many records they hold (called only when they are dropped)."""
        if self.buffer:
            self.flush()
        if self.gone:
            self._drop(sum(len(p) for p in pieces), count())
            return
        if self.buffer:
            data = b"".join(pieces)
        else:
            try:
                sent = self._send(pieces)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                self._fail(exc)
                self._drop(sum(len(p) for p in pieces), count())
                return
            if sent == sum(len(p) for p in pieces):
                return
            # The rest of a record the descriptor took part of comes first: it fits, as
            # the buffer was empty and holds far more than a record.
            data = b"".join(pieces)[sent:]
        room = ECHO_BUFFER - len(self.buffer)
        if len(data) <= room:
            self.buffer += data
        else:
            cut = data.rfind(b"\n", 0, room) + 1
            self.buffer += memoryview(data)[:cut]
            self._drop(len(data) - cut, data.count(b"\n", cut) + (data[-1:] != b"\n"))
        if self.buffer and self.on_pending is not None:
            self.on_pending(self)

    def flush(self) -> None:
        """Send what waits in the buffer, as far as the descriptor takes it."""
        while self.buffer:
            try:
                sent = self._send([self.buffer])
            except BlockingIOError:
                return
            except OSError as exc:
                self._fail(exc)
                self._drop(len(self.buffer), self.buffer.count(b"\n"))
                self.buffer.clear()
                return
            del self.buffer[:sent]

    def _send(self, pieces: Pieces | list[bytearray]) -> int:
        if len(pieces) > IOV_MAX:
            pieces = [b"".join(pieces)]
        if self._sock is not None:
            return self._sock.sendmsg(pieces, (), socket.MSG_DONTWAIT)
        return os.writev(self.fd, pieces)

    def _fail(self, exc: OSError) -> None:
        self.error = exc.strerror or str(exc)
        if exc.errno in _GONE:
            self.gone = True

    def _drop(self, size: int, records: int) -> None:
        self.dropped_bytes += size
        self.dropped_records += records
        if self.on_drop is not None:
            self.on_drop(self)


def _own_nonblocking(fd: int) -> tuple[int, socket.socket | None, bool]:
    """A descriptor for writing to what ``fd`` refers to without ever blocking:
    (fd, the socket to send on or None, whether a selector can watch it).  (-1, None,
    False) if ``fd`` is not open."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return -1, None, False
    if stat.S_ISSOCK(mode):
        sock = socket.socket(fileno=os.dup(fd))
        return sock.fileno(), sock, True
    if stat.S_ISREG(mode) or (stat.S_ISCHR(mode) and not os.isatty(fd)):
        return os.dup(fd), None, False
    try:
        own = os.open(f"/proc/self/fd/{fd}",
                      os.O_WRONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:  # no /proc, or a pipe with no reader left: share the description
        own = os.dup(fd)
        os.set_blocking(own, False)
    if stat.S_ISFIFO(mode):
        enlarge_pipe(own)
    return own, None, True


class PipeReader:
    """Reads one service pipe and turns its bytes into log records.

    ``read()`` is called when the pipe is readable; it returns False at end of file, after
    flushing any partial last line as a record of its own.  With an ``echo``, every
    record is also sent there as one line, after ``echo_prefix`` (``web[0] O ``).
    """

    def __init__(self, fd: int, pid: int, tag: bytes, log: LogFile, stamped: bool,
                 recent: deque[bytes] | None = None, echo: Echo | None = None,
                 echo_prefix: bytes = b"") -> None:
        self.fd = fd
        self.log = log
        self.stamped = stamped
        self.echo = echo
        self._eprefix = echo_prefix
        self._tail = b" %d %s " % (pid, tag)
        self._carry = b""
        self._ecarry = b""  # raw format: the echo's partial last line
        # The last lines (shared by a child's two pipes), for the exit report.
        self.recent: deque[bytes] = recent if recent is not None else deque(maxlen=RECENT)

    def read(self) -> bool:
        """Read one chunk; return False when the pipe is closed (EOF)."""
        try:
            chunk = os.read(self.fd, READ_SIZE)
        except BlockingIOError:
            return True
        except OSError as exc:
            if exc.errno == errno.EINTR:
                return True
            chunk = b""
        if not chunk:
            self.flush()
            return False
        if self.stamped:
            self._stamp(chunk)
        else:
            self._raw(chunk)
        return True

    def drain(self) -> None:
        """Read everything already in the pipe without waiting (used when the child exits).

        Nothing once the pipe is closed (end of file seen): its fd number may already
        belong to another pipe by now."""
        if self.fd < 0:
            return
        for _ in range(64):
            try:
                chunk = os.read(self.fd, READ_SIZE)
            except OSError:
                return
            if not chunk:
                return
            if self.stamped:
                self._stamp(chunk)
            else:
                self._raw(chunk)

    def flush(self) -> None:
        """Write a held partial line as a record of its own."""
        if self._carry:
            prefix = timestamp() + self._tail if self.stamped else b""
            self.log.write([prefix, self._carry, b"\n"])
            if self.echo is not None:
                self.echo.write([self._eprefix, self._carry, b"\n"], _one)
            self._remember(self._carry)
            self._carry = b""
        if self._ecarry and self.echo is not None:
            self.echo.write([self._eprefix, self._ecarry, b"\n"], _one)
        self._ecarry = b""

    def _raw(self, chunk: bytes) -> None:
        self.log.write([chunk])
        self._remember_raw(chunk)
        if self.echo is None:
            return
        last = chunk.rfind(b"\n")
        if last >= 0:
            self._echo(self._ecarry, chunk, last)
            self._ecarry = chunk[last + 1:]
        else:
            self._ecarry += chunk
        if len(self._ecarry) > MAX_LINE:  # a line this long goes out in pieces
            self.echo.write([self._eprefix, self._ecarry, b"\n"], _one)
            self._ecarry = b""

    def _stamp(self, chunk: bytes) -> None:
        last = chunk.rfind(b"\n")
        if (last >= 0 and len(self._carry) + chunk.find(b"\n") <= MAX_LINE
                and len(chunk) - last - 1 <= MAX_LINE and _lines_fit(chunk, last)):
            self._stamp_fast(chunk, last)
            return
        data = self._carry + chunk if self._carry else chunk
        last = data.rfind(b"\n")
        if last < 0:
            self._carry = data
            if len(data) > MAX_LINE:
                # Write whole 64 KiB records; hold the rest (at least one byte) for later.
                cut = len(data) - (len(data) % MAX_LINE or MAX_LINE)
                self._carry = data[cut:]
                self._write_long([data[:cut]])
            return
        self._carry = data[last + 1:]
        body = data[:last]
        if not _lines_fit(body):
            self._write_long(body.split(b"\n"))
        else:
            prefix = timestamp() + self._tail
            self.log.write([prefix, body.replace(b"\n", b"\n" + prefix), b"\n"])
            if self.echo is not None:
                self._echo(b"", data, last)
            self._remember(body[-MAX_LINE:])
        if len(self._carry) > MAX_LINE:
            keep = len(self._carry) % MAX_LINE or MAX_LINE
            cut = len(self._carry) - keep
            head, self._carry = self._carry[:cut], self._carry[cut:]
            self._write_long([head])

    def _stamp_fast(self, chunk: bytes, last: int) -> None:
        """The hot path: no line too long.  One ``replace`` over the chunk as read and one
        ``writev``; the held partial line and the chunk are never concatenated, and the
        tail after the last newline is cut off with a memoryview rather than copied out."""
        prefix = timestamp() + self._tail
        stamped = chunk.replace(b"\n", b"\n" + prefix)
        tail = len(chunk) - last - 1
        end = len(stamped) - tail - len(prefix)
        self.log.write([prefix, self._carry, memoryview(stamped)[:end]])
        if self.echo is not None:
            self._echo(self._carry, chunk, last)
        if last < 4096 and self._carry:  # the first line began in an earlier read
            self._remember(self._carry[-4096:] + chunk[:last])
        else:
            self._remember(chunk[max(0, last - 4096):last])
        self._carry = chunk[last + 1:]

    def _echo(self, head: bytes, chunk: bytes, last: int) -> None:
        """Echo the whole lines ``head + chunk[:last + 1]``, each after the echo prefix
        (one more ``replace`` over the chunk, as for the file)."""
        assert self.echo is not None
        prefix = self._eprefix
        pieces: list[bytes | memoryview]
        if prefix:
            body = chunk.replace(b"\n", b"\n" + prefix)
            end = len(body) - (len(chunk) - last - 1) - len(prefix)
            pieces = [prefix, head, memoryview(body)[:end]]
        else:
            pieces = [head, memoryview(chunk)[:last + 1]]
        self.echo.write(pieces, lambda: chunk.count(b"\n", 0, last + 1))

    def _write_long(self, lines: list[bytes]) -> None:
        """Slow path: some line is longer than MAX_LINE; split each into records."""
        prefix = timestamp() + self._tail
        pieces: list[bytes | memoryview] = []
        for line in lines:
            view = memoryview(line)
            for start in range(0, max(len(line), 1), MAX_LINE):
                pieces += [prefix, view[start:start + MAX_LINE], b"\n"]
        self.log.write(pieces)
        if self.echo is not None:
            echoed = [self._eprefix if i % 3 == 0 else piece for i, piece in enumerate(pieces)]
            self.echo.write(echoed, lambda: len(echoed) // 3)
        if lines:
            self._remember(lines[-1][-MAX_LINE:])

    def _remember(self, text: bytes) -> None:
        self.recent.extend(text.rsplit(b"\n", RECENT)[-RECENT:])

    def _remember_raw(self, chunk: bytes) -> None:
        # Not chunk.rstrip(): that copies the whole chunk (up to 1 MiB) to keep 4 KiB.
        end = len(chunk)
        while end and chunk[end - 1] == 0x0A:
            end -= 1
        self._remember(chunk[max(0, end - 4096):end])


def _one() -> int:
    return 1


def _lines_fit(body: bytes, end: int | None = None) -> bool:
    """True if no line in ``body[:end]`` is longer than MAX_LINE, checked per window, not per line.

    A line of 2 x _WINDOW bytes or more would contain a whole aligned window, so it is
    enough that every whole window holds a newline and that the last line is short.
    """
    size = len(body) if end is None else end
    if size <= MAX_LINE:
        return True
    if body.rfind(b"\n", 0, size) < size - MAX_LINE:
        return False
    return all(body.find(b"\n", start, start + _WINDOW) >= 0
               for start in range(0, size - _WINDOW + 1, _WINDOW))
