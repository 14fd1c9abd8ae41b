"""Tests of restart decisions (corral.supervisor.policy) with deterministic randomness."""

from __future__ import annotations

from typing import Any

import pytest

from corral.spec import RestartSpec
from corral.supervisor.policy import (
    Decision,
    Streak,
    Verdict,
    decide,
    decide_restart,
    decide_spawn_failure,
    describe_exit,
    young_deaths,
)


def highest(a: float, b: float) -> float:
    """A stand-in for random.uniform that always picks the top of the range."""
    return b


def lowest(a: float, b: float) -> float:
    """A stand-in for random.uniform that always picks the bottom of the range."""
    return a


#: A refused spawn fails at once, so it is never retried sooner than this, whatever
#: backoff_min and backoff_max say: a missing binary would otherwise spin the supervisor.
SPAWN_RETRY_FLOOR = 0.1


def spec(**fields: Any) -> RestartSpec:
    base: dict[str, Any] = {"cooldown": "10s", "backoff_min": "100ms", "backoff_max": "5s"}
    return RestartSpec(**{**base, **fields})


def crash_loop(restart: RestartSpec, deaths: int, uniform: Any = highest,
               exit_code: int | None = 1, signal: str | None = None) -> list[Decision]:
    """The decisions for ``deaths`` young deaths in a row (each after 0.5 s of life)."""
    streak = Streak()
    out = []
    for _ in range(deaths):
        decision = decide(restart, exit_code, signal, 0.5, streak, uniform)
        out.append(decision)
        streak = decision.streak
    return out


# --------------------------------------------------------------------------- policies
@pytest.mark.parametrize(("exit_code", "signal"), [(0, None), (1, None), (None, "KILL")])
def test_policy_never_stays_down(exit_code: int | None, signal: str | None) -> None:
    """With policy never the instance stays down whatever the exit."""
    decision = decide(spec(policy="never"), exit_code, signal, 100.0, Streak(), highest)
    assert decision.verdict is Verdict.STAY_DOWN
    assert decision.delay == 0.0
    assert "never" in decision.reason


def test_on_failure_after_exit_zero_stays_down() -> None:
    """With on-failure, a clean exit 0 leaves the instance down."""
    decision = decide(spec(policy="on-failure"), 0, None, 100.0, Streak(), highest)
    assert decision.verdict is Verdict.STAY_DOWN
    assert "exited with code 0" in decision.reason
    assert "on-failure" in decision.reason


def test_on_failure_after_non_zero_exit_restarts() -> None:
    """With on-failure, a non-zero exit restarts the instance."""
    decision = decide(spec(policy="on-failure"), 3, None, 100.0, Streak(), highest)
    assert decision.verdict is Verdict.RESTART_NOW


def test_on_failure_after_a_signal_restarts() -> None:
    """With on-failure, a death by signal counts as a failure and restarts."""
    decision = decide(spec(policy="on-failure"), None, "KILL", 100.0, Streak(), highest)
    assert decision.verdict is Verdict.RESTART_NOW
    assert "killed by SIGKILL" in decision.reason


def test_always_restarts_after_exit_zero() -> None:
    """With the default policy always, even a clean exit restarts."""
    decision = decide(spec(), 0, None, 100.0, Streak(), highest)
    assert decision.verdict is Verdict.RESTART_NOW


# ------------------------------------------------------------------ exit-code overrides
def test_exit_code_override_never_beats_always() -> None:
    """An exit code mapped to never stays down even under policy always."""
    restart = spec(policy="always", exit_codes={3: "never"})
    assert decide(restart, 3, None, 100.0, Streak(), highest).verdict is Verdict.STAY_DOWN
    assert decide(restart, 4, None, 100.0, Streak(), highest).verdict is Verdict.RESTART_NOW


def test_exit_code_override_always_beats_on_failure() -> None:
    """An exit code mapped to always restarts even a success under on-failure."""
    restart = spec(policy="on-failure", exit_codes={0: "always"})
    assert decide(restart, 0, None, 100.0, Streak(), highest).verdict is Verdict.RESTART_NOW


