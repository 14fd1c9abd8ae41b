"""The clock the supervisor reads: wall time for what it records and shows, monotonic
time for what it measures.  The composition root hands one in; tests may hand in a fake."""

from __future__ import annotations

import time


class Clock:
    """The system's clocks."""

    def time(self) -> float:
        """Seconds since the epoch (wall clock): timestamps that are recorded or shown."""
        return time.time()

    def monotonic(self) -> float:
        """Seconds on a clock that never jumps: deadlines and durations."""
        return time.monotonic()


SYSTEM = Clock()
