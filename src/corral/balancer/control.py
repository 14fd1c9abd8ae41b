"""The balancer's control protocol, served on a Unix socket (mode 0600).  STDLIB ONLY.

Frames are corral.protocol's: a 4-byte big-endian length, then one JSON object.  Every
request carries ``id`` and its reply echoes it; requests may be pipelined, and several
controllers may be connected (the last ``configure`` wins).  Requests and replies::

    {type: configure, services: [SERVICE...]}   -> {type: configured, services: {NAME: ERROR}}
    {type: probe, services: [SERVICE...]}       -> {type: probed, services: {NAME: ERROR}}
    {type: stats}                               -> {type: stats, pid, started_at, services: [...]}
    {type: drained, service, backend}           -> {type: drained, drained: BOOL}
    {type: hand_over}                           -> {type: handed_over, services: [SERVICE...]}
                                                   + the listening sockets (SCM_RIGHTS)
    anything malformed                          -> {type: error, message}

    SERVICE = {name, host, port, balance: round-robin|least-connections, drain_timeout,
               backends: [{id, host, port, state: active|draining}]}
    ERROR   = null (listening / could be bound) or one line saying why not

``configure`` always carries the WHOLE set: a service missing from it is removed (its
listener closed, its connections drained), a backend missing from a service is drained.
The balancer keeps its configuration when a controller disconnects: it goes on serving,
and a new controller simply sends the whole set again.

``hand_over`` is how a new balancer (``--take-over``, started by ``sup upgrade``) replaces
this one without refusing a connection: this balancer stops serving control (its socket
path is removed, for the new one to bind), sends its whole configuration with its
listening sockets attached in the reply's first bytes (in ``services`` order, those that
listen), closes its own copies, finishes the connections it has and exits.  Connections
that arrive meanwhile wait in the sockets' backlog, which both processes share.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from corral.protocol import framing, paths

from .choice import ACTIVE, BALANCES, DRAINING, Balance
from .proxy import BackendConfig, Proxy, ServiceConfig

Message = dict[str, Any]

CONFIGURE = "configure"
PROBE = "probe"
STATS = "stats"
DRAINED = "drained"
HAND_OVER = "hand_over"
HANDED_OVER = "handed_over"
ERROR = "error"


class ControlError(Exception):
    """A control request is malformed; the message names the field."""


def _field(obj: Message, key: str, kind: type, where: str) -> Any:
    if key not in obj:
        raise ControlError(f"{where}.{key}: missing")
    value = obj[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ControlError(f"{where}.{key}: expected {kind.__name__}, got {value!r}")
    return value


def _port(obj: Message, where: str) -> int:
    port: int = _field(obj, "port", int, where)
    if not 0 < port < 65536:
        raise ControlError(f"{where}.port: {port} is not a port (1-65535)")
    return port


def parse_backend(raw: object, where: str) -> BackendConfig:
    if not isinstance(raw, dict):
        raise ControlError(f"{where}: expected an object")
    state = raw.get("state", ACTIVE)
    if state not in (ACTIVE, DRAINING):
        raise ControlError(f"{where}.state: expected active or draining, got {state!r}")
    return BackendConfig(id=_field(raw, "id", str, where), host=_field(raw, "host", str, where),
                         port=_port(raw, where), state=state)


def parse_service(raw: object, where: str) -> ServiceConfig:
    if not isinstance(raw, dict):
        raise ControlError(f"{where}: expected an object")
    balance = raw.get("balance", "round-robin")
    if balance not in BALANCES:
        raise ControlError(f"{where}.balance: expected one of {', '.join(BALANCES)}, "
                           f"got {balance!r}")
    drain = float(raw.get("drain_timeout", 30.0)) if isinstance(
        raw.get("drain_timeout", 30.0), int | float) else -1.0
    if drain < 0:
        raise ControlError(f"{where}.drain_timeout: expected seconds >= 0")
    backends_raw = raw.get("backends", [])
    if not isinstance(backends_raw, list):
        raise ControlError(f"{where}.backends: expected a list")
    backends = tuple(parse_backend(b, f"{where}.backends[{i}]")
                     for i, b in enumerate(backends_raw))
    ids = [b.id for b in backends]
    if len(set(ids)) != len(ids):
        raise ControlError(f"{where}.backends: duplicate backend ids")
    chosen: Balance = balance
    return ServiceConfig(name=_field(raw, "name", str, where), host=_field(raw, "host", str, where),
                         port=_port(raw, where), balance=chosen, drain_timeout=drain,
                         backends=backends)


def parse_services(message: Message) -> list[ServiceConfig]:
    """The ``services`` of a configure or probe request.

    Raises:
        ControlError: a field is missing or wrong; the message says which.
    """
    raw = message.get("services")
    if not isinstance(raw, list):
        raise ControlError("services: expected a list")
    services = [parse_service(s, f"services[{i}]") for i, s in enumerate(raw)]
    names = [s.name for s in services]
    if len(set(names)) != len(names):
        raise ControlError("services: duplicate service names")
    return services


def wire(config: ServiceConfig) -> Message:
    """A service as ``configure`` sends it."""
    return {"name": config.name, "host": config.host, "port": config.port,
            "balance": config.balance, "drain_timeout": config.drain_timeout,
            "backends": [{"id": b.id, "host": b.host, "port": b.port, "state": b.state}
                         for b in config.backends]}


class TakeOverError(Exception):
    """The running balancer would not hand over its sockets; the message says why."""


def take_over(path: Path, timeout: float = 10.0) -> tuple[list[ServiceConfig],
                                                            list[socket.socket]] | None:
    """Ask the balancer serving ``path`` for its listening sockets and configuration
    (``hand_over``); None when no balancer serves it.

    Raises:
        TakeOverError: it answered something else (an older balancer), or broke off.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        try:
            conn.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            return None
        conn.sendall(framing.encode({"type": HAND_OVER, "id": 1}))
        decoder = framing.Decoder()
        fds: list[int] = []
        try:
            while True:
                data, more, _flags, _addr = socket.recv_fds(conn, 1024 * 1024, 1024)
                fds += more
                if not data:
                    raise TakeOverError("the running balancer closed the connection")
                messages = decoder.feed(data)
                if messages:
                    break
        except (OSError, framing.FrameError) as exc:
            for fd in fds:
                os.close(fd)
            raise TakeOverError(f"no hand-over from the running balancer: {exc}") from None
    reply = messages[0]
    socks = [socket.socket(fileno=fd) for fd in fds]
    if reply.get("type") != HANDED_OVER:
        for sock in socks:
            sock.close()
        raise TakeOverError(f"the running balancer does not hand over: "
                            f"{reply.get('message', reply.get('type'))}")
    try:
        configs = parse_services(reply)
    except ControlError as exc:
        for sock in socks:
            sock.close()
        raise TakeOverError(f"the running balancer's configuration: {exc}") from None
    return configs, socks


