"""The launcher's loop turn: a signal is handled before the file descriptors that became
ready with it (a dying service's SIGCHLD before its pipes' end of file)."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator

from corral.launcher.reactor import Reactor


@contextlib.contextmanager
def ready_pipe(reactor: Reactor, callback: Callable[[int], None]) -> Iterator[None]:
    """A pipe with something to read, watched by ``reactor`` with ``callback``."""
    read_end, write_end = os.pipe()
    try:
        reactor.sel.register(read_end, 1, callback)
        os.write(write_end, b"x")
        yield
    finally:
        reactor.sel.unregister(read_end)
        os.close(read_end)
        os.close(write_end)


def test_a_signal_is_handled_before_the_pipes_ready_in_the_same_turn() -> None:
    """A dying service's pipes reach their end of file with its SIGCHLD: the exit (and
    the restart) must not wait while they are read."""
    reactor = Reactor()
    seen: list[str] = []
    with ready_pipe(reactor, lambda mask: seen.append("pipe")):
        reactor.signals.append(signal.SIGCHLD)
        reactor.turn(lambda signum: seen.append(signal.Signals(signum).name))
    assert seen == ["SIGCHLD", "pipe"]


def test_a_signal_that_comes_during_the_turn_is_handled_in_it() -> None:
    reactor = Reactor()
    seen: list[str] = []

    def on_pipe(mask: int) -> None:
        seen.append("pipe")
        reactor.signals.append(signal.SIGCHLD)
    with ready_pipe(reactor, on_pipe):
        reactor.turn(lambda signum: seen.append(signal.Signals(signum).name))
    assert seen == ["pipe", "SIGCHLD"]
