"""The event history: every transition and action, bounded, with live subscribers.

A subscriber gets an ``asyncio.Queue`` of bounded size.  A consumer that falls behind
does not grow the supervisor's memory: when its queue is full, it is dropped and told so
by a final ``None``, and the client reconnects (``corral events -f`` does).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import deque
from typing import Any

Event = dict[str, Any]

HISTORY = 2000
SUBSCRIBER_QUEUE = 1000


@functools.lru_cache(maxsize=4)
def _second(whole: int) -> str:
    # Cached: ``strftime`` + ``gmtime`` were a tenth of the supervisor's time on the
    # restart path, and events come in bursts within one second.
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))


def rfc3339(epoch: float) -> str:
    """``2026-11-21T23:59:01.123456Z`` for a Unix time."""
    whole = int(epoch)
    micros = round((epoch - whole) * 1_000_000)
    if micros >= 1_000_000:
        whole, micros = whole + 1, micros - 1_000_000
    return f"{_second(whole)}.{micros:06d}Z"


class EventLog:
    """Records events with a sequence number and fans them out to subscribers."""

    def __init__(self, history: int = HISTORY) -> None:
        self._events: deque[Event] = deque(maxlen=history)
        self._seq = 0
        self._subscribers: set[asyncio.Queue[Event | None]] = set()

    def emit(self, service: str, kind: str, reason: str, *, instance: int | None = None,
             **fields: Any) -> Event:
        """Record one event; ``fields`` may hold from, to, pid, exit_code, signal, delay_s."""
        self._seq += 1
        event: Event = {"seq": self._seq, "at": rfc3339(time.time()), "service": service,
                        "instance": instance, "kind": kind, "from": None, "to": None,
                        "reason": reason, "pid": None, "exit_code": None, "signal": None,
                        "delay_s": None}
        for key, value in fields.items():
            event["from" if key == "from_" else key] = value
        self._events.append(event)
        for queue in list(self._subscribers):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                self._subscribers.discard(queue)
                queue.get_nowait()
                queue.put_nowait(None)
        return event

    def recent(self, n: int, service: str | None = None) -> list[Event]:
        """The last ``n`` events (for ``service`` only, if given), oldest first."""
        selected = [e for e in self._events if service is None or e["service"] == service]
        return selected[-n:] if n > 0 else []

    def subscribe(self) -> asyncio.Queue[Event | None]:
        queue: asyncio.Queue[Event | None] = asyncio.Queue(SUBSCRIBER_QUEUE)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Event | None]) -> None:
        self._subscribers.discard(queue)
