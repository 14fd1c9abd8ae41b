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

Each file carries the extended attribute :data:`START_XATTR`: how many bytes of the
service's output went into the files before it.  A follower that finds files rotated
away unread can then say exactly how many bytes it skipped (where the file system keeps
no user attributes, it can only say that some were).
"""

from __future__ import annotations

import errno
import fcntl
import os
import sys
import time
from collections import deque

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


class LogFile:
    """One size-rotated log file, shared by every instance of a service.

    Error handling: a failed write (disk full, file removed) is reported once on the
    launcher's stderr and the data is dropped, so that the service never blocks on a
    full pipe; the next write tries again (reopening the file).
    """

    def __init__(self, path: str, max_bytes: int, keep: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        self.users = 0
        self._fd = -1
        self._size = 0
        self._failing = False
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

    def write(self, pieces: list[bytes | memoryview]) -> None:
        """Append ``pieces`` as one write, rotating first if they would overflow the file."""
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
            written = os.writev(self._fd, pieces)
            while written < total:  # short writes are rare on files; finish them
                rest = b"".join(bytes(p) for p in pieces)[written:]
                written += os.write(self._fd, rest)
            self._size += total
            self._failing = False
        except OSError as exc:
            if not self._failing:
                print(f"corral-launcher: cannot write {self.path}: {exc}; dropping output "
                      "until it works again", file=sys.stderr)
            self._failing = True
            self.close()

    def close(self) -> None:
        """Close the file descriptor (the next write reopens it)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


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


class PipeReader:
    """Reads one service pipe and turns its bytes into log records.

    ``read()`` is called when the pipe is readable; it returns False at end of file, after
    flushing any partial last line as a record of its own.
    """

    def __init__(self, fd: int, pid: int, tag: bytes, log: LogFile, stamped: bool,
                 recent: deque[bytes] | None = None) -> None:
        self.fd = fd
        self.log = log
        self.stamped = stamped
        self._tail = b" %d %s " % (pid, tag)
        self._carry = b""
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
            self.log.write([chunk])
            self._remember_raw(chunk)
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
                self.log.write([chunk])
                self._remember_raw(chunk)

    def flush(self) -> None:
        """Write a held partial line as a record of its own."""
        if self._carry:
            prefix = timestamp() + self._tail if self.stamped else b""
            self.log.write([prefix, self._carry, b"\n"])
            self._remember(self._carry)
            self._carry = b""

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
        if last < 4096 and self._carry:  # the first line began in an earlier read
            self._remember(self._carry[-4096:] + chunk[:last])
        else:
            self._remember(chunk[max(0, last - 4096):last])
        self._carry = chunk[last + 1:]

    def _write_long(self, lines: list[bytes]) -> None:
        """Slow path: some line is longer than MAX_LINE; split each into records."""
        prefix = timestamp() + self._tail
        pieces: list[bytes | memoryview] = []
        for line in lines:
            view = memoryview(line)
            for start in range(0, max(len(line), 1), MAX_LINE):
                pieces += [prefix, view[start:start + MAX_LINE], b"\n"]
        self.log.write(pieces)
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
