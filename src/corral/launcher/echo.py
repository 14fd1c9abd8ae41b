"""The launcher's own stdout and stderr as a copy of services' records.  STDLIB ONLY.

With ``sup run --log-stdout`` a :class:`.output.PipeReader` also sends each record to an
:class:`Echo`, one line prefixed ``<service>[<instance>] <O|E> ``.  An echo never makes
the launcher wait: it writes without blocking, and a reader that does not keep up loses
records on that descriptor only (counted), never in the files.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from collections.abc import Callable

from .logfile import IOV_MAX, Pieces
from .output import enlarge_pipe

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

