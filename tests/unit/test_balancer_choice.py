"""Backend choice: round-robin and least-connections over active backends only."""

from __future__ import annotations

from dataclasses import dataclass

from corral.balancer.choice import Chooser


@dataclass
class B:
    id: str
    state: str = "active"
    active: int = 0


def picks(chooser: Chooser, backends: list[B], n: int) -> list[str]:
    out = []
    for _ in range(n):
        chosen = chooser.choose(backends)
        assert chosen is not None
        out.append(chosen.id)
    return out


def test_round_robin_cycles_in_order() -> None:
    """Round-robin walks the backends in order and wraps around."""
    assert picks(Chooser(), [B("a"), B("b"), B("c")], 7) == list("abcabca")


def test_round_robin_skips_draining() -> None:
    """A draining backend never gets a new connection."""
    backends = [B("a"), B("b", "draining"), B("c")]
    assert picks(Chooser(), backends, 4) == list("acac")


def test_no_active_backend_gives_none() -> None:
    """Nothing active (or nothing at all): no choice."""
    assert Chooser().choose([B("a", "draining")]) is None
    assert Chooser().choose([]) is None
    assert Chooser("least-connections").choose([B("a", "draining")]) is None


def test_exclude_moves_a_retry_to_another_backend() -> None:
    """Backends that refused this connection are not chosen again for it."""
    chooser = Chooser()
    backends = [B("a"), B("b"), B("c")]
    first = chooser.choose(backends)
    assert first is not None and first.id == "a"
    retry = chooser.choose(backends, {"a"})
    assert retry is not None and retry.id == "b"
    assert chooser.choose(backends, {"a", "b", "c"}) is None


def test_least_connections_prefers_the_idle_backend() -> None:
    """The backend with the fewest open connections wins."""
    backends = [B("a", active=3), B("b", active=0), B("c", active=1)]
    assert picks(Chooser("least-connections"), backends, 3) == ["b", "b", "b"]


def test_least_connections_breaks_ties_in_turn() -> None:
    """Equally loaded backends share the connections instead of the first taking all."""
    backends = [B("a"), B("b"), B("c")]
    assert picks(Chooser("least-connections"), backends, 6) == list("abcabc")


def test_least_connections_ignores_draining_even_if_idle() -> None:
    """An idle draining backend still gets nothing new."""
    backends = [B("a", "draining", 0), B("b", active=5)]
    assert picks(Chooser("least-connections"), backends, 2) == ["b", "b"]


def test_cursor_survives_a_shrinking_set() -> None:
    """Removing backends between choices never raises and still spreads."""
    chooser = Chooser()
    backends = [B("a"), B("b"), B("c")]
    picks(chooser, backends, 2)
    assert picks(chooser, backends[:1], 2) == ["a", "a"]
