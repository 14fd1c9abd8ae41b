"""Tests of reconciliation (corral.supervisor.reconcile): wanted versus observed instances."""

from __future__ import annotations

import pytest

from corral.states import ServiceState as S
from corral.supervisor.reconcile import Move, Seen, Verb, Want, plan


def start(service: str, index: int) -> Move:
    return Move(Verb.START, service, index)


def stop(service: str, index: int) -> Move:
    return Move(Verb.STOP, service, index)


def drop(service: str, index: int) -> Move:
    return Move(Verb.DROP, service, index)


# --------------------------------------------------------------------------- starting
def test_nothing_wanted_nothing_seen() -> None:
    """With no services there is nothing to do."""
    assert plan({}, {}) == []


def test_missing_instances_are_started_in_order() -> None:
    """A loaded service with no instances yet gets every instance started, in index order."""
    assert plan({"web": Want(instances=3, up=True)}, {}) == [
        start("web", 0), start("web", 1), start("web", 2)]


def test_only_the_missing_instances_are_started() -> None:
    """Instances that already run are left alone; only the missing ones start."""
    observed = {("web", 0): Seen(S.UP), ("web", 2): Seen(S.STARTING)}
    assert plan({"web": Want(instances=3, up=True)}, observed) == [start("web", 1)]


def test_down_instance_of_a_running_service_is_started() -> None:
    """An instance that is down (not on purpose) while its service should run is started."""
    assert plan({"web": Want(1, up=True)}, {("web", 0): Seen(S.DOWN)}) == [start("web", 0)]


def test_scaling_up_starts_the_new_instances() -> None:
    """Raising the instance count starts only the added instances."""
    observed = {("web", 0): Seen(S.UP), ("web", 1): Seen(S.UP)}
    assert plan({"web": Want(4, up=True)}, observed) == [start("web", 2), start("web", 3)]


def test_zero_instances_wanted_starts_nothing() -> None:
    """A service scaled to zero starts nothing."""
    assert plan({"web": Want(0, up=True)}, {}) == []


def test_a_stopped_service_with_no_instances_starts_nothing() -> None:
    """A loaded but stopped service is not started."""
    assert plan({"web": Want(2, up=False)}, {}) == []


# --------------------------------------------------------------------------- converged
@pytest.mark.parametrize("state", [S.STARTING, S.UP, S.UNHEALTHY, S.BACKOFF, S.STOPPING])
def test_converged_service_needs_nothing(state: S) -> None:
    """When every wanted instance exists and is not down, there is nothing to do."""
    observed = {("web", 0): Seen(state), ("web", 1): Seen(S.UP)}
    assert plan({"web": Want(2, up=True)}, observed) == []


def test_stopped_service_already_down_needs_nothing() -> None:
    """A stopped service whose instances are all down needs nothing."""
    observed = {("web", 0): Seen(S.DOWN), ("web", 1): Seen(S.DOWN, stays_down=True)}
    assert plan({"web": Want(2, up=False)}, observed) == []


def test_plan_converges_once_its_steps_are_done() -> None:
    """Planning again after the steps are carried out returns nothing."""
    wanted = {"web": Want(2, up=True), "db": Want(1, up=False), "cache": Want(1, up=True)}
    observed = {("db", 0): Seen(S.UP), ("old", 0): Seen(S.UP), ("web", 5): Seen(S.DOWN)}
    steps = plan(wanted, observed)
    after = dict(observed)
    for item in steps:
        key = (item.service, item.index)
        if item.verb is Verb.START:
            after[key] = Seen(S.STARTING)
        elif item.verb is Verb.STOP:
            after[key] = Seen(S.DOWN)
        else:
            del after[key]
    assert plan(wanted, after) == []


# ----------------------------------------------------------------------------- stopping
@pytest.mark.parametrize("state", [S.STARTING, S.UP, S.UNHEALTHY, S.BACKOFF, S.FAILED])
def test_instances_of_a_stopped_service_are_stopped(state: S) -> None:
    """When a service is stopped, its live, waiting or failed instances are stopped."""
    assert plan({"web": Want(1, up=False)}, {("web", 0): Seen(state)}) == [stop("web", 0)]


def test_stopping_instances_of_a_stopped_service_are_left_alone() -> None:
    """An instance already stopping is not asked to stop again."""
    assert plan({"web": Want(1, up=False)}, {("web", 0): Seen(S.STOPPING)}) == []


def test_all_instances_of_a_stopped_service_are_stopped() -> None:
    """Stopping a service stops each of its running instances."""
    observed = {("web", i): Seen(S.UP) for i in range(3)}
    assert sorted(plan({"web": Want(3, up=False)}, observed), key=lambda s: s.index) == [
        stop("web", 0), stop("web", 1), stop("web", 2)]


