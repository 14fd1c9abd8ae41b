"""A bounded series of (time, CPU %, RSS) points, kept in flat arrays.

Why not a ``deque`` of tuples: a point as a tuple of two floats and an int costs about
150 bytes of Python objects, so an hour at one point every 10 s was 54 KiB per instance,
and a supervisor of 1,000 services grew by 54 MB in its first hour.  Three typed arrays
cost 20 bytes a point (7 KiB per instance-hour), and nothing for the collector to scan.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator


class History:
    """The last ``capacity`` points, oldest first when iterated."""

    __slots__ = ("_at", "_cpu", "_next", "_rss", "capacity")

    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError("a history needs room for at least one point")
        self.capacity = capacity
        self._at = array("d")
        self._cpu = array("f")   # percent of one core; float32 keeps 0.1 % steps exact enough
        self._rss = array("Q")   # bytes
        self._next = 0           # where the next point goes once the arrays are full

    def append(self, at: float, cpu: float, rss: int) -> None:
        """Add a point, dropping the oldest when full."""
        if len(self._at) < self.capacity:
            self._at.append(at)
            self._cpu.append(cpu)
            self._rss.append(max(0, rss))
            return
        i = self._next
        self._at[i], self._cpu[i], self._rss[i] = at, cpu, max(0, rss)
        self._next = (i + 1) % self.capacity

    def __len__(self) -> int:
        return len(self._at)

    def __iter__(self) -> Iterator[tuple[float, float, int]]:
        n, start = len(self._at), self._next
        for k in range(n):
            i = (start + k) % n
            yield self._at[i], round(self._cpu[i], 1), self._rss[i]
