"""The resource history ring: bounded, oldest first, compact."""

from __future__ import annotations

import pytest

from corral.monitor.history import History


def test_points_come_back_oldest_first_until_full() -> None:
    h = History(3)
    assert not h and list(h) == []
    h.append(1.0, 12.34, 100)
    h.append(2.0, 0.0, 200)
    assert len(h) == 2
    assert list(h) == [(1.0, 12.3, 100), (2.0, 0.0, 200)]


def test_a_full_history_drops_the_oldest_point_each_time() -> None:
    h = History(3)
    for t in range(1, 8):
        h.append(float(t), float(t), t * 10)
    assert len(h) == 3
    assert [p[0] for p in h] == [5.0, 6.0, 7.0]
    assert [p[2] for p in h] == [50, 60, 70]


def test_capacity_one_keeps_the_last_point() -> None:
    h = History(1)
    h.append(1.0, 1.0, 1)
    h.append(2.0, 2.0, 2)
    assert list(h) == [(2.0, 2.0, 2)]


def test_cpu_keeps_tenths_and_rss_never_goes_negative() -> None:
    h = History(2)
    h.append(1.0, 199.9, -5)
    assert list(h) == [(1.0, 199.9, 0)]


def test_no_room_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one point"):
        History(0)
