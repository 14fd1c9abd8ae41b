"""Pure backend choice: round-robin and least-connections.  STDLIB ONLY.

A backend is anything with an ``id``, a ``state`` (``"active"`` or ``"draining"``) and an
``active`` count of open connections.  Only ``active`` backends are ever chosen: a
draining one finishes what it has and gets nothing new.  ``exclude`` holds the ids that
already refused this connection, so a retry goes to another backend.

Example::

    chooser = Chooser("least-connections")
    backend = chooser.choose(backends)            # None: no backend can take it
    retry = chooser.choose(backends, {backend.id})
"""

from __future__ import annotations

from collections.abc import Container, Sequence
from typing import Literal, Protocol, TypeVar

Balance = Literal["round-robin", "least-connections"]
BALANCES: tuple[Balance, ...] = ("round-robin", "least-connections")
ACTIVE = "active"
DRAINING = "draining"


class BackendLike(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def active(self) -> int: ...


B = TypeVar("B", bound=BackendLike)


class Chooser:
    """Picks the backend for the next connection of one service.

    Round-robin walks the list from a cursor.  Least-connections takes the fewest open
    connections; ties are broken by the same cursor, so idle backends share the load
    instead of the first one taking every connection.
    """

    __slots__ = ("_cursor", "balance")

    def __init__(self, balance: Balance = "round-robin") -> None:
        self.balance = balance
        self._cursor = 0

    def choose(self, backends: Sequence[B], exclude: Container[str] = ()) -> B | None:
        """The backend for the next connection, or ``None`` if none is active and not
        excluded."""
        n = len(backends)
        if n == 0:
            return None
        start = self._cursor % n
        best: B | None = None
        best_at = 0
        for step in range(n):
            at = (start + step) % n
            backend = backends[at]
            if backend.state != ACTIVE or backend.id in exclude:
                continue
            if self.balance == "round-robin":
                best, best_at = backend, at
                break
            if best is None or backend.active < best.active:
                best, best_at = backend, at
        if best is not None:
            self._cursor = best_at + 1
        return best
