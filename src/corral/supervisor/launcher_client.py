"""The supervisor's end of the launcher protocol (asyncio).

Requests are pipelined: each gets an ``id`` and a future that is resolved when the reply
with that ``id`` arrives.  The frame is written synchronously in the calling coroutine's
step, so a restart decided in the exit handler reaches the launcher without waiting for
another turn of the loop.  Frames are decoded in the transport's ``data_received``
callback itself, not in a reader task that callback would wake a loop turn later: that is
the restart-latency path (``Exited`` in, ``Spawn`` out).  Unasked ``Exited`` frames are
handed to ``on_exit`` and acknowledged after it returns, ``Respawned`` frames likewise to
``on_respawned``; ``Shutdown`` calls ``on_shutdown``; ``OutputDropped`` goes to
``on_dropped`` when one is given.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import struct
from collections.abc import Callable
from typing import Any, cast

from corral import __version__
from corral.errors import LauncherError, SpawnFailed, Unavailable
from corral.protocol import framing
from corral.protocol import messages as m

Message = dict[str, Any]



class Incompatible(LauncherError):
    """The launcher and this supervisor speak different protocol major versions.

    ``by_launcher``: the launcher refused our ``Hello`` (and has said so itself)."""

    def __init__(self, message: str, by_launcher: bool) -> None:
        super().__init__(m.E_INCOMPATIBLE, message)
        self.by_launcher = by_launcher


_SPAWN_CODES = {m.E_EXEC_FAILED, m.E_USER_NOT_FOUND, m.E_GROUP_NOT_FOUND}


class _Protocol(asyncio.Protocol):
    """The launcher connection's transport callbacks, handed straight to the client."""

    def __init__(self, client: LauncherClient) -> None:
        self._client = client
        self._decoder = framing.Decoder()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.WriteTransport without subclassing it.
        self._client._transport = cast(asyncio.WriteTransport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            messages = self._decoder.feed(data)
        except framing.FrameError:
            self._client.close()  # the stream position is lost: drop the connection
            return
        for message in messages:
            self._client._dispatch(message)

    def connection_lost(self, exc: Exception | None) -> None:
        self._client._lost()


class LauncherClient:
    """A connected launcher.  Create with :meth:`connect`."""

    def __init__(self, on_exit: Callable[[Message], None], on_shutdown: Callable[[], None],
                 on_lost: Callable[[], None],
                 on_dropped: Callable[[Message], None] | None = None,
                 on_respawned: Callable[[Message], None] | None = None) -> None:
        self._transport: asyncio.WriteTransport | None = None  # set once connected
        self._on_exit = on_exit
        self._on_respawned = on_respawned
        self._on_dropped = on_dropped
        self._on_shutdown = on_shutdown
        self._on_lost = on_lost
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Message]] = {}
        self.launcher_pid = 0
        self.launcher_started_at = 0.0
        self.notify = False  # the launcher passes Notify on to systemd (HelloOk.notify)
        self.launcher_version = ""  # the corral release it runs ("" from an older one)
        self.launcher_protocol = ""  # its protocol version, "MAJOR.MINOR"

    @classmethod
    async def connect(cls, sock: socket.socket, on_exit: Callable[[Message], None],
                      on_shutdown: Callable[[], None], on_lost: Callable[[], None],
                      on_dropped: Callable[[Message], None] | None = None,
                      on_respawned: Callable[[Message], None] | None = None) -> LauncherClient:
        """Wrap the inherited socket, start reading, and say ``Hello``."""
        client = cls(on_exit, on_shutdown, on_lost, on_dropped, on_respawned)
        await asyncio.get_running_loop().create_unix_connection(
            lambda: _Protocol(client), sock=sock)
        try:
            reply = await client.request({"type": m.HELLO, "version": m.PROTOCOL_VERSION})
        except LauncherError as exc:
            if exc.launcher_code == m.E_INCOMPATIBLE:
                raise Incompatible(str(exc), by_launcher=True) from None
            raise
        theirs = reply.get("version")
        if not m.compatible(m.PROTOCOL_VERSION, theirs):  # a launcher that does not check
            raise Incompatible(
                f"the launcher speaks launcher protocol {theirs!r} and this supervisor "
                f"{m.PROTOCOL_VERSION!r} (corral {__version__}): incompatible",
                by_launcher=False)
        client.launcher_version = str(reply.get("corral_version") or "")
        client.launcher_protocol = str(theirs)
        client.launcher_pid = int(reply.get("launcher_pid", 0))
        client.launcher_started_at = float(reply.get("started_at", 0.0))
        client.notify = reply.get("notify") is True
        return client

    def send_request(self, message: Message) -> asyncio.Future[Message]:
        """Write a request now; return the future of its reply."""
        transport = self._open()
        rid = next(self._ids)
        message["id"] = rid
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[rid] = future
        transport.write(framing.encode(message))
        return future

    def send_encoded(self, body: bytes, extra: bytes = b"") -> asyncio.Future[Message]:
        """Like :meth:`send_request` for a request already encoded as a JSON object
        without ``id`` (the id is spliced in, so the body can be reused); ``extra``: more
        encoded fields, each followed by a comma (``b'"on_exit":null,'``)."""
        transport = self._open()
        rid = next(self._ids)
        framed = b'{"id":%d,%s' % (rid, extra) + body[1:]
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[rid] = future
        transport.write(struct.pack(">I", len(framed)) + framed)
        return future

    def speaks(self, version: tuple[int, int]) -> bool:
        """Whether the launcher speaks protocol ``version`` (``(1, 2)``) or a later minor."""
        theirs = m.parse_version(self.launcher_protocol)
        return theirs is not None and theirs[0] == version[0] and theirs[1] >= version[1]

    def _open(self) -> asyncio.WriteTransport:
        """The transport, if the connection is still open; else :class:`Unavailable`."""
        transport = self._transport
        if transport is None or transport.is_closing():
            raise Unavailable("the launcher connection is closed")
        return transport

    async def request(self, message: Message) -> Message:
        """Send a request and wait for its reply.

        Raises:
            SpawnFailed: a ``Spawn`` was refused (missing binary, user, group).
            LauncherError: any other ``Error`` reply.
            Unavailable: the connection was lost first.
        """
        return check(await self.send_request(message))

    async def list_children(self) -> list[Message]:
        return (await self.inventory())[0]

    async def inventory(self) -> tuple[list[Message], list[Message]]:
        """The launcher's children, and the respawns it waits to carry out (protocol 1.3:
        ``{name, old_pid, due_in_ms, exited?}``; none from an older launcher)."""
        reply = await self.request({"type": m.LIST})
        children, waiting = reply.get("children", []), reply.get("respawns", [])
        return (children if isinstance(children, list) else [],
                waiting if isinstance(waiting, list) else [])

    async def listen(self, name: str, host: str, port: int) -> Message:
        """Have the launcher bind ``host:port`` once and hold it as ``name`` (socket mode).

        Idempotent: the same name and address again returns the socket already held, so a
        reattaching supervisor may simply repeat it.  Port 0 picks a free port.  Spawns
        hand the socket over with ``{"listen_fds": [name, ...]}`` in the Spawn request.

        Returns:
            ``{"name", "host", "port"}``: the address actually bound.
        Raises:
            LauncherError: code ``ListenFailed`` with the reason: in use, not a local
                address, no permission, a bad name, or the name already listens on
                another address (unlisten it first).
            Unavailable: the connection was lost first.
        """
        reply = await self.request({"type": m.LISTEN, "name": name, "host": host,
                                    "port": port})
        return {"name": reply.get("name"), "host": reply.get("host"), "port": reply.get("port")}

    async def unlisten(self, name: str) -> bool:
        """Close the launcher's socket ``name`` (running instances keep their copies).

        Returns False if no such socket was held.
        """
        reply = await self.request({"type": m.UNLISTEN, "name": name})
        return bool(reply.get("existed"))

    async def listeners(self) -> list[Message]:
        """The sockets the launcher holds (``[{name, host, port}]``), from ``List``."""
        reply = await self.request({"type": m.LIST})
        held = reply.get("listeners", [])
        return held if isinstance(held, list) else []

    async def tell_manager(self, ready: bool = False, status: str | None = None) -> None:
        """``Notify``: have the launcher tell systemd ``READY=1`` and/or ``STATUS=``
        (only worth sending when :attr:`notify` is true)."""
        message: Message = {"type": m.NOTIFY, "ready": ready}
        if status is not None:
            message["status"] = status
        await self.request(message)

    async def upgrade(self) -> Message:
        """``Upgrade``: have the launcher check the installed corral and, once this
        supervisor has exited, re-execute itself with it (same pid, same services).

        Returns:
            ``{"version", "corral_version"}`` of the installed code.
        Raises:
            LauncherError: ``Incompatible`` (another protocol major version),
                ``UpgradeFailed`` (the installed code fails its check; the message has its
                last line), or ``BadRequest`` (one is under way, or the launcher is too
                old to upgrade in place).
            Unavailable: the connection was lost first.
        """
        try:
            reply = await self.request({"type": m.UPGRADE})
        except LauncherError as exc:
            if exc.launcher_code == m.E_BAD_REQUEST and "unknown message type" in str(exc):
                which = f" (corral {self.launcher_version})" if self.launcher_version else ""
                raise LauncherError(exc.launcher_code, (
                    f"the launcher{which} cannot upgrade in place; restart it instead "
                    "(corral sup stop, then corral sup run): its services restart too")) \
                    from None
            raise
        return {"version": reply.get("version"), "corral_version": reply.get("corral_version")}

    def _lost(self) -> None:
        """The connection ended (EOF, an error, a bad frame or :meth:`close`)."""
        for future in self._pending.values():
            if not future.done():
                future.set_exception(Unavailable("lost the connection to the launcher"))
        self._pending.clear()
        self._on_lost()

    def _dispatch(self, message: Message) -> None:
        kind = message.get("type")
        rid = message.get("id")
        if rid is not None and rid in self._pending:
            future = self._pending.pop(rid)
            if not future.done():
                future.set_result(message)
        elif kind in (m.EXITED, m.RESPAWNED):
            handler = self._on_exit if kind == m.EXITED else self._on_respawned
            if handler is not None:
                handler(message)
            if self._transport is not None and not self._transport.is_closing():
                self._transport.write(framing.encode({"type": m.ACK,
                                                      "seq": message.get("seq")}))
        elif kind == m.SHUTDOWN:
            self._on_shutdown()
        elif kind == m.OUTPUT_DROPPED and self._on_dropped is not None:
            self._on_dropped(message)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


def check(reply: Message) -> Message:
    """Raise the matching error for an ``Error`` reply; return any other reply."""
    if reply.get("type") != m.ERROR:
        return reply
    code = str(reply.get("code", "Error"))
    message = str(reply.get("message", "the launcher refused the request"))
    if code in _SPAWN_CODES:
        raise SpawnFailed(code, message)
    raise LauncherError(code, message)
