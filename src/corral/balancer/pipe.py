"""The two halves of a proxied connection.  STDLIB ONLY.

Each half is an :class:`asyncio.Protocol` that writes what it receives straight into the
other half's transport, with flow control: when one side's write buffer passes
:data:`WRITE_HIGH`, the other side stops reading until it drains below :data:`WRITE_LOW`.
Half-closes are passed on (``write_eof``), so request/response protocols that signal the
end of a request with a FIN work.  Both halves count their bytes on a :class:`Meter` (the
proxy's service), and :class:`ClientSide` tells it exactly once when the connection ends,
whichever side ends first; what a service counts per backend is the proxy's business.
"""

from __future__ import annotations

import asyncio
from typing import Protocol, cast

#: Write buffer limits of each half: above HIGH the other half stops reading.
WRITE_HIGH = 256 * 1024
WRITE_LOW = 64 * 1024


class Meter(Protocol):
    """What a connection reports to: the bytes each way, and its end."""

    bytes_in: int  # from the client to the backend
    bytes_out: int  # from the backend to the client

    def ended(self, conn: ClientSide) -> None:
        """``conn`` is over (called once, after :meth:`ClientSide.attach`)."""


class ClientSide(asyncio.Protocol):
    """The client half: bytes in go to the backend; it reports the connection's end."""

    __slots__ = ("done", "eof", "meter", "pending", "transport", "upstream")

    def __init__(self, meter: Meter) -> None:
        self.meter = meter
        self.upstream: BackendSide | None = None
        self.transport: asyncio.Transport | None = None
        self.pending: list[bytes] = []  # from the backend before the client was wrapped
        self.eof = False
        self.done = False

    def attach(self, upstream: BackendSide) -> None:
        """Pair with the connected backend half, before the client socket is wrapped."""
        self.upstream = upstream

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = transport = cast(asyncio.Transport, transport)
        transport.set_write_buffer_limits(WRITE_HIGH, WRITE_LOW)
        upstream = self.upstream
        assert upstream is not None
        if self.pending:
            transport.writelines(self.pending)
            self.pending.clear()
            if upstream.transport is not None:
                upstream.transport.resume_reading()  # paused while the client was not there
        if upstream.lost:
            transport.close()
        elif upstream.eof:
            transport.write_eof()

    def data_received(self, data: bytes) -> None:
        self.meter.bytes_in += len(data)
        upstream = self.upstream
        if upstream is not None and upstream.transport is not None:
            upstream.transport.write(data)

    def eof_received(self) -> bool:
        self.eof = True
        upstream = self.upstream
        if upstream is not None and upstream.transport is not None:
            if upstream.eof:
                upstream.transport.close()
                return False
            if not upstream.transport.is_closing():
                upstream.transport.write_eof()
        return True  # half-close: the backend may still answer

    def pause_writing(self) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.close()
        self.finish()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.abort()

    def finish(self) -> None:
        """Report the end of the connection to the meter, once."""
        if self.done:
            return
        self.done = True
        self.meter.ended(self)


class BackendSide(asyncio.Protocol):
    """The backend half: bytes in go to the client (buffered until it is wrapped)."""

    __slots__ = ("client", "eof", "lost", "transport")

    def __init__(self, client: ClientSide) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.eof = False
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        client = self.client
        client.meter.bytes_out += len(data)
        if client.transport is not None:
            client.transport.write(data)
        else:
            # The backend spoke first, before the client socket was wrapped: keep it,
            # and stop reading until the client is there (its connection_made resumes).
            client.pending.append(data)
            assert self.transport is not None
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self.eof = True
        client = self.client.transport
        if client is not None:
            if self.client.eof:
                client.close()
                return False
            if not client.is_closing():
                client.write_eof()
        return True

    def pause_writing(self) -> None:
        if self.client.transport is not None:
            self.client.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.client.transport is not None:
            self.client.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.client.transport is not None:
            self.client.transport.close()
