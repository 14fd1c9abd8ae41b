"""Tests of the instance state machine (corral.supervisor.machine), one case per table cell.

The expectation table below is written out by hand, not derived from ``machine.TABLE``, so
that any change to the lifecycle shows up as a failing cell here.
"""

from __future__ import annotations

import itertools

import pytest

from corral.states import ServiceState as S
from corral.supervisor.machine import Action, Trigger, step

A, E = Action, Trigger  # short names keep the table below readable

# Every (state, event) pair that changes something.  Any pair not listed must leave the
# state as it is and ask for no action.
EXPECTED: dict[tuple[S, E], tuple[S, tuple[A, ...]]] = {
    # down: only a start does anything
    (S.DOWN, E.START): (S.STARTING, (A.SPAWN,)),
    # starting
    (S.STARTING, E.STOP): (S.STOPPING, (A.TERMINATE,)),
    (S.STARTING, E.READY): (S.UP, ()),
    (S.STARTING, E.EXIT_RESTART): (S.STARTING, (A.SPAWN,)),
    (S.STARTING, E.EXIT_BACKOFF): (S.BACKOFF, (A.SCHEDULE,)),
    (S.STARTING, E.EXIT_DOWN): (S.DOWN, ()),
    (S.STARTING, E.EXIT_GIVE_UP): (S.FAILED, ()),
    (S.STARTING, E.EXIT_WAIT): (S.DOWN, ()),
    (S.STARTING, E.RESTART): (S.STOPPING, (A.TERMINATE,)),
    # up
    (S.UP, E.STOP): (S.STOPPING, (A.TERMINATE,)),
    (S.UP, E.UNHEALTHY): (S.UNHEALTHY, ()),
    (S.UP, E.EXIT_RESTART): (S.STARTING, (A.SPAWN,)),
    (S.UP, E.EXIT_BACKOFF): (S.BACKOFF, (A.SCHEDULE,)),
    (S.UP, E.EXIT_DOWN): (S.DOWN, ()),
    (S.UP, E.EXIT_GIVE_UP): (S.FAILED, ()),
    (S.UP, E.EXIT_WAIT): (S.DOWN, ()),
    (S.UP, E.RESTART): (S.STOPPING, (A.TERMINATE,)),
    # unhealthy
    (S.UNHEALTHY, E.STOP): (S.STOPPING, (A.TERMINATE,)),
    (S.UNHEALTHY, E.HEALTHY): (S.UP, ()),
    (S.UNHEALTHY, E.EXIT_RESTART): (S.STARTING, (A.SPAWN,)),
    (S.UNHEALTHY, E.EXIT_BACKOFF): (S.BACKOFF, (A.SCHEDULE,)),
    (S.UNHEALTHY, E.EXIT_DOWN): (S.DOWN, ()),
    (S.UNHEALTHY, E.EXIT_GIVE_UP): (S.FAILED, ()),
    (S.UNHEALTHY, E.EXIT_WAIT): (S.DOWN, ()),
    (S.UNHEALTHY, E.RESTART): (S.STOPPING, (A.TERMINATE,)),
    # stopping: only the end of the Terminate moves it on; after a RESTART the policy's
    # verdict comes with it
    (S.STOPPING, E.STOPPED): (S.DOWN, ()),
    (S.STOPPING, E.STOPPED_RESTART): (S.STARTING, (A.SPAWN,)),
    (S.STOPPING, E.STOPPED_BACKOFF): (S.BACKOFF, (A.SCHEDULE,)),
    (S.STOPPING, E.STOPPED_GIVE_UP): (S.FAILED, ()),
    # backoff
    (S.BACKOFF, E.TIMER): (S.STARTING, (A.SPAWN,)),
    (S.BACKOFF, E.STOP): (S.DOWN, (A.CANCEL,)),
    (S.BACKOFF, E.START): (S.STARTING, (A.CANCEL, A.SPAWN)),
    (S.BACKOFF, E.WAIT): (S.DOWN, (A.CANCEL,)),
    # failed: stays down until a user starts (or stops) it
    (S.FAILED, E.START): (S.STARTING, (A.SPAWN,)),
    (S.FAILED, E.STOP): (S.DOWN, ()),
}

ALL_PAIRS = list(itertools.product(S, E))


@pytest.mark.parametrize(("state", "event"), ALL_PAIRS, ids=[f"{s}-{e}" for s, e in ALL_PAIRS])
def test_every_cell(state: S, event: E) -> None:
    """Each (state, event) pair leads to the documented state and actions, or changes nothing."""
    assert step(state, event) == EXPECTED.get((state, event), (state, ()))


def _reachable(start: S) -> set[S]:
    """Every state some sequence of events leads to from ``start`` (``start`` included)."""
    seen, todo = {start}, [start]
    while todo:
        state = todo.pop()
        for event in E:
            after, _ = step(state, event)
            if after not in seen:
                seen.add(after)
                todo.append(after)
    return seen


def test_every_state_is_reachable_and_none_is_a_trap() -> None:
    """From down every state can be reached, and from every state an instance can get back
    down: no state is dead code, and none holds an instance for ever."""
    assert _reachable(S.DOWN) == set(S)
    for state in S:
        assert S.DOWN in _reachable(state), state


@pytest.mark.parametrize("state", [S.STARTING, S.UP, S.UNHEALTHY])
def test_late_events_after_a_stop_are_ignored(state: S) -> None:
    """Once stopping, a late ready, health or exit event neither restarts nor moves it."""
    stopping, actions = step(state, E.STOP)
    assert (stopping, actions) == (S.STOPPING, (A.TERMINATE,))
    for late in (E.READY, E.HEALTHY, E.UNHEALTHY, E.EXIT_RESTART, E.EXIT_BACKOFF, E.TIMER,
                 E.START, E.EXIT_WAIT, E.RESTART, E.WAIT):
        assert step(stopping, late) == (S.STOPPING, ())
    assert step(stopping, E.STOPPED) == (S.DOWN, ())


def test_crash_loop_walk() -> None:
    """A start, a crash with backoff, the timer, readiness and a stop walk the expected path."""
    state = S.DOWN
    trail = []
    for event in (E.START, E.SPAWNED, E.EXIT_BACKOFF, E.TIMER, E.READY, E.UNHEALTHY,
                  E.HEALTHY, E.STOP, E.STOPPED):
        state, actions = step(state, event)
        trail.append((state, actions))
    assert trail == [
        (S.STARTING, (A.SPAWN,)),
        (S.STARTING, ()),
        (S.BACKOFF, (A.SCHEDULE,)),
        (S.STARTING, (A.SPAWN,)),
        (S.UP, ()),
        (S.UNHEALTHY, ()),
        (S.UP, ()),
        (S.STOPPING, (A.TERMINATE,)),
        (S.DOWN, ()),
    ]


def test_restart_for_a_fault_walk() -> None:
    """An unhealthy instance is stopped, then backs off as the policy says, and a restart
    that is due while a dependency is not ready waits down."""
    state = S.UP
    trail = []
    for event in (E.UNHEALTHY, E.RESTART, E.STOPPED_BACKOFF, E.WAIT, E.START, E.READY,
                  E.EXIT_WAIT):
        state, actions = step(state, event)
        trail.append((state, actions))
    assert trail == [
        (S.UNHEALTHY, ()),
        (S.STOPPING, (A.TERMINATE,)),
        (S.BACKOFF, (A.SCHEDULE,)),
        (S.DOWN, (A.CANCEL,)),
        (S.STARTING, (A.SPAWN,)),
        (S.UP, ()),
        (S.DOWN, ()),
    ]
