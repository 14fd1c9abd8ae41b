"""The launcher's loop turn: a signal is handled before the file descriptors that became
ready with it (a dying service's SIGCHLD before its pipes' end of file)."""

from __future__ import annotations

import os
import signal

from corral.launcher.reactor import Reactor


def test_a_signal_is_handled_before_the_pipes_ready_in_the_same_turn() -> None:
    """A dying service's pipes reach their end of file with its SIGCHLD: the exit (and
    the restart) must not wait while they are read."""
    reactor = Reactor()
    seen: list[str] = []
    read_end, write_end = os.pipe()
    try:
        reactor.sel.register(read_end, 1, lambda mask: seen.append("pipe"))
        os.write(write_end, b"x")
        reactor.signals.append(signal.SIGCHLD)
        reactor.turn(lambda signum: seen.append(signal.Signals(signum).name))
    finally:
        reactor.sel.unregister(read_end)
        os.close(read_end)
        os.close(write_end)
    assert seen == ["SIGCHLD", "pipe"]


def test_a_signal_that_comes_during_the_turn_is_handled_in_it() -> None:
    reactor = Reactor()
    seen: list[str] = []
    read_end, write_end = os.pipe()

    def on_pipe(mask: int) -> None:
        seen.append("pipe")
        reactor.signals.append(signal.SIGCHLD)
    try:
        reactor.sel.register(read_end, 1, on_pipe)
        os.write(write_end, b"x")
        reactor.turn(lambda signum: seen.append(signal.Signals(signum).name))
    finally:
        reactor.sel.unregister(read_end)
        os.close(read_end)
        os.close(write_end)
    assert seen == ["pipe", "SIGCHLD"]