def test_exit_code_override_always_beats_never() -> None:
    """An exit code mapped to always restarts even under policy never."""
    restart = spec(policy="never", exit_codes={75: "always"})
    assert decide(restart, 75, None, 100.0, Streak(), highest).verdict is Verdict.RESTART_NOW
    assert decide(restart, 1, None, 100.0, Streak(), highest).verdict is Verdict.STAY_DOWN


def test_exit_code_override_does_not_apply_to_signals() -> None:
    """A death by signal follows the policy, not the exit-code overrides."""
    restart = spec(policy="always", exit_codes={0: "never"})
    assert decide(restart, None, "TERM", 100.0, Streak(), highest).verdict is Verdict.RESTART_NOW


# ------------------------------------------------------------------- cooldown and streak
@pytest.mark.parametrize("ran_for", [10.0, 11.0, 3600.0])
def test_long_run_restarts_now_and_resets_streak(ran_for: float) -> None:
    """An instance that ran at least cooldown restarts at once and its young deaths are forgotten."""
    decision = decide(spec(), 1, None, ran_for, Streak(young_deaths=7, last_delay=4.0), highest)
    assert decision.verdict is Verdict.RESTART_NOW
    assert decision.delay == 0.0
    assert decision.streak == Streak()


def test_first_young_death_restarts_now() -> None:
    """The first quick death restarts at once, and is remembered."""
    decision = decide(spec(), 1, None, 0.5, Streak(), highest)
    assert decision.verdict is Verdict.RESTART_NOW
    assert decision.delay == 0.0
    assert decision.streak.young_deaths == 1
    assert "exited with code 1" in decision.reason


@pytest.mark.parametrize("uniform", [highest, lowest])
def test_later_young_deaths_back_off_within_bounds(uniform: Any) -> None:
    """Repeated quick deaths wait between backoff_min and backoff_max, growing at most x3."""
    restart = spec()
    decisions = crash_loop(restart, 12, uniform)
    assert decisions[0].verdict is Verdict.RESTART_NOW
    previous = restart.backoff_min
    for decision in decisions[1:]:
        assert decision.verdict is Verdict.RESTART_LATER
        assert restart.backoff_min <= decision.delay <= restart.backoff_max
        assert decision.delay <= 3 * previous + 1e-9
        previous = max(decision.delay, restart.backoff_min)


def test_backoff_grows_by_three_and_is_capped() -> None:
    """With the largest jitter each delay is three times the last, up to backoff_max."""
    delays = [d.delay for d in crash_loop(spec(), 7, highest)]
    assert delays == pytest.approx([0.0, 0.3, 0.9, 2.7, 5.0, 5.0, 5.0])


def test_backoff_with_smallest_jitter_stays_at_min() -> None:
    """With the smallest jitter every delay is backoff_min."""
    delays = [d.delay for d in crash_loop(spec(), 5, lowest)]
    assert delays == pytest.approx([0.0, 0.1, 0.1, 0.1, 0.1])


def test_backoff_reports_delay_and_count() -> None:
    """A delayed restart says how long the instance lived and how long it will wait."""
    decision = crash_loop(spec(), 2, highest)[1]
    assert decision.streak.young_deaths == 2
    assert decision.streak.last_delay == pytest.approx(0.3)
    assert "after 0.5s" in decision.reason
    assert "restarting in 0.3s" in decision.reason


def test_streak_resets_after_a_long_run_in_the_middle_of_a_crash_loop() -> None:
    """After a long healthy run the next quick death restarts at once again."""
    restart = spec()
    streak = crash_loop(restart, 4, highest)[-1].streak
    calm = decide(restart, 1, None, 60.0, streak, highest)
    assert calm.streak == Streak()
    again = decide(restart, 1, None, 0.5, calm.streak, highest)
    assert again.verdict is Verdict.RESTART_NOW


def test_crash_loop_never_gives_up_by_default() -> None:
    """Without max_restarts a crash loop keeps restarting, however long it lasts."""
    decisions = crash_loop(spec(), 200, highest)
    assert {d.verdict for d in decisions[1:]} == {Verdict.RESTART_LATER}
    assert decisions[-1].delay == pytest.approx(5.0)