def handle(proxy: Proxy, request: Message) -> Message:
    """Answer one request (pure apart from what it asks the proxy to do)."""
    kind = request.get("type")
    try:
        if kind == CONFIGURE:
            return {"type": "configured", "services": proxy.configure(parse_services(request))}
        if kind == PROBE:
            return {"type": "probed", "services": proxy.probe(parse_services(request))}
        if kind == STATS:
            return {"type": STATS, **proxy.stats()}
        if kind == DRAINED:
            service = _field(request, "service", str, "request")
            backend = _field(request, "backend", str, "request")
            return {"type": DRAINED, "drained": proxy.drained(service, backend)}
    except ControlError as exc:
        return {"type": ERROR, "message": str(exc)}
    return {"type": ERROR, "message": f"unknown request type {kind!r}"}


class ControlServer:
    """Serves the control protocol for one :class:`Proxy` on a Unix socket.

    ``on_handed_over()`` is called once this balancer has handed its listening sockets to
    a new one (it should then finish its connections and exit)."""

    def __init__(self, proxy: Proxy, path: Path,
                 on_handed_over: Callable[[], None] | None = None) -> None:
        self.proxy = proxy
        self.path = path
        self.on_handed_over = on_handed_over
        self.handed_over = False
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        """Bind the socket (replacing a stale one), mode 0600 from the start."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        old = os.umask(0o177)  # no window in which another user could connect
        try:
            with paths.unix_address(self.path) as address:
                self._server = await asyncio.start_unix_server(self._serve, path=address,
                                                               limit=framing.MAX_FRAME)
        finally:
            os.umask(old)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = framing.Decoder()
        self._writers.add(writer)
        try:
            while data := await reader.read(1024 * 1024):
                for request in decoder.feed(data):
                    if request.get("type") == HAND_OVER and not self.handed_over:
                        self._hand_over(request, writer)
                        return
                    reply = handle(self.proxy, request)
                    if "id" in request:
                        reply["id"] = request["id"]
                    writer.write(framing.encode(reply))
        except ConnectionError:
            return  # the controller went away (a supervisor killed): the configuration stays
        except framing.FrameError as exc:
            # Not corral's framing: say so in the balancer's log, drop that connection,
            # keep serving with the configuration it has.
            print(f"corral-balancer: dropping a control connection: {exc}", file=sys.stderr,
                  flush=True)
        finally:
            self._writers.discard(writer)
            writer.close()

    def _hand_over(self, request: Message, writer: asyncio.StreamWriter) -> None:
        """Give the listening sockets and the configuration to the new balancer that asked."""
        # A socket of our own on the connection: sendmsg with SCM_RIGHTS.  The reply is the
        # first thing on a new connection and small: it fits the socket buffer at once.
        own = os.dup(writer.get_extra_info("socket").fileno())
        configs, socks = self.proxy.listening()
        reply = framing.encode({"type": HANDED_OVER, "id": request.get("id"),
                                "services": [wire(c) for c in configs]})
        self.close()  # the path is free for the new balancer's control socket
        self.handed_over = True
        with socket.socket(fileno=own) as conn:
            sent = socket.send_fds(conn, [reply], [s.fileno() for s in socks])
            if sent < len(reply):
                conn.setblocking(True)
                conn.sendall(reply[sent:])
        self.proxy.stop_listening()
        print(f"corral-balancer: handed {len(socks)} listening socket"
              f"{'s' if len(socks) != 1 else ''} over to a new balancer; finishing the "
              f"{self.proxy.active} open connection{'s' if self.proxy.active != 1 else ''}",
              flush=True)
        if self.on_handed_over is not None:
            self.on_handed_over()

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        if self.handed_over:
            return  # the path is the new balancer's now
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
