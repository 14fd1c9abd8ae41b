"""uvicorn's server, woken once a second instead of ten times.

``uvicorn.Server.main_loop`` sleeps 0.1 s in a loop to notice ``should_exit`` and to
refresh the ``Date`` header once a second.  In an idle supervisor those ten wake-ups a
second are its largest fixed cost, larger than sampling 1,000 idle services (figures in
docs/benchmarks.md, "Figures behind the code").  Here the loop sleeps until :meth:`QuietServer.stop` or the next
whole second (the ``Date`` header stays right to the second), so an exit is still seen
at once.
"""

from __future__ import annotations

import asyncio
import contextlib

import uvicorn


class QuietServer(uvicorn.Server):
    """A ``uvicorn.Server`` to stop with :meth:`stop` (not by setting ``should_exit``)."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._stopping = asyncio.Event()
        #: Set once start-up is done and requests are being served.
        self.answering = asyncio.Event()

    def stop(self, force: bool = False) -> None:
        """Finish serving: let open requests end (``force``: close at once)."""
        self.should_exit = True
        if force:
            self.force_exit = True
        self._stopping.set()

    async def main_loop(self) -> None:
        self.answering.set()  # uvicorn enters its main loop once it serves
        counter = 0
        while not await self.on_tick(counter):
            counter += 10  # on_tick refreshes the Date header when counter % 10 == 0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), 1.0)