def test_hours_long_backoff_max_is_honoured() -> None:
    """A backoff_max of hours lets delays grow past minutes."""
    delays = [d.delay for d in crash_loop(spec(backoff_max="2h"), 20, highest)]
    assert max(delays) == pytest.approx(7200.0)


# --------------------------------------------------------------------------- max_restarts
def test_max_restarts_gives_up_with_a_reason() -> None:
    """Past max_restarts quick deaths in a row the instance is given up, and the reason says so."""
    decisions = crash_loop(spec(max_restarts=3), 4, highest)
    assert [d.verdict for d in decisions] == [
        Verdict.RESTART_NOW, Verdict.RESTART_LATER, Verdict.RESTART_LATER, Verdict.GIVE_UP]
    assert "gave up after 3 quick restarts" in decisions[-1].reason
    assert decisions[-1].delay == 0.0


def test_max_restarts_zero_gives_up_at_the_first_quick_death() -> None:
    """With max_restarts 0 a quick death is never restarted."""
    decision = decide(spec(max_restarts=0), 1, None, 0.5, Streak(), highest)
    assert decision.verdict is Verdict.GIVE_UP


def test_max_restarts_does_not_count_long_runs() -> None:
    """Deaths after a long run never count toward max_restarts."""
    restart = spec(max_restarts=1)
    streak = Streak()
    for _ in range(10):
        decision = decide(restart, 1, None, 100.0, streak, highest)
        assert decision.verdict is Verdict.RESTART_NOW
        streak = decision.streak


def test_policy_beats_max_restarts() -> None:
    """An exit that the policy leaves down is not reported as giving up."""
    restart = spec(policy="on-failure", max_restarts=0)
    decision = decide(restart, 0, None, 0.5, Streak(young_deaths=5), highest)
    assert decision.verdict is Verdict.STAY_DOWN


# ------------------------------------------------------------------------- spawn failures
@pytest.mark.parametrize("uniform", [highest, lowest])
@pytest.mark.parametrize("bounds", [("100ms", "5s"), ("0s", "5s"), ("0s", "0s"), ("0s", "50ms")])
def test_spawn_failure_never_restarts_at_once(uniform: Any, bounds: tuple[str, str]) -> None:
    """A refused spawn is retried later, never at once, even the first time: between
    backoff_min and backoff_max, but never sooner than the floor."""
    restart = spec(backoff_min=bounds[0], backoff_max=bounds[1])
    low = max(restart.backoff_min, SPAWN_RETRY_FLOOR)
    high = max(restart.backoff_max, SPAWN_RETRY_FLOOR)
    streak = Streak()
    for _ in range(8):
        decision = decide_spawn_failure(restart, streak, "command not found: /x", uniform)
        assert decision.verdict is Verdict.RESTART_LATER
        assert low - 1e-9 <= decision.delay <= high + 1e-9
        assert "command not found: /x" in decision.reason
        streak = decision.streak


def test_spawn_failure_backs_off_like_a_crash_loop() -> None:
    """Repeated spawn failures grow their delay by three up to backoff_max."""
    streak = Streak()
    delays = []
    for _ in range(5):
        decision = decide_spawn_failure(spec(), streak, "no", highest)
        delays.append(decision.delay)
        streak = decision.streak
    assert delays == pytest.approx([0.3, 0.9, 2.7, 5.0, 5.0])


def test_spawn_failure_gives_up_after_max_restarts() -> None:
    """Spawn failures count toward max_restarts and end in giving up."""
    streak = Streak()
    verdicts = []
    for _ in range(3):
        decision = decide_spawn_failure(spec(max_restarts=2), streak, "no", highest)
        verdicts.append(decision.verdict)
        streak = decision.streak
    assert verdicts == [Verdict.RESTART_LATER, Verdict.RESTART_LATER, Verdict.GIVE_UP]
    assert "gave up" in decision.reason


def test_zero_backoff_restarts_a_crash_at_once_but_a_refused_spawn_waits_the_floor() -> None:
    """With backoff_max 0 a crash loop restarts without waiting (each run is its own
    pause), while a refused spawn, which fails at once, waits the floor every time."""
    restart = spec(backoff_min=0, backoff_max=0)
    assert [d.delay for d in crash_loop(restart, 5, highest)] == [0.0] * 5
    streak = Streak()
    for _ in range(5):
        decision = decide_spawn_failure(restart, streak, "no", highest)
        assert decision.delay == pytest.approx(SPAWN_RETRY_FLOOR)
        streak = decision.streak


