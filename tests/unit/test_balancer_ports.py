"""The SERVICE_PORT allocator's bookkeeping (the host check is injected)."""

from __future__ import annotations

import pytest

from corral.balancer.ports import PortAllocator, PortsExhausted


def test_hands_out_distinct_ports_in_the_range() -> None:
    """Every port handed out is in the range and held by one holder only."""
    ports = PortAllocator(31000, 31004, is_free=lambda p: True)
    got = [ports.allocate() for _ in range(5)]
    assert sorted(got) == list(range(31000, 31005))
    with pytest.raises(PortsExhausted, match="31000-31004"):
        ports.allocate()


def test_skips_ports_in_use_on_the_host() -> None:
    """A port the host check says is taken is never handed out."""
    busy = {31000, 31002}
    ports = PortAllocator(31000, 31003, is_free=lambda p: p not in busy)
    assert [ports.allocate(), ports.allocate()] == [31001, 31003]
    with pytest.raises(PortsExhausted):
        ports.allocate()


def test_release_makes_a_port_available_again_last() -> None:
    """A released port can be handed out again, after the ports not yet used."""
    ports = PortAllocator(31000, 31002, is_free=lambda p: True)
    first = ports.allocate()
    ports.release(first)
    assert ports.allocate() == 31001
    assert ports.allocate() == 31002
    assert ports.allocate() == first


def test_reserve_rebuilds_after_a_restart() -> None:
    """Ports of adopted instances are reserved and never handed out twice."""
    ports = PortAllocator(31000, 31002, is_free=lambda p: True)
    ports.reserve(31000)
    ports.reserve(31001)
    assert ports.allocate() == 31002
    assert ports.taken == {31000, 31001, 31002}


def test_invalid_range_is_refused() -> None:
    """A range outside 1-65535 or upside down is an error at construction."""
    with pytest.raises(ValueError, match="invalid port range"):
        PortAllocator(40000, 30000)
    with pytest.raises(ValueError):
        PortAllocator(0, 10)


def test_each_corral_starts_at_its_own_place_in_the_range() -> None:
    """The start comes from the key (user and state directory): stable for one key, spread
    over the range for several, and the walk wraps around from there."""
    from corral.balancer.ports import start_for
    starts = {start_for(30000, 39999, f"{uid}:/var/lib/corral/default") for uid in range(50)}
    assert len(starts) > 45 and all(30000 <= s <= 39999 for s in starts)
    assert start_for(30000, 39999, "0:/x") == start_for(30000, 39999, "0:/x")
    ports = PortAllocator(31000, 31002, is_free=lambda p: True, start=31002)
    assert [ports.allocate() for _ in range(3)] == [31002, 31000, 31001]
    with pytest.raises(ValueError):
        PortAllocator(31000, 31002, start=30999)


def test_replace_hands_out_another_port_and_releases_the_old_one() -> None:
    """A port another program took is swapped for a free one; the old one goes back."""
    ports = PortAllocator(31000, 31002, is_free=lambda p: True)
    old = ports.allocate()
    new = ports.replace(old)
    assert new != old and ports.taken == {new}
