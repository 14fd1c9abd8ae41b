"""The port allocator for ``SERVICE_PORT_<NAME>``.  STDLIB ONLY.

Each instance of a process that ``receives`` a service gets a port of its own, from a
range (default 30000-39999).  A port is handed out only if nobody holds it on the host
(checked by binding it) and it is not already handed out.  After a supervisor restart,
:meth:`PortAllocator.reserve` rebuilds the handed-out set from the running instances.

Example::

    ports = PortAllocator()
    port = ports.allocate()      # e.g. 30000
    ports.release(port)          # the instance ended
"""

from __future__ import annotations

import socket
from collections.abc import Callable

DEFAULT_RANGE = (30000, 39999)


class PortsExhausted(RuntimeError):
    """Every port of the range is taken (handed out or in use on the host)."""


def port_free(port: int) -> bool:
    """True if ``port`` can be bound on every local IPv4 address (and IPv6 if present).

    No SO_REUSEADDR: a port with connections still in TIME_WAIT counts as taken, so an
    instance binding it without that option will not fail.
    """
    for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            continue  # no IPv6 on this host
        try:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((host, port))
        except OSError:
            return False
        finally:
            sock.close()
    return True


class PortAllocator:
    """Hands out ports from ``[low, high]``, one holder at a time.

    Args:
        low, high: the range, both included.
        is_free: the host check (a seam for tests of the bookkeeping).
    """

    def __init__(self, low: int = DEFAULT_RANGE[0], high: int = DEFAULT_RANGE[1],
                 is_free: Callable[[int], bool] = port_free) -> None:
        if not 0 < low <= high < 65536:
            raise ValueError(f"invalid port range {low}-{high}")
        self.low = low
        self.high = high
        self._is_free = is_free
        self._taken: set[int] = set()
        self._next = low  # walk the range so a just-released port is reused last

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

    def reserve(self, port: int) -> None:
        """Mark ``port`` as handed out (an adopted instance already holds it)."""
        self._taken.add(port)

    def release(self, port: int) -> None:
        """The holder ended: the port may be handed out again."""
        self._taken.discard(port)

    @property
    def taken(self) -> frozenset[int]:
        return frozenset(self._taken)
