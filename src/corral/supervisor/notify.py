"""systemd's notify protocol: a datagram socket per instance, ``NOTIFY_SOCKET`` in its env.

Programs that speak it (``sd_notify``, ``systemd-notify --ready``, most daemons built for
systemd) send ``READY=1`` when they are ready to serve; the supervisor turns that into the
instance's readiness.  The socket lives in Linux's abstract namespace (``@corral/...``):
it needs no path in the state directory, so a service that runs as another user can reach
it even though the state directory is private, and its name is derived from the state
directory, service and instance, so a supervisor started after a crash binds the same name
that the adopted process already has in its environment.

Any local process can send to an abstract socket, so every message comes with its
sender's credentials (``SO_PASSCRED``: the kernel fills in the real pid unless the sender
is privileged) and the supervisor believes only the instance's own processes (see
:func:`from_tree`), as systemd's ``NotifyAccess=`` does.  A sender is looked up while its
message is handled, before the next one is read: ``systemd-notify`` waits for that
(``BARRIER=1``: the supervisor closes the file descriptor that comes with it) before it
exits, so it is still there to be looked up.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import hashlib
import os
import socket
import struct
from collections.abc import Callable
from pathlib import Path

Fields = dict[str, str]

_UCRED = struct.Struct("iII")  # struct ucred: pid, uid, gid
_ANCILLARY = socket.CMSG_SPACE(_UCRED.size) + socket.CMSG_SPACE(16 * 4)  # creds, 16 fds
_MAX_HOPS = 64                 # parents walked up from a sender (deeper trees are refused)


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


def lineage(pid: int) -> frozenset[int]:
    """``pid``, its process group, its session and its ancestors, read from ``/proc`` now
    (empty when the process is gone).  A process that belongs to an instance whose main
    process is ``main`` has ``main`` in it: the launcher makes each main process the leader
    of a session and process group of its own, and children that leave them
    (``setsid``) still descend from it."""
    found: set[int] = set()
    current = pid
    for _ in range(_MAX_HOPS):
        try:
            with open(f"/proc/{current}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            break
        # pid (comm) state ppid pgrp session ...; comm may hold spaces and parentheses.
        fields = stat[stat.rfind(b")") + 2:].split()
        ppid, pgrp, session = int(fields[1]), int(fields[2]), int(fields[3])
        found.update((current, pgrp, session))
        if ppid <= 1:
            break
        current = ppid
    return frozenset(found)


def from_tree(sender: int, main: int) -> bool:
    """Whether process ``sender`` belongs to the instance whose main process is ``main``:
    it is ``main``, or in its process group or session, or one of its descendants."""
    return sender == main or main in lineage(sender)


class NotifySocket:
    """A bound notify socket; :meth:`close` releases the name.

    Binding is synchronous, so the name exists before the Spawn that advertises it is
    sent; datagrams that arrive before the loop starts reading wait in the socket.
    ``ignored`` counts messages the owner refused (it reports the first one only).
    """

    def __init__(self, name: str, on_message: Callable[[Fields, int], None]) -> None:
        """Bind ``name`` (from :func:`socket_name`) and deliver each message's fields with
        its sender's pid (0 when the kernel gave none).

        Raises:
            OSError: the name is taken (another supervisor on the same state directory).
        """
        self.name = name
        self.ignored = 0
        self._on_message = on_message
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            self._sock.bind("\0" + name[1:])
        except OSError:
            self._sock.close()
            raise
        self._sock.setblocking(False)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._sock.fileno(), self._read)
        self._closed = False

    def _read(self) -> None:
        # One message at a time, each handled (its sender looked up) before the next is
        # read: a sender waiting on a BARRIER=1 sent after its message is still alive.
        for _ in range(64):  # then let the loop turn; the reader fires again if more wait
            if self._closed:
                return
            try:
                data, ancillary, _, _ = self._sock.recvmsg(4096, _ANCILLARY,
                                                           socket.MSG_CMSG_CLOEXEC)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            pid = 0
            for level, kind, payload in ancillary:
                if level != socket.SOL_SOCKET:
                    continue
                if kind == socket.SCM_CREDENTIALS and len(payload) >= _UCRED.size:
                    pid = _UCRED.unpack_from(payload)[0]
                elif kind == socket.SCM_RIGHTS:
                    # BARRIER=1 passes a pipe's write end: closing it is the answer.
                    fds = array.array("i")
                    fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
                    for fd in fds:
                        with contextlib.suppress(OSError):
                            os.close(fd)
            self._on_message(parse(data), pid)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
