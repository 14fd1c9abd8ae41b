"""systemd's notify protocol: a datagram socket per instance, ``NOTIFY_SOCKET`` in its env.

Programs that speak it (``sd_notify``, ``systemd-notify --ready``, most daemons built for
systemd) send ``READY=1`` when they are ready to serve; the supervisor turns that into the
instance's readiness.  The socket lives in Linux's abstract namespace (``@corral/...``):
it needs no path in the state directory, so a service that runs as another user can reach
it even though the state directory is private, and its name is derived from the state
directory, service and instance, so a supervisor started after a crash binds the same name
that the adopted process already has in its environment.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
from collections.abc import Callable
from pathlib import Path

Fields = dict[str, str]


def socket_name(state_dir: Path, instance: str) -> str:
    """The ``NOTIFY_SOCKET`` value for one instance, by its launcher name (``web/0``, or
    ``web/0@2`` beside an older one in a rollout); ``@`` marks the abstract namespace."""
    digest = hashlib.sha256(str(state_dir).encode()).hexdigest()[:12]
    return f"@corral/{digest}/{instance}"


def parse(data: bytes) -> Fields:
    """``READY=1\\nSTATUS=...`` -> ``{"READY": "1", "STATUS": "..."}``."""
    fields: Fields = {}
    for line in data.decode(errors="replace").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key.strip()] = value
    return fields


class _Receiver(asyncio.DatagramProtocol):
    def __init__(self, on_message: Callable[[Fields], None]) -> None:
        self._on_message = on_message

    def datagram_received(self, data: bytes, addr: object) -> None:
        self._on_message(parse(data))


class NotifySocket:
    """A bound notify socket; :meth:`close` releases the name.

    Binding is synchronous, so the name exists before the Spawn that advertises it is
    sent; datagrams that arrive before the loop starts reading wait in the socket.
    """

    def __init__(self, name: str, on_message: Callable[[Fields], None]) -> None:
        """Bind ``name`` (from :func:`socket_name`) and deliver each message's fields.

        Raises:
            OSError: the name is taken (another supervisor on the same state directory).
        """
        self.name = name
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self._sock.bind("\0" + name[1:])
        except OSError:
            self._sock.close()
            raise
        self._sock.setblocking(False)
        self._transport: asyncio.BaseTransport | None = None
        self._closed = False
        self._task = asyncio.ensure_future(self._attach(on_message))

    async def _attach(self, on_message: Callable[[Fields], None]) -> None:
        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: _Receiver(on_message), sock=self._sock)
        if self._closed:
            transport.close()
        self._transport = transport

    def close(self) -> None:
        self._closed = True
        if self._transport is not None:
            self._transport.close()
        elif self._task.done():
            self._sock.close()
        else:
            self._task.cancel()
            self._sock.close()
