"""The port allocator for ``SERVICE_PORT_<NAME>``.  STDLIB ONLY.

Each instance of a process that ``receives`` a service gets a port of its own, from a
range (default 30000-39999).  A port is handed out only if nobody holds it on the host
(checked by binding it) and it is not already handed out.  After a supervisor restart,
:meth:`PortAllocator.reserve` rebuilds the handed-out set from the running instances.

Several corrals on one host (two users, two state directories) share the range, and a port
kept for a stopped instance is bound by nobody, so another corral could hand it out.  Two
things keep them apart: each corral walks the range from its own point
(:func:`start_for` its user and state directory), so they do not hand out the same ports
in the first place; and the supervisor checks an instance's ports with :func:`port_taken`
right before each spawn, and gives it a new one for any that another program took.

Example::

    ports = PortAllocator()
    port = ports.allocate()      # e.g. 30000
    ports.release(port)          # the instance ended
"""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Callable

from corral.protocol import defaults

DEFAULT_RANGE = defaults.PORT_RANGE


class PortsExhausted(RuntimeError):
    """Every port of the range is taken (handed out or in use on the host)."""


def port_free(port: int) -> bool:
    """True if ``port`` can be bound on every local IPv4 address (and IPv6 if present).

    No SO_REUSEADDR: a port with connections still in TIME_WAIT counts as taken, so an
    instance binding it without that option will not fail.
    """
    return _binds_everywhere(port, reuse=False)


def port_taken(port: int) -> bool:
    """True if a program listens on ``port`` (any local IPv4 or IPv6 address), or holds it
    without SO_REUSEADDR: what would make a server started now fail with "Address already
    in use".

    Unlike :func:`port_free`, connections in TIME_WAIT (an instance's own, just before it
    is restarted) do not count: servers bind with SO_REUSEADDR, as this check does.
    """
    return not _binds_everywhere(port, reuse=True)


def _binds_everywhere(port: int, reuse: bool) -> bool:
    """Whether ``port`` can be bound on every local IPv4 address (and IPv6 if present),
    with SO_REUSEADDR or without; the sockets are closed at once."""
    for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            continue  # no IPv6 on this host
        try:
            if reuse:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((host, port))
        except OSError:
            return False
        finally:
            sock.close()
    return True


def start_for(low: int, high: int, key: str) -> int:
    """Where in ``[low, high]`` a corral identified by ``key`` (its user and state
    directory) starts handing out ports: spread evenly by a hash, the same on every start."""
    digest = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
    return low + digest % (high - low + 1)


class PortAllocator:
    """Hands out ports from ``[low, high]``, one holder at a time.

    Args:
        low, high: the range, both included.
        is_free: the host check (a seam for tests of the bookkeeping).
        start: the first port to try (default ``low``; see :func:`start_for`).
    """

    def __init__(self, low: int = DEFAULT_RANGE[0], high: int = DEFAULT_RANGE[1],
                 is_free: Callable[[int], bool] = port_free, start: int | None = None) -> None:
        if not 0 < low <= high < 65536:
            raise ValueError(f"invalid port range {low}-{high}")
        if start is not None and not low <= start <= high:
            raise ValueError(f"start {start} is outside the range {low}-{high}")
        self.low = low
        self.high = high
        self._is_free = is_free
        self._taken: set[int] = set()
        # Walk the range so a just-released port is reused last.
        self._next = low if start is None else start

    def allocate(self) -> int:
        """A port nobody holds.

        Raises:
            PortsExhausted: the whole range is handed out or in use on the host.
        """
        size = self.high - self.low + 1
        for step in range(size):
            port = self.low + (self._next - self.low + step) % size
            if port in self._taken or not self._is_free(port):
                continue
            self._taken.add(port)
            self._next = port + 1 if port < self.high else self.low
            return port
        raise PortsExhausted(f"no free port left in {self.low}-{self.high}: "
                             "widen the range or stop some instances")

    def replace(self, port: int) -> int:
        """A new port for a holder whose ``port`` another program took; ``port`` is
        released once the new one is handed out (so it is not handed back).

        Raises:
            PortsExhausted: no other port is free.
        """
        new = self.allocate()
        self.release(port)
        return new

    def reserve(self, port: int) -> None:
        """Mark ``port`` as handed out (an adopted instance already holds it)."""
        self._taken.add(port)

    def release(self, port: int) -> None:
        """The holder ended: the port may be handed out again."""
        self._taken.discard(port)

    @property
    def taken(self) -> frozenset[int]:
        return frozenset(self._taken)
