"""The launcher's event loop: one selector, timers, and signals that only record.  STDLIB ONLY.

A :class:`Reactor` waits on one ``selectors`` selector.  Each :meth:`Reactor.turn` runs
the signals that arrived, then the callbacks of the ready file descriptors, then the
timers that are due, then the signals that arrived meanwhile, in that order (a child's
SIGCHLD first: see :meth:`Reactor.turn`).  Signal handlers only append the signal number to
a list and wake the selector through a self-pipe (``signal.set_wakeup_fd``); the turn
dispatches them.  Every callback runs under :func:`guard`: a bug in one is printed,
never fatal.

Example::

    reactor = Reactor()
    reactor.install_signals([signal.SIGCHLD, signal.SIGTERM])
    reactor.call_later(0.5, lambda: print("half a second later"))
    while running:
        reactor.turn(on_signal)
"""

from __future__ import annotations

import heapq
import itertools
import os
import selectors
import signal
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any


def guard(callback: Callable[..., None], *args: Any) -> None:
    """Run a loop callback; a bug in one must never take the launcher down."""
    try:
        callback(*args)
    except Exception as exc:
        import traceback
        print(f"corral-launcher: internal error (please report): {exc!r}", file=sys.stderr)
        traceback.print_exc()


class Reactor:
    """The selector, the timers and the recorded signals of one launcher.

    ``sel`` is the selector: register a file descriptor with a callback taking the event
    mask as its ``data``.  ``signals`` holds the signals received and not yet dispatched.
    """

    def __init__(self) -> None:
        self.sel = selectors.DefaultSelector()
        self.timers: list[tuple[float, int, Callable[[], None]]] = []
        self._timer_ids = itertools.count()
        self.signals: list[int] = []
        self._wake_r = -1

    def install_signals(self, signums: Iterable[int]) -> None:
        """Record ``signums`` for :meth:`turn` to dispatch, and ignore SIGPIPE (a reader
        that went away is an error return, never a death)."""
        rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._wake_r = rfd
        signal.set_wakeup_fd(wfd, warn_on_full_buffer=False)
        for sig in signums:
            signal.signal(sig, self._record_signal)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        self.sel.register(rfd, selectors.EVENT_READ, self._drain_wakeup)

    def _record_signal(self, signum: int, frame: object) -> None:
        self.signals.append(signum)  # only record: the loop dispatches

    def _drain_wakeup(self, mask: int) -> None:
        # One read: the signals themselves are recorded by the handlers; a fuller pipe
        # (4,096 signals in one turn) is still readable, and read on the next turn.
        try:
            os.read(self._wake_r, 4096)
        except BlockingIOError:
            pass

    def call_later(self, delay: float, callback: Callable[[], None]) -> None:
        """Run ``callback`` from the loop ``delay`` seconds from now (0: next turn)."""
        heapq.heappush(self.timers, (time.monotonic() + delay, next(self._timer_ids), callback))

    def turn(self, on_signal: Callable[[int], None]) -> None:
        """Wait for the next event or timer, then run what is ready: ``on_signal(signum)``
        for each signal received, file descriptor callbacks, due timers, and the signals
        received meanwhile."""
        timeout = None
        if self.timers:
            timeout = max(0.0, self.timers[0][0] - time.monotonic())
        ready = self.sel.select(timeout)
        # Signals first: a child's exit (SIGCHLD) comes with the end of file of its
        # pipes, and its restart must not wait while those are read and closed.
        self._dispatch_signals(on_signal)
        for key, mask in ready:
            guard(key.data, mask)
        self._run_timers()
        self._dispatch_signals(on_signal)  # those that came meanwhile

    def _dispatch_signals(self, on_signal: Callable[[int], None]) -> None:
        while self.signals:
            signum = self.signals.pop(0)
            guard(on_signal, signum)

    def _run_timers(self) -> None:
        now = time.monotonic()
        while self.timers and self.timers[0][0] <= now:
            _, _, callback = heapq.heappop(self.timers)
            guard(callback)
