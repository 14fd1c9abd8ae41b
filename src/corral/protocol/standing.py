"""Standing orders: what the launcher does at a child's exit while the supervisor is not
there to decide.  STDLIB ONLY.

The supervisor computes every delay; the launcher only follows them.  Two forms travel in
``Spawn.on_exit`` and ``Order.on_exit``:

- ``{"respawn_after_ms": N}`` (protocol 1.2): start the child again N ms after its next
  exit.  It covers that one exit: the process it starts has no order.
- ``{"respawn_after_ms": N | null, "then": [...], "cooldown_ms": C, "fresh": [...]}``
  (1.3): the restart policy's next answers, drawn in advance.  An exit after the child
  ran at least C ms restarts it at once (``cooled`` in its ``Exited``) and the young deaths
  after it follow ``fresh``; an exit before C is a young death, whose delay is
  ``respawn_after_ms`` and after which the young deaths follow ``then``.  In a sequence
  the last delay repeats and null means "wait for the supervisor" (past ``max_restarts``,
  or a sequence longer than the supervisor cared to draw).

So a crash loop runs on its policy's backoff and stops at its restart limit even while no
supervisor is connected, and a supervisor that comes back replaces the order anyway.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .messages import OnExit

#: The longest sequence a launcher takes (the supervisor draws 16).
MAX_SEQUENCE = 64
_MAX_MS = 2**31 - 1
_CHAIN_KEYS = frozenset({"respawn_after_ms", "then", "cooldown_ms", "fresh"})
_SHAPE = ("'on_exit' must be null, {'respawn_after_ms': N} or {'respawn_after_ms': N or "
          "null, 'then': [...], 'cooldown_ms': N, 'fresh': [...]} (N: an integer >= 0 "
          f"of milliseconds; the lists: 1 to {MAX_SEQUENCE} of N or null)")


class BadOrder(ValueError):
    """An ``on_exit`` the launcher cannot follow; the message names the expected shape."""


@dataclass(frozen=True)
class StandingOrder:
    """The launcher's instructions for a child's next exit and, in the 1.3 form, for the
    processes it will start after it.

    ``after_ms`` is the delay for the next exit (a young one when ``cooldown_ms`` is
    set; None: wait).  ``then``/``fresh`` are empty in the 1.2 form.
    """

    after_ms: int | None
    then: tuple[int | None, ...] = ()
    cooldown_ms: int | None = None
    fresh: tuple[int | None, ...] = ()

    def __post_init__(self) -> None:  # a launcher's saved state hands lists over
        object.__setattr__(self, "then", tuple(self.then))
        object.__setattr__(self, "fresh", tuple(self.fresh))

    @classmethod
    def parse(cls, value: Any) -> StandingOrder | None:
        """The order ``value`` (the wire's ``on_exit``) describes; None for null.

        Raises:
            BadOrder: any other shape, one line naming the expected ones.
        """
        if value is None:
            return None
        if not isinstance(value, dict):
            raise BadOrder(_SHAPE)
        if set(value) == {"respawn_after_ms"}:
            return cls(_delay(value["respawn_after_ms"], nullable=False))
        if set(value) != _CHAIN_KEYS:
            raise BadOrder(_SHAPE)
        return cls(_delay(value["respawn_after_ms"], nullable=True), _sequence(value["then"]),
                   _delay(value["cooldown_ms"], nullable=False), _sequence(value["fresh"]))

    @classmethod
    def lift(cls, value: StandingOrder | int | None) -> StandingOrder | None:
        """An order as kept by a launcher before sequences (a bare delay) as an order."""
        return cls(value) if isinstance(value, int) else value

    def wire(self) -> OnExit:
        """The ``on_exit`` object of this order."""
        if self.cooldown_ms is None:
            return {"respawn_after_ms": self.after_ms}
        return {"respawn_after_ms": self.after_ms, "then": list(self.then),
                "cooldown_ms": self.cooldown_ms, "fresh": list(self.fresh)}

    def at_exit(self, ran_ms: float) -> tuple[int | None, StandingOrder | None, bool]:
        """What the exit of a child that ran ``ran_ms`` calls for: the delay before it
        starts again (None: wait for the supervisor), the order of the process that
        start makes, and whether the child had outlived the cooldown."""
        if self.cooldown_ms is None:
            return self.after_ms, None, False
        if ran_ms >= self.cooldown_ms:
            return 0, self._follow(self.fresh), True
        if self.after_ms is None:
            return None, None, False
        return self.after_ms, self._follow(self.then), False

    def _follow(self, sequence: tuple[int | None, ...]) -> StandingOrder:
        return StandingOrder(sequence[0], sequence[1:] or sequence, self.cooldown_ms,
                             self.fresh)


def _delay(value: Any, nullable: bool) -> int | None:
    if value is None and nullable:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _MAX_MS:
        raise BadOrder(_SHAPE)
    return value


def _sequence(value: Any) -> tuple[int | None, ...]:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_SEQUENCE:
        raise BadOrder(_SHAPE)
    return tuple(_delay(v, nullable=True) for v in value)


def sequence_ms(delays: Sequence[float | None]) -> list[int | None]:
    """Delays in seconds (None: wait) as the milliseconds an order carries."""
    return [None if d is None else round(d * 1000) for d in delays]
