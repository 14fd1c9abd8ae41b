"""Output the launcher could not write, as it reports it (``OutputDropped``).

The launcher never blocks a service on its output: when a log file cannot be written (a
full disk) or its own stdout is not read, it drops and counts.  Each report becomes an
event, and the totals are what ``/metrics`` shows.  The launcher's figures count since
it started and it repeats them to every new supervisor, so they survive a supervisor
restart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .events import EventLog, rfc3339

Message = dict[str, Any]


class OutputDrops:
    """Totals per log file (by service) and per launcher stream, and the events."""

    def __init__(self, events: EventLog) -> None:
        self._events = events
        #: service (``.launcher`` for corral's own log) -> (bytes, records) dropped
        self.logs: dict[str, tuple[int, int]] = {}
        #: ``stdout`` / ``stderr`` of the launcher -> (bytes, records) dropped
        self.streams: dict[str, tuple[int, int]] = {}
        self._gone: set[str] = set()  # streams whose end was told in an event

    def on_message(self, msg: Message) -> None:
        """Handle one ``OutputDropped`` frame (malformed ones are ignored)."""
        totals = (_count(msg.get("total_bytes")), _count(msg.get("total_records")))
        size, records = _count(msg.get("bytes")), _count(msg.get("records"))
        error = str(msg.get("error") or "")
        replay = bool(msg.get("replay"))
        sink = msg.get("sink")
        if sink == "log":
            path = msg.get("path")
            if not isinstance(path, str):
                return
            name = Path(path).name.removesuffix(".log")
            self.logs[name] = totals
            if msg.get("dropping"):
                self._events.emit(name, "output", f"cannot write {Path(path).name}: {error}; "
                                  "dropping its output until it works again")
            elif not replay:
                since, until = _time(msg.get("since")), _time(msg.get("until"))
                self._events.emit(name, "output", f"writing {Path(path).name} again; dropped "
                                  f"{size} bytes ({records} records) of output from {since} "
                                  f"to {until}: {error}")
        elif sink in ("stdout", "stderr"):
            stream = str(sink)
            self.streams[stream] = totals
            if msg.get("gone"):
                if stream not in self._gone:
                    self._gone.add(stream)
                    self._events.emit("", "output", f"corral's {stream} is gone ({error}): "
                                      "services' records go to their log files only; "
                                      f"{totals[1]} records dropped on it")
            elif not replay:
                self._events.emit("", "output", f"dropped {records} records ({size} bytes) "
                                  f"on corral's {stream}, which is not read fast enough; "
                                  f"{totals[1]} records in all")


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _time(value: Any) -> str:
    return rfc3339(float(value)) if isinstance(value, int | float) else "?"
