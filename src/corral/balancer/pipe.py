"""The two halves of a proxied connection.  STDLIB ONLY.

Each half is an :class:`asyncio.Protocol` that writes what it receives straight into the
other half's transport, with flow control: when one side's write buffer passes
:data:`WRITE_HIGH`, the other side stops reading until it drains below :data:`WRITE_LOW`.
Half-closes are passed on (``write_eof``), so request/response protocols that signal the
end of a request with a FIN work.  :class:`Client` also does the connection's accounting
(per service and per backend) exactly once, whichever side ends first.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from .proxy import Backend, Service

#: Write buffer limits of each half: above HIGH the other half stops reading.
WRITE_HIGH = 256 * 1024
WRITE_LOW = 64 * 1024


class Client(asyncio.Protocol):
    """The client half: bytes in go to the backend; it does the connection's accounting."""

    __slots__ = ("backend", "done", "eof", "pending", "service", "transport", "upstream")

    def __init__(self, service: Service) -> None:
        self.service = service
        self.backend: Backend | None = None
        self.upstream: Upstream | None = None
        self.transport: asyncio.Transport | None = None
        self.pending: list[bytes] = []  # from the backend before the client was wrapped
        self.eof = False
        self.done = False

    def attach(self, backend: Backend, upstream: Upstream) -> None:
        self.backend = backend
        self.upstream = upstream
        backend.total += 1
        backend.conns.add(self)
        self.service.active += 1
        self.service.total += 1

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
        self.service.bytes_in += len(data)
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
        """Account for the end of the connection, once."""
        if self.done:
            return
        self.done = True
        backend = self.backend
        if backend is not None:
            backend.active -= 1
            backend.conns.discard(self)
            if backend.active == 0 and backend.drain_timer is not None \
                    and backend in self.service.retired:
                backend.drain_timer.cancel()
                self.service.retired.remove(backend)
        self.service.active -= 1


class Upstream(asyncio.Protocol):
    """The backend half: bytes in go to the client (buffered until it is wrapped)."""

    __slots__ = ("client", "eof", "lost", "transport")

    def __init__(self, client: Client) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.eof = False
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        client = self.client
        client.service.bytes_out += len(data)
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
