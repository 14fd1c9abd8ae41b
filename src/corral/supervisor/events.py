"""The event history: every transition and action, bounded, with live subscribers.

A subscriber gets an ``asyncio.Queue`` of bounded size.  A consumer that falls behind
does not grow the supervisor's memory: when its queue is full, it is dropped and told so
by a final ``None``, and the client reconnects (``corral events -f`` does).

Sequence numbers (``seq``) only go up within a state directory, across supervisor
restarts and kills: each supervisor reserves blocks of :data:`SEQ_BLOCK` numbers in
``event-seq.json`` before handing them out, and the next one starts after the last
reservation.  So a client that reconnects asking for the events after the last ``seq``
it has gets each event at most once and never skips one the new supervisor recorded.
Numbers jump at a restart; a gap in them is not a lost event.  The history itself lives
in memory: what a killed supervisor recorded but had not sent is gone, and
:meth:`EventLog.since` says so (a supervisor that ends cleanly writes its last number, so
the next one can tell exactly how many events a client missed).
"""

from __future__ import annotations

import asyncio
import functools
import json
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from corral import atomic

from .clock import SYSTEM, Clock

Event = dict[str, Any]

HISTORY = 2000
SUBSCRIBER_QUEUE = 1000
SEQ_BLOCK = 100_000


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


class Resumed(NamedTuple):
    """What a client resuming after some ``seq`` gets: the events after it that are
    kept, how many after it are not (0; a number; ``None`` when that cannot be known),
    and why, in words."""

    events: list[Event]
    lost: int | None
    reason: str


def _read_seq_file(path: Path | None) -> dict[str, int]:
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, int) and v >= 0}


class EventLog:
    """Records events with a sequence number and fans them out to subscribers.

    Args:
        history: how many events to keep.
        seq_file: where the numbers handed out are reserved (``None``: numbers start at 1
            and are not kept across restarts).
    """

    def __init__(self, history: int = HISTORY, seq_file: Path | None = None,
                 clock: Clock = SYSTEM) -> None:
        self._clock = clock
        self._events: deque[Event] = deque(maxlen=history)
        self._seq_file = seq_file
        previous = _read_seq_file(seq_file)
        self._start = max(previous.get("next", 0), previous.get("last", 0))
        self._seq = self._limit = self._start
        # The previous supervisor's numbers: its first, and its last if it ended cleanly.
        self._previous = (previous.get("first"), previous.get("last"))
        self._unwritable = False
        self._subscribers: set[asyncio.Queue[Event | None]] = set()
        # Called with every event as it is recorded (in the emitter's call: keep them cheap).
        self.observers: list[Callable[[Event], None]] = []

    @property
    def last_seq(self) -> int:
        """The last number handed out (before the first event: what came before us)."""
        return self._seq

    @property
    def count(self) -> int:
        """Events recorded since this event log (this supervisor) started."""
        return self._seq - self._start

    def _write(self, **fields: int) -> None:
        if self._seq_file is None:
            return
        # Not durable: the numbers must outlive a killed process (the page cache does),
        # not a power loss, which loses the history anyway.
        try:
            atomic.write(self._seq_file,
                         (json.dumps({"first": self._start + 1, **fields}) + "\n").encode(),
                         0o644, durable=False, make_dirs=False)
        except OSError as exc:
            if not self._unwritable:
                print(f"corral-supervisor: cannot write {self._seq_file}: {exc}; event "
                      "numbers may repeat after a restart", file=sys.stderr)
            self._unwritable = True

    def close(self) -> None:
        """Write down the last number: the next supervisor then knows exactly how many
        events a client that saw up to some ``seq`` has missed."""
        self._write(next=max(self._limit, self._seq), last=self._seq)

    def emit(self, service: str, kind: str, reason: str, *, instance: int | None = None,
             **fields: Any) -> Event:
        """Record one event; ``fields`` may hold from, to, pid, exit_code, signal, delay_s."""
        if self._seq >= self._limit:
            self._limit = self._seq + SEQ_BLOCK
            self._write(next=self._limit)
        self._seq += 1
        event: Event = {"seq": self._seq, "at": rfc3339(self._clock.time()), "service": service,
                        "instance": instance, "kind": kind, "from": None, "to": None,
                        "reason": reason, "pid": None, "exit_code": None, "signal": None,
                        "delay_s": None}
        for key, value in fields.items():
            event["from" if key == "from_" else key] = value
        self._events.append(event)
        for observe in self.observers:
            observe(event)
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

    def since(self, after: int, service: str | None = None) -> Resumed:
        """The kept events with ``seq`` above ``after`` (for ``service`` only, if given),
        oldest first, and how many events after ``after`` are not among them (see
        :class:`Resumed`)."""
        def only(events: list[Event]) -> list[Event]:
            return events if service is None else [e for e in events
                                                   if e["service"] == service]
        if after > self._seq:
            return Resumed(only(list(self._events)), None,
                           f"this supervisor never numbered an event {after}: its numbers "
                           "started over (the state directory was restored or replaced?)")
        kept = [e for e in self._events if e["seq"] > after]
        evicted = kept[0]["seq"] - max(after, self._start) - 1 if kept else 0
        dropped = (f"dropped from the supervisor's history (it keeps the last "
                   f"{self._events.maxlen})")
        if after >= self._start:
            return Resumed(only(kept), evicted, dropped)
        first, last = self._previous
        if first is None or last is None or after < first - 1:
            return Resumed(only(kept), None,
                           "the supervisor was killed: the events it recorded after this "
                           "stream was cut (if any) are lost")
        missed = max(0, last - after)
        reason = ("recorded by the previous supervisor after this stream was cut"
                  if missed else dropped)
        return Resumed(only(kept), missed + evicted, reason)

    def subscribe(self) -> asyncio.Queue[Event | None]:
        queue: asyncio.Queue[Event | None] = asyncio.Queue(SUBSCRIBER_QUEUE)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Event | None]) -> None:
        self._subscribers.discard(queue)
