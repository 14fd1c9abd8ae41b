"""Tests of the instance state machine (corral.supervisor.machine), one case per table cell.

The expectation table below is written out by hand, not derived from ``machine.TABLE``, so
that any change to the lifecycle shows up as a failing cell here.
"""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import pytest

import corral
from corral.states import ServiceState as S
from corral.supervisor.machine import Action, Trigger, step

A, E = Action, Trigger  # short names keep the table below readable

# Every (state, event) pair that changes something.  Any pair not listed must leave the
# state as it is and ask for no action.  Actions are in the order they run: flags, the
# launcher and timers, then bookkeeping.
ENDED = (A.ANNOUNCE, A.RELEASE, A.CLOSE_NOTIFY, A.RECONCILE)  # into down or failed
STOP_ENDED = (A.ANNOUNCE, A.POST_STOP, A.RELEASE, A.CLOSE_NOTIFY, A.RECONCILE)
EXPECTED: dict[tuple[S, E], tuple[S, tuple[A, ...]]] = {
    # down: a start, or what a new supervisor learns from the launcher
    (S.DOWN, E.START): (S.STARTING, (A.FRESH_START, A.SPAWN, A.ANNOUNCE)),
    (S.DOWN, E.ADOPTED): (S.UP, ()),
    (S.DOWN, E.AWAY_DOWN): (S.DOWN, (A.KEEP_DOWN,)),
    (S.DOWN, E.AWAY_GIVE_UP): (S.FAILED, (A.KEEP_DOWN,)),
    (S.DOWN, E.AWAY_BACKOFF): (S.BACKOFF, (A.SCHEDULE, A.ANNOUNCE)),
    # starting
    (S.STARTING, E.STOP): (S.STOPPING, (A.TERMINATE, A.ANNOUNCE)),
    (S.STARTING, E.READY): (S.UP, (A.ANNOUNCE, A.POST_RUN, A.RECONCILE_DEPENDENTS)),
    (S.STARTING, E.EXIT_RESTART): (S.STARTING, (A.SPAWN,)),
    (S.STARTING, E.EXIT_BACKOFF): (S.BACKOFF, (A.SCHEDULE, A.ANNOUNCE)),
    (S.STARTING, E.EXIT_DOWN): (S.DOWN, (A.KEEP_DOWN, *ENDED)),
    (S.STARTING, E.EXIT_GIVE_UP): (S.FAILED, (A.KEEP_DOWN, *ENDED)),
    (S.STARTING, E.EXIT_WAIT): (S.DOWN, (A.HOLD, *ENDED)),
    (S.STARTING, E.EXIT_RETIRED): (S.DOWN, ENDED),
    (S.STARTING, E.RESTART): (S.STOPPING, (A.TERMINATE, A.ANNOUNCE)),
    # up
    (S.UP, E.STOP): (S.STOPPING, (A.TERMINATE, A.ANNOUNCE)),
    (S.UP, E.UNHEALTHY): (S.UNHEALTHY, (A.ANNOUNCE,)),
    (S.UP, E.EXIT_RESTART): (S.STARTING, (A.SPAWN, A.ANNOUNCE)),
    (S.UP, E.EXIT_BACKOFF): (S.BACKOFF, (A.SCHEDULE, A.ANNOUNCE)),
    (S.UP, E.EXIT_DOWN): (S.DOWN, (A.KEEP_DOWN, *ENDED)),
    (S.UP, E.EXIT_GIVE_UP): (S.FAILED, (A.KEEP_DOWN, *ENDED)),
    (S.UP, E.EXIT_WAIT): (S.DOWN, (A.HOLD, *ENDED)),
    (S.UP, E.EXIT_RETIRED): (S.DOWN, ENDED),
    (S.UP, E.RESTART): (S.STOPPING, (A.TERMINATE, A.ANNOUNCE)),
    # unhealthy
    (S.UNHEALTHY, E.STOP): (S.STOPPING, (A.TERMINATE, A.ANNOUNCE)),
    (S.UNHEALTHY, E.HEALTHY): (S.UP, (A.ANNOUNCE, A.RECONCILE_DEPENDENTS)),
    (S.UNHEALTHY, E.EXIT_RESTART): (S.STARTING, (A.SPAWN, A.ANNOUNCE)),
    (S.UNHEALTHY, E.EXIT_BACKOFF): (S.BACKOFF, (A.SCHEDULE, A.ANNOUNCE)),
    (S.UNHEALTHY, E.EXIT_DOWN): (S.DOWN, (A.KEEP_DOWN, *ENDED)),
    (S.UNHEALTHY, E.EXIT_GIVE_UP): (S.FAILED, (A.KEEP_DOWN, *ENDED)),
    (S.UNHEALTHY, E.EXIT_WAIT): (S.DOWN, (A.HOLD, *ENDED)),
    (S.UNHEALTHY, E.EXIT_RETIRED): (S.DOWN, ENDED),
    (S.UNHEALTHY, E.RESTART): (S.STOPPING, (A.TERMINATE, A.ANNOUNCE)),
    # stopping: only the end of the Terminate moves it on; after a RESTART the policy's
    # verdict comes with it
    (S.STOPPING, E.STOPPED): (S.DOWN, STOP_ENDED),
    (S.STOPPING, E.STOPPED_RESTART): (S.STARTING, (A.SPAWN, A.ANNOUNCE, A.POST_STOP,
                                                    A.RELEASE)),
    (S.STOPPING, E.STOPPED_BACKOFF): (S.BACKOFF, (A.SCHEDULE, A.ANNOUNCE, A.POST_STOP,
                                                   A.RELEASE)),
    (S.STOPPING, E.STOPPED_GIVE_UP): (S.FAILED, (A.KEEP_DOWN, *STOP_ENDED)),
    (S.STOPPING, E.STOPPED_DOWN): (S.DOWN, (A.KEEP_DOWN, *STOP_ENDED)),
    (S.STOPPING, E.STOPPED_WAIT): (S.DOWN, (A.HOLD, *STOP_ENDED)),
    # backoff
    (S.BACKOFF, E.TIMER): (S.STARTING, (A.SPAWN, A.ANNOUNCE)),
    (S.BACKOFF, E.STOP): (S.DOWN, (A.CANCEL, *ENDED)),
    (S.BACKOFF, E.START): (S.STARTING, (A.FRESH_START, A.CANCEL, A.SPAWN, A.ANNOUNCE)),
    (S.BACKOFF, E.WAIT): (S.DOWN, (A.HOLD, A.CANCEL, *ENDED)),
    # failed: stays down until a user starts (or stops) it
    (S.FAILED, E.START): (S.STARTING, (A.FRESH_START, A.SPAWN, A.ANNOUNCE)),
    (S.FAILED, E.STOP): (S.DOWN, ENDED),
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


def _launcher(actions: tuple[A, ...]) -> tuple[A, ...]:
    """The actions that reach the launcher or the backoff timer."""
    return tuple(a for a in actions if a in (A.SPAWN, A.TERMINATE, A.SCHEDULE, A.CANCEL))


@pytest.mark.parametrize("state", [S.STARTING, S.UP, S.UNHEALTHY])
def test_late_events_after_a_stop_are_ignored(state: S) -> None:
    """Once stopping, a late ready, health or exit event neither restarts nor moves it."""
    stopping, actions = step(state, E.STOP)
    assert (stopping, actions) == (S.STOPPING, (A.TERMINATE, A.ANNOUNCE))
    for late in (E.READY, E.HEALTHY, E.UNHEALTHY, E.EXIT_RESTART, E.EXIT_BACKOFF, E.TIMER,
                 E.START, E.EXIT_WAIT, E.EXIT_RETIRED, E.RESTART, E.WAIT, E.ADOPTED,
                 E.AWAY_DOWN, E.AWAY_GIVE_UP):
        assert step(stopping, late) == (S.STOPPING, ())
    assert step(stopping, E.STOPPED) == (S.DOWN, STOP_ENDED)


def test_crash_loop_walk() -> None:
    """A start, a crash with backoff, the timer, readiness and a stop walk the expected path."""
    state = S.DOWN
    trail = []
    for event in (E.START, E.SPAWNED, E.EXIT_BACKOFF, E.TIMER, E.READY, E.UNHEALTHY,
                  E.HEALTHY, E.STOP, E.STOPPED):
        state, actions = step(state, event)
        trail.append((state, _launcher(actions)))
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
        trail.append((state, _launcher(actions)))
    assert trail == [
        (S.UNHEALTHY, ()),
        (S.STOPPING, (A.TERMINATE,)),
        (S.BACKOFF, (A.SCHEDULE,)),
        (S.DOWN, (A.CANCEL,)),
        (S.STARTING, (A.SPAWN,)),
        (S.UP, ()),
        (S.DOWN, ()),
    ]


def test_a_new_supervisor_rebuilds_without_a_word() -> None:
    """An adopted child is up as it was, and a replayed exit the policy leaves down is down
    (or failed) and kept so: none of it is announced as a change, runs a hook or
    reconciles (the supervisor reconciles once, when attached)."""
    assert step(S.DOWN, E.ADOPTED) == (S.UP, ())
    assert step(S.DOWN, E.AWAY_DOWN) == (S.DOWN, (A.KEEP_DOWN,))
    assert step(S.DOWN, E.AWAY_GIVE_UP) == (S.FAILED, (A.KEEP_DOWN,))
    for state in set(S) - {S.DOWN}:
        for event in (E.ADOPTED, E.AWAY_DOWN, E.AWAY_GIVE_UP):
            assert step(state, event) == (state, ()), (state, event)


_QUIET = {E.ADOPTED, E.AWAY_DOWN, E.AWAY_GIVE_UP}


@pytest.mark.parametrize(("state", "event"), list(EXPECTED), ids=[f"{s}-{e}" for s, e in EXPECTED])
def test_bookkeeping_follows_the_change(state: S, event: E) -> None:
    """Rules every cell keeps: a change of state is announced (but for what a new
    supervisor learns); the end of a stop releases its waiters and runs post_stop; an
    instance that comes to rest closes its notify socket and reconciles; actions come
    in the order Action declares them."""
    after, actions = step(state, event)
    order = list(A)
    assert list(actions) == sorted(actions, key=order.index)
    assert (A.ANNOUNCE in actions) == (after is not state and event not in _QUIET)
    ends_a_stop = state is S.STOPPING and after is not state
    assert (A.POST_STOP in actions) == ends_a_stop
    comes_to_rest = after in (S.DOWN, S.FAILED) and after is not state \
        and event not in _QUIET
    assert (A.RELEASE in actions) == (ends_a_stop or comes_to_rest)
    assert (A.CLOSE_NOTIFY in actions) == comes_to_rest
    assert (A.RECONCILE in actions) == comes_to_rest
    assert (A.POST_RUN in actions) == (state is S.STARTING and after is S.UP)


def _state_writes(tree: ast.AST) -> list[tuple[int, str]]:
    """Where ``tree`` assigns ``<something>.state`` (plain, augmented, annotated, or
    ``setattr``), or builds an ``Instance`` with a ``state=``; each with the enclosing
    function's name."""
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST, function: str) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            function = node.name
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = [t for target in node.targets
                       for t in (target.elts if isinstance(target, ast.Tuple) else [target])]
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        if any(isinstance(t, ast.Attribute) and t.attr == "state" for t in targets):
            found.append((node.lineno, function))
        if isinstance(node, ast.Call):
            name = node.func.id if isinstance(node.func, ast.Name) else \
                node.func.attr if isinstance(node.func, ast.Attribute) else ""
            if name == "setattr" and len(node.args) > 1 and \
                    isinstance(node.args[1], ast.Constant) and node.args[1].value == "state":
                found.append((node.lineno, function))
            if name in ("Instance", "replace") and any(k.arg == "state" for k in node.keywords):
                found.append((node.lineno, function))
        for child in ast.iter_child_nodes(node):
            visit(child, function)

    visit(tree, "")
    return found


def test_only_feed_assigns_an_instance_state() -> None:
    """The machine owns the lifecycle: in the supervisor and the API that drives it, the
    one statement that assigns an instance's state is in ``Supervisor.feed``, which sets
    what ``step`` returned."""
    package = Path(corral.__file__).parent
    writes = {(str(path.relative_to(package)), line, function)
              for folder in ("supervisor", "api")
              for path in sorted((package / folder).rglob("*.py"))
              for line, function in _state_writes(ast.parse(path.read_text()))}
    assert {(path, function) for path, _, function in writes} == {
        ("supervisor/loop.py", "feed")}, writes
    assert len(writes) == 1, writes


def test_the_state_writes_check_sees_every_form() -> None:
    """The check above finds each way of writing a state."""
    source = """
def a(inst):
    inst.state = 1
def b(inst):
    inst.state, x = 1, 2
def c(inst):
    setattr(inst, "state", 1)
def d():
    Instance(service="web", index=0, state=1)
def e(inst):
    inst.reason = "not a state"
"""
    assert [f for _, f in _state_writes(ast.parse(source))] == ["a", "b", "c", "d"]
