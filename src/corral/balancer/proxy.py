"""The data path: one listener per service, connections piped to a backend.  STDLIB ONLY.

Shape (chosen by measurement, see docs/benchmarks.md): every connection is two
:class:`asyncio.Protocol` halves writing straight into each other's transport, with flow
control — when one side's write buffer passes its high-water mark, the other side stops
reading until it drains.  No streams, no per-chunk task, no copy beyond the transport's.

Per connection: accept, choose a backend (:mod:`.choice`), connect to it (bounded by
:data:`CONNECT_TIMEOUT`), then wrap the client socket.  The client's bytes that arrive
while connecting stay in the kernel's receive buffer, so nothing is lost.  A refused or
timed-out connect is retried on another backend; only when none is left does the client
see its connection closed (counted as ``no_backend``).

Error handling: the accept loop treats EMFILE, ENFILE, ENOBUFS and ENOMEM as overload —
it stops accepting, waits (10 ms doubling to 1 s) and tries again; pending connections
wait in the kernel's backlog meanwhile.  Any other accept error is counted and reported
in the figures, never raised.  A backend's connections are counted per backend, so a
drain can tell when they are all gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from corral import __version__
from corral.protocol import binding, defaults
from corral.protocol.backoff import doubled

from .choice import ACTIVE, DRAINING, Balance, Chooser
from .pipe import WRITE_HIGH, WRITE_LOW, BackendSide, ClientSide

#: A backend that neither accepts nor refuses within this is treated as refusing.
CONNECT_TIMEOUT = 3.0
#: Accept errors that mean "out of resources for now": back off and retry (after trio's
#: serve_listeners).  EMFILE/ENFILE: no file descriptor; ENOBUFS/ENOMEM: kernel memory.
CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
BACKOFF_MIN = 0.01
BACKOFF_MAX = 1.0
#: Accept at most this many connections per readiness event, so one busy listener cannot
#: starve the transports on the same loop.
ACCEPT_BATCH = 64
BACKLOG = 1024


@dataclass(frozen=True)
class BackendConfig:
    """One backend as the controller sends it."""

    id: str
    host: str
    port: int
    state: str = ACTIVE


@dataclass(frozen=True)
class ServiceConfig:
    """One service as the controller sends it: where to listen and where to send."""

    name: str
    host: str
    port: int
    balance: Balance = "round-robin"
    drain_timeout: float = defaults.DRAIN_TIMEOUT
    backends: tuple[BackendConfig, ...] = ()


@dataclass(eq=False)
class ProxiedBackend:
    """A backend's live state and figures (``active``: open connections, and connects
    under way)."""

    id: str
    host: str
    port: int
    state: str = ACTIVE
    active: int = 0
    total: int = 0
    refused: int = 0
    drain_timer: asyncio.TimerHandle | None = None

    def figures(self) -> dict[str, Any]:
        return {"id": self.id, "address": f"{self.host}:{self.port}", "state": self.state,
                "active": self.active, "total": self.total, "refused": self.refused}


class ProxiedService:
    """One service: its listener, its backends, its connections and its figures.

    It is the :class:`~.pipe.Meter` of its connections: it knows which backend each one
    went to (``routes``), so a drain can close a backend's connections and a retired
    backend is forgotten when its last one ends.
    """

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.name = config.name
        self.chooser = Chooser(config.balance)
        self.backends: list[ProxiedBackend] = []
        self.retired: list[ProxiedBackend] = []  # left the set, still finishing connections
        self.routes: dict[ClientSide, ProxiedBackend] = {}
        self.sock: socket.socket | None = None
        self.bind_error: str | None = None
        self.active = 0
        self.total = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.errors: dict[str, int] = {}
        self.last_error: str | None = None
        self.overloaded = 0
        self._loop = asyncio.get_running_loop()
        self._backoff = BACKOFF_MIN
        self._paused = False
        self._retry: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ config
    def update(self, config: ServiceConfig) -> None:
        """Apply a new backend set (same name).  Listening is handled by the caller."""
        self.config = config
        if config.balance != self.chooser.balance:
            self.chooser = Chooser(config.balance)
        old = {b.id: b for b in self.backends}
        fresh: list[ProxiedBackend] = []
        for bc in config.backends:
            backend = old.pop(bc.id, None)
            if backend is None or (backend.host, backend.port) != (bc.host, bc.port):
                if backend is not None:
                    self._retire(backend)
                backend = next((b for b in self.retired if b.id == bc.id
                                and (b.host, b.port) == (bc.host, bc.port)), None)
                if backend is not None:
                    self.retired.remove(backend)
                else:
                    backend = ProxiedBackend(bc.id, bc.host, bc.port)
            self._set_state(backend, bc.state)
            fresh.append(backend)
        for backend in old.values():
            self._retire(backend)
        self.backends = fresh

    def _set_state(self, backend: ProxiedBackend, state: str) -> None:
        if state == backend.state:
            return
        backend.state = state
        if state == DRAINING:
            self._start_drain(backend)
        elif backend.drain_timer is not None:
            backend.drain_timer.cancel()
            backend.drain_timer = None

    def _start_drain(self, backend: ProxiedBackend) -> None:
        if backend.drain_timer is None:
            backend.drain_timer = self._loop.call_later(self.config.drain_timeout,
                                                        self._close_all, backend)

    def _retire(self, backend: ProxiedBackend) -> None:
        """A backend left the set: it drains like a draining one, then is forgotten."""
        backend.state = DRAINING
        if backend.active:
            self._start_drain(backend)
            self.retired.append(backend)
        elif backend.drain_timer is not None:
            backend.drain_timer.cancel()

    def find(self, backend_id: str) -> ProxiedBackend | None:
        for backend in (*self.backends, *self.retired):
            if backend.id == backend_id:
                return backend
        return None

    def drained(self, backend_id: str) -> bool:
        """True when the backend has no open connection (or is unknown)."""
        backend = self.find(backend_id)
        return backend is None or backend.active == 0

    def figures(self) -> dict[str, Any]:
        return {
            "name": self.name, "on": f"{self.config.host}:{self.config.port}",
            "balance": self.config.balance, "listening": self.sock is not None,
            "bind_error": self.bind_error, "active": self.active, "total": self.total,
            "bytes_in": self.bytes_in, "bytes_out": self.bytes_out,
            "errors": dict(self.errors), "last_error": self.last_error,
            "overloaded": self.overloaded,
            "backends": [b.figures() for b in (*self.backends, *self.retired)],
        }

    def _close_all(self, backend: ProxiedBackend) -> None:
        """Drain timeout: close whatever of ``backend`` is still open."""
        backend.drain_timer = None
        for conn in [c for c, b in self.routes.items() if b is backend]:
            conn.abort()

    def ended(self, conn: ClientSide) -> None:
        """A connection is over: count it out of its backend, and forget a retired backend
        whose last connection this was."""
        backend = self.routes.pop(conn, None)
        if backend is not None:
            backend.active -= 1
            if backend.active == 0 and backend.drain_timer is not None \
                    and backend in self.retired:
                backend.drain_timer.cancel()
                self.retired.remove(backend)
        self.active -= 1

    def count_error(self, kind: str, detail: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1
        self.last_error = detail

    # ------------------------------------------------------------------ listening
    def listen(self, sock: socket.socket) -> None:
        """Start accepting on an already bound and listening non-blocking socket."""
        self.sock = sock
        self.bind_error = None
        self._loop.add_reader(sock.fileno(), self._accept)

    def close(self) -> None:
        """Stop listening.  Open connections go on; they are closed by the drain timers."""
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self.sock is not None:
            if not self._paused:
                self._loop.remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None
        self._paused = False
        self._backoff = BACKOFF_MIN

    @property
    def connecting(self) -> int:
        """Connections accepted and still being connected to a backend."""
        return len(self._tasks)

    def shutdown(self, grace: float) -> None:
        """Stop listening and close every connection after ``grace`` seconds."""
        self.close()
        for backend in (*self.backends, *self.retired):
            if backend.drain_timer is not None:
                backend.drain_timer.cancel()
            backend.drain_timer = self._loop.call_later(grace, self._close_all, backend)

    def _accept(self) -> None:
        sock = self.sock
        if sock is None:
            return
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _addr = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in CAPACITY_ERRNOS:
                    self._overload(exc)
                else:
                    # ECONNABORTED and friends: the peer left before we took it.
                    self.count_error("accept", f"accept: {exc.strerror or exc}")
                return
            self._backoff = BACKOFF_MIN
            self._start(conn)

    def _overload(self, exc: OSError) -> None:
        self.overloaded += 1
        self.count_error("overload", f"accept: {exc.strerror or exc}; pausing "
                                     f"{self._backoff * 1000:.0f} ms")
        assert self.sock is not None
        self._loop.remove_reader(self.sock.fileno())
        self._paused = True
        self._retry = self._loop.call_later(self._backoff, self._resume)
        self._backoff = doubled(self._backoff, BACKOFF_MIN, BACKOFF_MAX)

    def _resume(self) -> None:
        self._retry = None
        self._paused = False
        if self.sock is not None:
            self._loop.add_reader(self.sock.fileno(), self._accept)

    def _start(self, conn: socket.socket) -> None:
        conn.setblocking(False)
        # Refused for a connection the client already reset: the copy loop finds that out.
        with contextlib.suppress(OSError):
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        task = self._loop.create_task(self._serve(conn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, conn: socket.socket) -> None:
        tried: set[str] = set()
        client = ClientSide(self)
        while True:
            backend = self.chooser.choose(self.backends, tried)
            if backend is None:
                self.count_error("no_backend", "no backend could take the connection"
                                 + (f" (refused by {', '.join(sorted(tried))})" if tried else ""))
                conn.close()
                return
            backend.active += 1
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    transport, upstream = await self._loop.create_connection(
                        lambda: BackendSide(client), backend.host, backend.port)
            except (OSError, TimeoutError) as exc:
                backend.active -= 1
                backend.refused += 1
                tried.add(backend.id)
                reason = "timed out" if isinstance(exc, TimeoutError) else exc.strerror
                self.count_error("refused", f"backend {backend.id} ({backend.host}:"
                                            f"{backend.port}): {reason or exc}")
                continue
            break
        client.attach(upstream)
        self.routes[client] = backend
        backend.total += 1
        self.active += 1
        self.total += 1
        try:
            transport.set_write_buffer_limits(WRITE_HIGH, WRITE_LOW)
            await self._loop.connect_accepted_socket(lambda: client, conn)
        except OSError as exc:
            self.count_error("client", f"client: {exc.strerror or exc}")
            transport.abort()
            client.finish()


def bind(host: str, port: int) -> socket.socket:
    """Bind and listen on ``host:port`` (non-blocking).

    Raises:
        binding.BindError: with the one line saying why (:mod:`corral.protocol.binding`).
    """
    return binding.bind(host, port, BACKLOG, blocking=False)


class Proxy:
    """Every service of the balancer, configured as a whole.

    ``configure`` is idempotent: a service whose address did not change keeps its
    listening socket (no connection is refused during a reconfiguration), new services
    are bound, removed ones stop listening and their connections drain.
    """

    def __init__(self, bind_socket: Callable[[str, int], socket.socket] = bind) -> None:
        self.services: dict[str, ProxiedService] = {}
        self.started_at = time.time()
        self._bind = bind_socket

    def configure(self, configs: list[ServiceConfig]) -> dict[str, str | None]:
        """Apply the whole set.  Returns each service's bind error (``None``: listening)."""
        wanted = {c.name: c for c in configs}
        for name in [n for n in self.services if n not in wanted]:
            gone = self.services.pop(name)
            gone.update(ServiceConfig(gone.name, gone.config.host, gone.config.port,
                                      gone.config.balance, gone.config.drain_timeout))
            gone.close()
        # Free moved addresses first, so two services may swap or take over an address.
        for config in configs:
            service = self.services.get(config.name)
            if service is not None and (service.config.host, service.config.port) != \
                    (config.host, config.port):
                service.close()
        result: dict[str, str | None] = {}
        for config in configs:
            service = self.services.get(config.name)
            if service is None:
                service = self.services[config.name] = ProxiedService(config)
            service.update(config)
            if service.sock is None:
                try:
                    service.listen(self._bind(config.host, config.port))
                except binding.BindError as exc:
                    service.bind_error = str(exc)
            result[config.name] = service.bind_error
        return result

    def probe(self, configs: list[ServiceConfig]) -> dict[str, str | None]:
        """Whether each service's address could be bound now (without keeping it).

        An address a service already listens on counts as bindable."""
        held = {(s.config.host, s.config.port) for s in self.services.values() if s.sock}
        result: dict[str, str | None] = {}
        for config in configs:
            if (config.host, config.port) in held:
                result[config.name] = None
                continue
            try:
                self._bind(config.host, config.port).close()
                result[config.name] = None
            except binding.BindError as exc:
                result[config.name] = str(exc)
        return result

    def adopt(self, configs: list[ServiceConfig], socks: list[socket.socket]) -> None:
        """Serve ``configs`` with the listening sockets a balancer handed over (in order,
        for the services that listened: see :meth:`listening`)."""
        held = iter(socks)
        for config in configs:
            service = self.services[config.name] = ProxiedService(config)
            service.update(config)
            sock = next(held, None)
            if sock is not None:
                sock.setblocking(False)
                service.listen(sock)

    def listening(self) -> tuple[list[ServiceConfig], list[socket.socket]]:
        """The services (those that listen first) and their listening sockets, in order."""
        on = [s for s in self.services.values() if s.sock is not None]
        off = [s for s in self.services.values() if s.sock is None]
        return ([s.config for s in (*on, *off)],
                [s.sock for s in on if s.sock is not None])

    def stop_listening(self) -> None:
        """Close every listener (handed over); open connections go on to their end."""
        for service in self.services.values():
            service.close()

    def drained(self, service: str, backend_id: str) -> bool:
        found = self.services.get(service)
        return found is None or found.drained(backend_id)

    def stats(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "started_at": self.started_at, "version": __version__,
                "services": [s.figures() for s in self.services.values()]}

    def shutdown(self, grace: float) -> None:
        for service in self.services.values():
            service.shutdown(grace)

    @property
    def active(self) -> int:
        return sum(s.active for s in self.services.values())

    @property
    def busy(self) -> int:
        """Open connections plus those accepted and still connecting to a backend (not
        yet counted in :attr:`active`): what a balancer that stops must wait for."""
        return sum(s.active + s.connecting for s in self.services.values())


