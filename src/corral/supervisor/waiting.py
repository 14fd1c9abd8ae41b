"""Waiting for a state: coroutines that wait until some instance changes state or health.

The core wakes every waiter on each change (:meth:`StateWaiters.wake`); a waiter then looks
again at what it waits for.  This is the one place that pairs "a change happened" with
"or a deadline passed".
"""

from __future__ import annotations

import asyncio
import contextlib


class StateWaiters:
    """The coroutines waiting for the next state or health change of any instance."""

    def __init__(self) -> None:
        self._waiters: list[asyncio.Future[None]] = []

    def wake(self) -> None:
        """Wake every coroutine waiting for a state or health change."""
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    async def wait(self, timeout: float) -> None:
        """Return at the next change, or once ``timeout`` seconds passed, whichever is
        first.  The caller looks again at what it waits for, and at its deadline."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(waiter, timeout)
