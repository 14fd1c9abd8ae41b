"""Service output: from the pipes the launcher owns to log records.  STDLIB ONLY.

Each service instance has two pipes (stdout, stderr).  A :class:`PipeReader` reads whole
chunks (up to 1 MiB; the pipes are enlarged to 1 MiB) and hands them, as records, to the
service's :class:`.logfile.LogFile` (and to an :class:`.echo.Echo` with ``--log-stdout``)
in one of two formats:

``stamped`` (default)
    one record a line, ``<RFC 3339 UTC µs> <pid> <O|E> <text>``.  The timestamp is taken
    once per read, not once per line: per-line work in Python tops out near 50 MB/s,
    while ``bytes.replace`` over a chunk runs at hundreds of MB/s.  Lines longer than
    64 KiB are split into several records, never dropped.  A partial last line is held
    until its newline arrives (or the pipe closes).
``raw``
    the bytes as they come, for programs that stamp their own lines.

The reader never waits for the supervisor: the launcher keeps draining pipes whether or
not one is connected.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections import deque
from typing import TYPE_CHECKING

from .logfile import LogFile, timestamp

if TYPE_CHECKING:
    from .echo import Echo

READ_SIZE = 1024 * 1024
PIPE_SIZE = 1024 * 1024
MAX_LINE = 64 * 1024
RECENT = 5
# Every window of this many bytes must hold a newline for all lines to be <= MAX_LINE.
_WINDOW = MAX_LINE // 2
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


def enlarge_pipe(fd: int) -> None:
    """Ask for a 1 MiB pipe buffer (fewer wake-ups, bigger chunks); best effort."""
    try:
        fcntl.fcntl(fd, _F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass



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
        """Read everything already in the pipe without waiting (used when the child exits);
        at end of file, a held partial last line is written too, so that it is among
        the exit report's last lines (the loop still sees the end of file, and closes).

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
                self.flush()
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
