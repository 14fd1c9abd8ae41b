"""A clock that moves only when a test says so, and an event loop that keeps its time.

:class:`FakeClock` is a :class:`corral.supervisor.clock.Clock` whose wall and monotonic
times stand still until :meth:`FakeClock.advance`.  :class:`FakeLoop` is an asyncio loop
whose ``time()`` is that clock's monotonic time, so every ``call_later``, ``sleep`` and
``wait_for`` in the supervisor (backoff timers, readiness, health intervals, rollout
deadlines, sampling rounds) fires when the test advances the clock, never on its own.

A test runs ready callbacks with :meth:`FakeLoop.settle` (it returns once the loop has
nothing left to do but wait for a timer or for I/O).  Awaiting anything else that only a
timer can finish would wait for ever: the test advances the clock instead.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, TypeVar

from corral.supervisor.clock import Clock

T = TypeVar("T")


class FakeClock(Clock):
    """Wall and monotonic time that move only with :meth:`advance`.

    Args:
        wall: the wall clock's start (seconds since the epoch).
        monotonic: the monotonic clock's start.
    """

    def __init__(self, wall: float = 1_767_225_600.0, monotonic: float = 1_000.0) -> None:
        self._wall = wall
        self._monotonic = monotonic

    def time(self) -> float:
        return self._wall

    def monotonic(self) -> float:
        return self._monotonic

    def advance(self, seconds: float) -> None:
        """Move both clocks ``seconds`` forward (the loop's timers due by then fire at the
        next :meth:`FakeLoop.settle`)."""
        if seconds < 0:
            raise ValueError(f"a clock never goes back (asked to advance {seconds})")
        self._wall += seconds
        self._monotonic += seconds


class _IdleSelector(selectors.BaseSelector):
    """A selector that tells its loop's :meth:`FakeLoop.settle` when the loop is idle:
    asked to wait (a timeout other than 0) while a settle is waiting, it wakes the settle
    instead of blocking."""

    def __init__(self) -> None:
        self._inner = selectors.DefaultSelector()
        self.on_idle: Callable[[], bool] = lambda: False

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._inner.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._inner.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._inner.modify(fileobj, events, data)

    def select(self, timeout: float | None = None
               ) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout != 0 and self.on_idle():
            timeout = 0  # the settle's callback is now ready: do not block
        return self._inner.select(timeout)

    def close(self) -> None:
        self._inner.close()

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._inner.get_map()


class FakeLoop(asyncio.SelectorEventLoop):
    """An event loop on ``clock``'s monotonic time."""

    def __init__(self, clock: FakeClock) -> None:
        self._selector_idle = _IdleSelector()
        super().__init__(self._selector_idle)
        self._clock = clock
        self._settling: list[asyncio.Future[None]] = []
        self._selector_idle.on_idle = self._idle

    def time(self) -> float:
        return self._clock.monotonic()

    def _idle(self) -> bool:
        waiting, self._settling = self._settling, []
        for future in waiting:
            if not future.done():
                future.set_result(None)
        return bool(waiting)

    async def settle(self) -> None:
        """Return once every callback that is ready (and every one they make ready) has
        run, and the timers due by the clock's time have fired: the loop has nothing left
        to do but wait."""
        future: asyncio.Future[None] = self.create_future()
        self._settling.append(future)
        await future

    def run(self, main: Coroutine[Any, Any, T]) -> T:
        """Run ``main`` to its end on this loop, then close the loop."""
        try:
            return self.run_until_complete(main)
        finally:
            tasks = asyncio.all_tasks(self)
            for task in tasks:
                task.cancel()
            if tasks:
                self.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            self.close()
