"""Tests of standing orders as data: the two wire forms and what an exit calls for."""

from __future__ import annotations

from typing import Any

import pytest

from corral.protocol.standing import BadOrder, StandingOrder


def test_the_one_exit_form_covers_one_exit() -> None:
    """``{respawn_after_ms}`` (1.2) answers the next exit, young or not, and the process
    it starts has no order."""
    order = StandingOrder.parse({"respawn_after_ms": 250})
    assert order == StandingOrder(250)
    assert order.at_exit(0.0) == (250, None, False)
    assert order.at_exit(10_000_000.0) == (250, None, False)
    assert order.wire() == {"respawn_after_ms": 250}


def test_a_sequence_walks_on_and_its_last_delay_repeats() -> None:
    """Young deaths take ``then`` in turn; the last entry stands for the rest."""
    order = StandingOrder.parse({"respawn_after_ms": 0, "then": [100, 300],
                                 "cooldown_ms": 1000, "fresh": [0, 50]})
    assert order is not None
    delays = []
    for _ in range(4):
        assert order is not None
        after, order, cooled = order.at_exit(10.0)
        delays.append(after)
        assert not cooled
    assert delays == [0, 100, 300, 300]


def test_null_waits_for_the_supervisor() -> None:
    """Null in a sequence (the policy gave up) respawns nothing and starts no order."""
    order = StandingOrder(0, (None,), 1000, (0,))
    after, then, _ = order.at_exit(10.0)
    assert (after, then) == (0, StandingOrder(None, (None,), 1000, (0,)))
    assert then is not None and then.at_exit(10.0) == (None, None, False)


def test_an_exit_past_the_cooldown_restarts_at_once_and_starts_fresh() -> None:
    """Outliving ``cooldown_ms`` ends a streak: at once, and ``fresh`` from there."""
    order = StandingOrder(None, (None,), 1000, (0, 200, 600))
    assert order.at_exit(1000.0) == (0, StandingOrder(0, (200, 600), 1000, (0, 200, 600)),
                                     True)
    assert order.at_exit(999.0) == (None, None, False)


def test_wire_round_trips() -> None:
    order = StandingOrder(5, (10, None), 2000, (0, 10))
    assert StandingOrder.parse(order.wire()) == order
    assert StandingOrder.parse(None) is None
    assert StandingOrder.lift(7) == StandingOrder(7) and StandingOrder.lift(None) is None


@pytest.mark.parametrize("value", [
    {"respawn_after_ms": -1}, {"respawn_after_ms": 1.5}, {"respawn_after_ms": None}, [],
    {"respawn_after_ms": 0, "then": [0] * 65, "cooldown_ms": 1, "fresh": [0]},
    {"respawn_after_ms": 0, "then": [0], "cooldown_ms": 1, "fresh": [], },
    {"respawn_after_ms": 0, "then": [0], "cooldown_ms": None, "fresh": [0]},
    {"respawn_after_ms": 0, "then": [0], "cooldown_ms": 1, "fresh": [0], "x": 1}])
def test_other_shapes_are_refused_in_one_line(value: Any) -> None:
    with pytest.raises(BadOrder) as caught:
        StandingOrder.parse(value)
    assert "on_exit" in str(caught.value) and "\n" not in str(caught.value)
