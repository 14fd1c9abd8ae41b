"""The launcher's side of the protocol: one connection to the current supervisor.  STDLIB ONLY.

:class:`Link` owns the socket: it decodes frames, hands each request to a handler, and
buffers replies and unasked messages without ever blocking the launcher's loop.
:class:`ExitQueue` keeps ``Exited`` (and ``Respawned``) messages until the supervisor
acknowledges them, so an exit that happens while no supervisor is connected (or while one
dies before it has processed the message) is replayed after the next ``Hello``.
"""

from __future__ import annotations

import errno
import socket
import sys
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from corral.protocol import framing
from corral.protocol import messages as m

Message = dict[str, Any]

# An exit queue bounded so that a supervisor that never comes back cannot make the
# launcher grow without end; the oldest exits are the least useful to a new supervisor.
MAX_QUEUED_EXITS = 100_000


#: What the exit queue holds: the reports of exits and of what standing orders started.
Report = TypeVar("Report", m.Exited, m.Respawned)


class ExitQueue:
    """``Exited`` and ``Respawned`` messages not yet acknowledged, in order (one
    numbering for both)."""

    def __init__(self) -> None:
        self._pending: OrderedDict[int, m.Exited | m.Respawned] = OrderedDict()
        self._seq = 0

    def add(self, message: Report) -> Report:
        """Number ``message`` and keep it until acknowledged."""
        self._seq += 1
        message["seq"] = self._seq
        self._pending[self._seq] = message
        while len(self._pending) > MAX_QUEUED_EXITS:
            self._pending.popitem(last=False)
        return message

    def ack(self, seq: Any) -> None:
        """Forget every message up to and including ``seq``."""
        if not isinstance(seq, int):
            return
        for key in [k for k in self._pending if k <= seq]:
            del self._pending[key]

    def pending(self) -> list[m.Exited | m.Respawned]:
        """The unacknowledged messages, oldest first."""
        return list(self._pending.values())


class Link:
    """The connected socket to one supervisor process.

    ``on_request(message)`` is called for each decoded request and returns the reply, or
    None when the reply will be sent later (``Terminate``).  A framing error gets an
    ``Error`` reply and then a clean disconnect; the launcher itself never crashes on
    what a supervisor sends.
    """

    def __init__(self, sock: socket.socket,
                 on_request: Callable[[Message], m.Reply | None]) -> None:
        self.sock = sock
        self.fd = sock.fileno()  # kept: a closed socket no longer knows its number
        self.sock.setblocking(False)
        self.on_request = on_request
        self.greeted = False
        self.closed = False
        self._decoder = framing.Decoder()
        self._out = bytearray()

    def fileno(self) -> int:
        return self.fd

    @property
    def wants_write(self) -> bool:
        return bool(self._out)

    def on_readable(self) -> None:
        """Read what the supervisor sent and answer every whole request."""
        try:
            data = self.sock.recv(1024 * 1024)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.close()
            return
        try:
            requests = self._decoder.feed(data)
        except framing.FrameError as exc:
            self.send(m.error(None, m.E_BAD_REQUEST, f"bad frame: {exc}"))
            self.flush()
            self.close()
            return
        for request in requests:
            try:
                reply = self.on_request(request)
            except Exception as exc:  # a bug must not take the launcher down
                print(f"corral-launcher: internal error handling {request.get('type')!r}: "
                      f"{exc!r}", file=sys.stderr)
                reply = m.error(request.get("id"), m.E_BAD_REQUEST, f"internal error: {exc}")
            if reply is not None:
                self.send(reply)
        self.flush()

    def send(self, message: Mapping[str, Any]) -> None:
        """Queue ``message``; call :meth:`flush` (or wait for writability) to send it."""
        if self.closed:
            return
        try:
            self._out += framing.encode(message)
        except (framing.FrameError, TypeError, ValueError) as exc:
            self._out += framing.encode(m.error(message.get("id"), m.E_BAD_REQUEST,
                                                f"cannot encode the reply: {exc}"))

    def flush(self) -> None:
        """Send as much of the queued output as the socket takes now."""
        while self._out and not self.closed:
            try:
                sent = self.sock.send(self._out)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno not in (errno.EPIPE, errno.ECONNRESET):
                    print(f"corral-launcher: supervisor link: {exc}", file=sys.stderr)
                self.close()
                return
            del self._out[:sent]

    def close(self) -> None:
        """Drop the connection (the supervisor process is handled separately)."""
        if not self.closed:
            self.closed = True
            self._out.clear()
            self.sock.close()
