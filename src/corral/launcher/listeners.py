"""Listening sockets held for socket-mode services.  STDLIB ONLY.

A socket-mode service (``services: [{name, on, mode: socket}]``) has its address bound
ONCE, here in the launcher, so the socket outlives supervisor restarts and upgrades, and
every instance that receives the service is handed the same listening socket: the kernel
spreads the connections, with no proxy in the path.  The hand-over follows systemd's
socket-activation convention (``sd_listen_fds(3)``): the sockets are fds 3, 4, ...,
``LISTEN_FDS`` counts them, ``LISTEN_FDNAMES`` names them (``:``-separated), and
``LISTEN_PID`` is the pid of the program that receives them.

``LISTEN_PID`` must be the exec'ed program's own pid, which is only known after the
fork, while ``subprocess`` fixes the environment before it.  So a spawn with sockets
execs from a ``preexec_fn`` of its own (:func:`exec_with_sockets`): dup2 the sockets to
3.., then ``execve`` with ``LISTEN_PID=getpid()``.  That costs the ``vfork`` fast path
(a spawn several times slower: docs/benchmarks.md, "Figures behind the code"), paid by
socket-mode spawns only.  A ``/bin/sh -c 'LISTEN_PID=$$ exec ...'`` wrapper would be
cheaper but cannot move an fd above 9 (dash), and a launcher's listening sockets usually
are.
"""

from __future__ import annotations

import fcntl
import os
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass

from corral.protocol import binding
from corral.protocol import messages as m

BACKLOG = 4096
FIRST_FD = 3  # SD_LISTEN_FDS_START
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class ListenError(Exception):
    """The address cannot be listened on; the message says why, for a person."""


@dataclass
class Listener:
    """One listening socket the launcher holds."""

    name: str
    host: str
    port: int  # the port asked for (0: any)
    sock: socket.socket

    @property
    def bound(self) -> tuple[str, int]:
        address = self.sock.getsockname()
        return str(address[0]), int(address[1])

    def describe(self) -> m.ListenerInfo:
        host, port = self.bound
        return {"name": self.name, "host": host, "port": port}


class Listeners:
    """The launcher's listening sockets, by name."""

    def __init__(self) -> None:
        self.by_name: dict[str, Listener] = {}

    def listen(self, name: str, host: str, port: int) -> Listener:
        """Bind ``host:port`` (SO_REUSEADDR, backlog 4096) as ``name``; idempotent.

        Error handling: raises :class:`ListenError` with the reason (in use, not a local
        address, no permission, cannot resolve), or when ``name`` already listens on
        another address (Unlisten it first).
        """
        if not _NAME.fullmatch(name):
            raise ListenError(f"bad listener name {name!r}: use 1-64 of A-Z a-z 0-9 _ . -")
        if not 0 <= port <= 65535:
            raise ListenError(f"port {port} is out of range 0..65535")
        held = self.by_name.get(name)
        if held is not None:
            # The same request again, or one naming the port that port 0 got.
            if held.host == host and port in (0, held.port, held.bound[1]):
                return held
            raise ListenError(f"{name!r} already listens on {binding.where(*held.bound)}; "
                              "Unlisten it first")
        self.by_name[name] = listener = Listener(name, host, port, bind(host, port))
        return listener

    def unlisten(self, name: str) -> bool:
        """Close the launcher's copy; instances that have it keep theirs.  False if unknown."""
        listener = self.by_name.pop(name, None)
        if listener is None:
            return False
        listener.sock.close()
        return True

    def fds(self, names: list[str]) -> list[int]:
        """The fds for ``names``, in order.  Raises KeyError with the first unknown name."""
        return [self.by_name[name].sock.fileno() for name in names]

    def describe(self) -> list[m.ListenerInfo]:
        return [listener.describe() for listener in self.by_name.values()]


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port``.  Raises :class:`ListenError`."""
    try:
        return binding.bind(host, port, BACKLOG)
    except binding.BindError as exc:
        raise ListenError(str(exc)) from None


def exec_with_sockets(path: str, argv: list[str], env: dict[str, str], fds: list[int],
                      names: list[str],
                      before: Callable[[], None] | None = None) -> Callable[[], None]:
    """A ``preexec_fn`` that hands ``fds`` over as 3.. and execs ``path`` itself.

    It runs in the child after ``subprocess`` has done setsid, cwd, umask and the uid/gid
    change, and before it would exec: the fds are first copied above the target range
    (so moving one never overwrites another that is still to be moved), then dup2'ed to
    3.. (inheritable), and the environment gets ``LISTEN_*`` with the child's own pid.
    """
    count = len(fds)
    base_env = {k: v for k, v in env.items() if not k.startswith("LISTEN_")}

    def preexec() -> None:  # in the child, between fork and exec
        if before is not None:
            before()
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, FIRST_FD + count) for fd in fds]
        for i, fd in enumerate(high):
            os.dup2(fd, FIRST_FD + i, inheritable=True)
        os.execve(path, argv, {**base_env, "LISTEN_FDS": str(count),
                               "LISTEN_PID": str(os.getpid()),
                               "LISTEN_FDNAMES": ":".join(names)})
    return preexec