# ------------------------------------------------------------------------------ dropping
@pytest.mark.parametrize("state", [S.STARTING, S.UP, S.UNHEALTHY, S.BACKOFF, S.FAILED, S.DOWN])
def test_instances_beyond_the_count_are_dropped(state: S) -> None:
    """Scaling down drops the instances whose index is past the new count, in any state."""
    observed = {("web", 0): Seen(S.UP), ("web", 1): Seen(state)}
    assert plan({"web": Want(1, up=True)}, observed) == [drop("web", 1)]


@pytest.mark.parametrize("state", [S.UP, S.DOWN, S.BACKOFF, S.FAILED])
def test_instances_of_an_unloaded_service_are_dropped(state: S) -> None:
    """Unloading a service drops every one of its instances."""
    observed = {("gone", 0): Seen(state), ("gone", 1): Seen(S.UP)}
    assert sorted(plan({}, observed), key=lambda s: s.index) == [drop("gone", 0), drop("gone", 1)]


def test_extra_instances_of_a_stopped_service_are_dropped_not_stopped() -> None:
    """A stopped service scaled down drops the extra instances and stops the kept ones."""
    observed = {("web", 0): Seen(S.UP), ("web", 1): Seen(S.UP)}
    assert sorted(plan({"web": Want(1, up=False)}, observed), key=lambda s: s.index) == [
        stop("web", 0), drop("web", 1)]


def test_stopping_instance_beyond_the_count_is_not_dropped_yet() -> None:
    """An instance past the count that is still stopping is left alone until it is down."""
    observed = {("web", 0): Seen(S.UP), ("web", 1): Seen(S.STOPPING)}
    assert plan({"web": Want(1, up=True)}, observed) == []


def test_stopping_instance_of_an_unloaded_service_is_not_dropped_yet() -> None:
    """Unloading drops the other instances but leaves a stopping one until it is down."""
    observed = {("web", 0): Seen(S.UP), ("web", 1): Seen(S.STOPPING)}
    assert plan({}, observed) == [drop("web", 0)]


# ------------------------------------------------------------------------------- stays_down
@pytest.mark.parametrize("state", [S.DOWN, S.FAILED])
def test_settled_instances_are_not_restarted(state: S) -> None:
    """An instance left down on purpose by its restart policy is not started again."""
    assert plan({"web": Want(1, up=True)}, {("web", 0): Seen(state, stays_down=True)}) == []


def test_a_failed_instance_a_user_starts_is_started() -> None:
    """A failed instance is left down on purpose until a user starts it (which clears
    ``stays_down``): then it is started, or waits for its dependencies."""
    assert plan({"web": Want(1, up=True)}, {("web", 0): Seen(S.FAILED)}) == [
        Move(Verb.START, "web", 0)]
    assert plan({"web": Want(1, up=True, blocked_by=("db",))},
                {("web", 0): Seen(S.FAILED)}) == [Move(Verb.WAIT, "web", 0)]


def test_backoff_instance_is_left_to_its_timer() -> None:
    """An instance waiting out its backoff is not started early."""
    assert plan({"web": Want(1, up=True)}, {("web", 0): Seen(S.BACKOFF)}) == []


def test_settled_instances_are_still_dropped_when_unloaded() -> None:
    """Settled instances of an unloaded service are still forgotten."""
    assert plan({}, {("web", 0): Seen(S.DOWN, stays_down=True)}) == [drop("web", 0)]


# ----------------------------------------------------------------------------- several
def test_several_services_at_once() -> None:
    """Starts, stops and drops for several services come out together in one plan."""
    wanted = {"web": Want(2, up=True), "db": Want(1, up=False), "worker": Want(1, up=True)}
    observed = {
        ("web", 0): Seen(S.UP),
        ("db", 0): Seen(S.UP),
        ("old", 0): Seen(S.UP),
        ("worker", 0): Seen(S.DOWN, stays_down=True),
        ("worker", 1): Seen(S.UP),
    }
    steps = plan(wanted, observed)
    assert sorted(steps, key=lambda s: (s.verb, s.service, s.index)) == sorted(
        [start("web", 1), stop("db", 0), drop("old", 0), drop("worker", 1)],
        key=lambda s: (s.verb, s.service, s.index))
    assert len(steps) == len(set(steps))


def test_blocked_instances_wait_instead_of_starting() -> None:
    """An instance whose dependencies are not ready gets a WAIT step, never a START."""
    from corral.supervisor.reconcile import Move, Verb, Want, plan
    steps = plan({"app": Want(2, True, ("db",))}, {})
    assert steps == [Move(Verb.WAIT, "app", 0), Move(Verb.WAIT, "app", 1)]
