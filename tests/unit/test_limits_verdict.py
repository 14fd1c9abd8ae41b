"""The limit verdicts: which limits a reading is over, and when its grace is over."""

from __future__ import annotations

from corral.spec import LimitsSpec
from corral.supervisor.sampling import grace_over, over_limits


def test_a_reading_within_its_limits_is_over_none() -> None:
    """Under both limits, or with no reading yet, nothing is over."""
    limits = LimitsSpec(memory=100 * 2**20, cpu=50)
    assert over_limits(limits, 10 * 2**20, 20.0) == []
    assert over_limits(limits, None, None) == []


def test_each_limit_exceeded_is_named() -> None:
    """Memory and CPU over their limits are both said, memory first."""
    limits = LimitsSpec(memory=100 * 2**20, cpu=50)
    over = over_limits(limits, 300 * 2**20, 80.0)
    assert over == ["memory 300MiB over the 100MiB limit", "cpu 80% over the 50% limit"]


def test_an_unset_limit_is_never_exceeded() -> None:
    """Without a memory limit, any memory is fine."""
    assert over_limits(LimitsSpec(cpu=50), 2**40, 10.0) == []


def test_the_grace_ends_after_its_seconds() -> None:
    """Over since t=100 with 10 s of grace: still in grace at 109.9, over at 110."""
    assert not grace_over(100.0, 109.9, 10.0)
    assert grace_over(100.0, 110.0, 10.0)