# ----------------------------------------------------------------------------- describe
def test_describe_exit() -> None:
    """Exits are described as a code or as the signal that killed the process."""
    assert describe_exit(2, None) == "exited with code 2"
    assert describe_exit(None, "SEGV") == "killed by SIGSEGV"


def test_a_fault_restart_of_a_young_instance_backs_off_and_gives_up() -> None:
    """A restart for a fault (unhealthy, watchdog, start timeout) is a young death like a
    crash: at once the first time, then backoff, then failed past max_restarts."""
    restart = spec(max_restarts=2)
    why = "unhealthy after 3 failed checks: check exited 1"
    first = decide_restart(restart, why, 0.5, Streak(), highest)
    assert (first.verdict, first.delay) == (Verdict.RESTART_NOW, 0.0)
    assert first.reason == f"{why}; restarting"
    second = decide_restart(restart, why, 0.5, first.streak, highest)
    assert (second.verdict, second.delay) == (Verdict.RESTART_LATER, pytest.approx(0.3))
    third = decide_restart(restart, why, 0.5, second.streak, highest)
    assert third.verdict is Verdict.GIVE_UP
    assert third.reason == f"{why}; gave up after 2 quick restarts in a row"


def test_a_fault_restart_after_a_long_run_is_at_once() -> None:
    """An instance that ran past cooldown before its fault restarts at once, streak reset."""
    decision = decide_restart(spec(max_restarts=0), "no WATCHDOG=1 for 5s", 11.0,
                              Streak(5, 2.0), highest)
    assert (decision.verdict, decision.streak) == (Verdict.RESTART_NOW, Streak())


@pytest.mark.parametrize("policy", ["always", "on-failure"])
def test_a_fault_is_a_failure_for_the_policy(policy: str) -> None:
    """`on-failure` restarts after a fault as after a non-zero exit."""
    assert decide_restart(spec(policy=policy), "x", 20.0, Streak()).verdict \
        is Verdict.RESTART_NOW


def test_policy_never_leaves_a_faulty_instance_down() -> None:
    """With `never`, an instance stopped for a fault stays down, and says why."""
    decision = decide_restart(spec(policy="never"), "not ready within 60s", 60.0, Streak())
    assert decision.verdict is Verdict.STAY_DOWN
    assert decision.reason == "not ready within 60s; restart policy never"


def test_young_deaths_are_drawn_in_advance_up_to_the_limit() -> None:
    """The delays of the next quick deaths in a row, as decide would give them one by
    one: at once, then backoff, and None where max_restarts gives up."""
    spec = RestartSpec(backoff_min=1.0, backoff_max=10.0, max_restarts=3)
    assert young_deaths(spec, Streak(), 16, uniform=lambda a, b: b) == [0.0, 3.0, 9.0, None]
    streak, one_by_one = Streak(), []
    for _ in range(4):
        decision = decide(spec, 1, None, 0.0, streak, uniform=lambda a, b: b)
        one_by_one.append(None if decision.verdict is Verdict.GIVE_UP else decision.delay)
        streak = decision.streak
    assert one_by_one == [0.0, 3.0, 9.0, None]


def test_young_deaths_cut_short_end_in_none_only_with_a_limit() -> None:
    """A list cut at ``limit`` ends with None when max_restarts bounds the streak (whoever
    follows it must not go past the limit); without one its last delay stands."""
    limited = young_deaths(RestartSpec(backoff_min=0.0, max_restarts=100), Streak(), 4,
                           uniform=lambda a, b: b)
    assert len(limited) == 5 and limited[-1] is None
    unlimited = young_deaths(RestartSpec(backoff_min=0.0), Streak(), 4, uniform=lambda a, b: b)
    assert len(unlimited) == 4 and all(d is not None for d in unlimited)
    assert young_deaths(RestartSpec(cooldown=0.0, max_restarts=1), Streak(), 4) == [0.0]
