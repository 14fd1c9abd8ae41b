"""Restart decisions: what to do when an instance exits.  PURE (clock and randomness injected).

The rules, after Habitat and systemd:

- the policy (``always`` / ``on-failure`` / ``never``) may be overridden per exit code;
- an instance that ran at least ``cooldown`` is restarted at once, and its streak of
  young deaths is forgotten;
- one that dies young restarts at once the first time, then backs off with decorrelated
  jitter, ``delay = min(backoff_max, uniform(backoff_min, previous * 3))``, so a crash loop
  costs little and many crashing services do not restart in lock step;
- ``max_restarts`` (when set) bounds the young deaths in a row; past it the instance is
  ``failed`` and stays down until a user starts it;
- an instance corral stops for a fault (failing health checks, a missed watchdog, a start
  that took too long) is judged like one that exited with a failure.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from corral.spec import RestartSpec

Uniform = Callable[[float, float], float]


class Verdict(StrEnum):
    """What the supervisor does after an exit."""

    RESTART_NOW = "restart_now"
    RESTART_LATER = "restart_later"
    STAY_DOWN = "stay_down"
    GIVE_UP = "give_up"


@dataclass(frozen=True)
class Streak:
    """Memory of recent young deaths of one instance."""

    young_deaths: int = 0
    last_delay: float = 0.0


@dataclass(frozen=True)
class Decision:
    """The verdict, its delay in seconds, the reason in words, and the new streak."""

    verdict: Verdict
    delay: float
    reason: str
    streak: Streak


def describe_exit(exit_code: int | None, signal: str | None) -> str:
    """``exited with code 1`` / ``killed by SIGKILL``."""
    if signal:
        return f"killed by SIG{signal}"
    return f"exited with code {exit_code}"


def decide(spec: RestartSpec, exit_code: int | None, signal: str | None, ran_for: float,
           streak: Streak, uniform: Uniform = random.uniform) -> Decision:
    """Decide what follows an exit after ``ran_for`` seconds of life.

    Args:
        spec: the service's restart settings.
        exit_code: the exit status, or None when a signal ended the process.
        signal: the signal's name without ``SIG``, or None.
        ran_for: seconds between spawn and exit.
        streak: the instance's young-death memory before this exit.
        uniform: ``random.uniform`` or a deterministic stand-in for tests.
    """
    what = describe_exit(exit_code, signal)
    policy = spec.policy
    if exit_code is not None and exit_code in spec.exit_codes:
        policy = spec.exit_codes[exit_code]
    failed = signal is not None or exit_code != 0
    if policy == "never" or (policy == "on-failure" and not failed):
        return Decision(Verdict.STAY_DOWN, 0.0, f"{what}; restart policy {policy}", Streak())
    return _again(spec, what, ran_for, streak, uniform)


def decide_restart(spec: RestartSpec, why: str, ran_for: float, streak: Streak,
                   uniform: Uniform = random.uniform) -> Decision:
    """Decide when an instance that corral stopped for a fault starts again.

    A fault (failing health checks, no watchdog ping, not ready within ``start_timeout``)
    is a failure like a non-zero exit: ``never`` leaves the instance down, and one that ran
    less than ``cooldown`` is a young death (backoff, ``max_restarts``).

    Args:
        why: the fault in words, e.g. ``unhealthy after 3 failed checks: ...``.
        ran_for: seconds between the spawn and the stop.
    """
    if spec.policy == "never":
        return Decision(Verdict.STAY_DOWN, 0.0, f"{why}; restart policy never", Streak())
    return _again(spec, why, ran_for, streak, uniform)


def _again(spec: RestartSpec, what: str, ran_for: float, streak: Streak,
           uniform: Uniform) -> Decision:
    """When a failed instance that the policy restarts starts again."""
    if ran_for >= spec.cooldown:
        return Decision(Verdict.RESTART_NOW, 0.0, f"{what}; restarting", Streak())
    deaths = streak.young_deaths + 1
    delay = _young_delay(spec, deaths, streak.last_delay, uniform)
    if delay is None:
        return Decision(Verdict.GIVE_UP, 0.0,
                        f"{what}; gave up after {spec.max_restarts} quick restarts in a row",
                        Streak(deaths, streak.last_delay))
    if deaths == 1:
        return Decision(Verdict.RESTART_NOW, 0.0, f"{what}; restarting", Streak(deaths, 0.0))
    return Decision(Verdict.RESTART_LATER, delay,
                    f"{what} after {ran_for:.1f}s; restarting in {delay:.1f}s",
                    Streak(deaths, delay))


def _young_delay(spec: RestartSpec, deaths: int, last_delay: float,
                 uniform: Uniform) -> float | None:
    """The delay before the restart after the ``deaths``-th young death in a row (None:
    past ``max_restarts``)."""
    if spec.max_restarts is not None and deaths > spec.max_restarts:
        return None
    if deaths == 1:
        return 0.0
    previous = max(last_delay, spec.backoff_min)
    return min(spec.backoff_max, uniform(spec.backoff_min, previous * 3))


def young_deaths(spec: RestartSpec, streak: Streak, limit: int,
                 uniform: Uniform = random.uniform) -> list[float | None]:
    """The delays :func:`decide` would give the next young deaths in a row of an
    instance with ``streak``, drawn in advance (None: it gives up there, and the list
    ends).  A death is young when ``cooldown`` is above zero.

    At most ``limit`` are drawn; a list cut short there ends with None when
    ``max_restarts`` bounds the streak (whoever follows it must not restart past the
    limit), and without one its last delay stands for the rest.
    """
    if spec.cooldown <= 0:
        return [0.0]  # every death is past the cooldown: at once, always
    drawn: list[float | None] = []
    deaths, last = streak.young_deaths, streak.last_delay
    for _ in range(limit):
        deaths += 1
        delay = _young_delay(spec, deaths, last, uniform)
        drawn.append(delay)
        if delay is None:
            return drawn
        last = delay
    return [*drawn, None] if spec.max_restarts is not None else drawn


def decide_spawn_failure(spec: RestartSpec, streak: Streak, why: str,
                         uniform: Uniform = random.uniform) -> Decision:
    """A spawn was refused (e.g. the binary vanished): back off, never retry at once."""
    deaths = streak.young_deaths + 1
    if spec.max_restarts is not None and deaths > spec.max_restarts:
        return Decision(Verdict.GIVE_UP, 0.0, f"cannot start: {why}; gave up",
                        Streak(deaths, streak.last_delay))
    previous = max(streak.last_delay, spec.backoff_min, 0.1)
    delay = max(0.1, min(spec.backoff_max, uniform(max(spec.backoff_min, 0.1), previous * 3)))
    return Decision(Verdict.RESTART_LATER, delay,
                    f"cannot start: {why}; retrying in {delay:.1f}s", Streak(deaths, delay))
