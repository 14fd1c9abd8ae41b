"""Tell systemd, through the launcher, that corral is ready and what it is doing.

The launcher is the unit's main process and the only one systemd listens to (see
:mod:`corral.launcher.sdnotify`); this side decides *when*: ``READY=1`` once the API
answers and every service that should run was started (:func:`overall.started`), then a
``STATUS=`` line (:func:`overall.summary`) whenever it changes, at most once per
:data:`SETTLE` seconds.  Driven by the event log, not by a timer: an idle supervisor does
not wake for it.  Run only when the launcher said it has a notify socket
(``LauncherClient.notify``).
"""

from __future__ import annotations

import asyncio

from corral.errors import CorralError

from . import overall
from .launcher_client import LauncherClient
from .loop import Supervisor

#: Seconds to let a burst of events settle before the status line is recomputed.
SETTLE = 0.5


async def announce(supervisor: Supervisor, launcher: LauncherClient,
                   answering: asyncio.Event) -> None:
    """Send ``Notify{ready}`` once started, then ``Notify{status}`` on changes; runs until
    cancelled.  A launcher that cannot be told (gone, refusing) ends it quietly: the
    launcher is what systemd watches, and it says for itself when it goes."""
    events = supervisor.events
    queue = events.subscribe()

    async def next_event() -> None:
        nonlocal queue
        if await queue.get() is None:  # dropped as too slow: a fresh subscription
            events.unsubscribe(queue)
            queue = events.subscribe()

    try:
        await answering.wait()
        while not overall.started(supervisor.services.values()):
            await next_event()
        last = overall.summary(supervisor.services.values())
        await launcher.tell_manager(ready=True, status=last)
        while True:
            await next_event()
            await asyncio.sleep(SETTLE)
            while not queue.empty():
                await next_event()
            line = overall.summary(supervisor.services.values())
            if line != last:
                await launcher.tell_manager(status=line)
                last = line
    except CorralError:
        return
    finally:
        events.unsubscribe(queue)
