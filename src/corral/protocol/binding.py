"""Binding a listening TCP socket, and why it failed, in one line.  STDLIB ONLY.

Both places that bind a service's address use it: the launcher for socket mode
(``Listen``) and the balancer for proxy mode (``configure``, ``probe``), so a refused
address reads the same wherever it was bound, and the reason goes back to the supervisor
as it is (``Error{ListenFailed}``'s message, the balancer's bind errors)::

    cannot listen on 127.0.0.1:80: the address is already in use
    cannot listen on 192.0.2.1:80: 192.0.2.1 is not an address of this host
    cannot listen on 0.0.0.0:80: permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)
"""

from __future__ import annotations

import errno
import socket


class BindError(Exception):
    """``host:port`` cannot be listened on; the message says why, for a person."""

    def __init__(self, host: str, port: int, exc: OSError) -> None:
        super().__init__(f"cannot listen on {where(host, port)}: {reason(exc, host)}")
        self.errno = exc.errno


def bind(host: str, port: int, backlog: int, *, blocking: bool = True) -> socket.socket:
    """A socket listening on ``host:port`` (``""``: every address), with SO_REUSEADDR.

    SO_REUSEADDR lets a restarted owner bind while the old connections sit in TIME_WAIT;
    it does not allow two live listeners on one address.

    Raises:
        BindError: the address cannot be resolved, bound or listened on.
    """
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise BindError(host, port, exc) from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(backlog)
        sock.setblocking(blocking)
    except OSError as exc:
        sock.close()
        raise BindError(host, port, exc) from None
    except BaseException:
        sock.close()
        raise
    return sock


def reason(exc: OSError, host: str) -> str:
    """Why a bind of ``host`` failed, and what to do about it."""
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve {host!r}: {exc.strerror}"
    if exc.errno == errno.EADDRINUSE:
        return "the address is already in use"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{host} is not an address of this host"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
    return str(exc.strerror or exc)


def split(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[V6]:PORT`` for IPv6) as ``(host, port)``.

    Raises:
        ValueError: malformed, or the port is not from 1 to 65535; the message says what
            is expected (the caller names the option).
    """
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("expected HOST:PORT with a port from 1 to 65535 "
                         "(e.g. 0.0.0.0:9631 or [::1]:9631)")
    return host, int(port)


def where(host: str, port: int) -> str:
    """``host:port`` as a person writes it (``[::1]:80`` for IPv6)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
