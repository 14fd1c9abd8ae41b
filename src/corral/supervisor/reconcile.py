"""Reconcile: compare what is wanted with what is observed, and say what to do.  PURE.

``plan(wanted, observed)`` returns steps the loop carries out; calling it again after
they are done returns nothing but ``WAIT`` steps for instances whose dependencies are not
ready yet (it converges).  ``stays_down`` instances are those the
restart policy left down on purpose (``never``, ``on-failure`` after success, or
``failed``): they are not started again until a user asks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from corral.states import ServiceState as S


class Verb(StrEnum):
    START = "start"   # create the instance if needed and start it
    STOP = "stop"     # stop it (it is kept, e.g. a stopped service)
    DROP = "drop"     # stop it if needed, then forget it (scaled down or unloaded)
    WAIT = "wait"     # it should start, but a dependency is not ready yet


@dataclass(frozen=True)
class Want:
    """A loaded service: how many instances, and whether the user wants them running."""

    instances: int
    up: bool
    blocked_by: tuple[str, ...] = ()  # dependencies not ready yet


@dataclass(frozen=True)
class Seen:
    """One existing instance."""

    state: S
    stays_down: bool = False


@dataclass(frozen=True)
class Move:
    verb: Verb
    service: str
    index: int


# Down or failed: started when wanted, unless left down on purpose (a failed instance
# always is, until a user starts it).
_AT_REST = frozenset({S.DOWN, S.FAILED})
_STOPPABLE = frozenset({S.STARTING, S.UP, S.UNHEALTHY, S.BACKOFF, S.FAILED})


def plan(wanted: Mapping[str, Want], observed: Mapping[tuple[str, int], Seen]) -> list[Move]:
    """The steps that bring ``observed`` to ``wanted``, in service then instance order."""
    steps: list[Move] = []
    for (service, index), seen in observed.items():
        want = wanted.get(service)
        if want is None or index >= want.instances:
            if seen.state != S.STOPPING:
                steps.append(Move(Verb.DROP, service, index))
        elif not want.up and seen.state in _STOPPABLE:
            steps.append(Move(Verb.STOP, service, index))
    for service, want in wanted.items():
        if not want.up:
            continue
        for index in range(want.instances):
            have = observed.get((service, index))
            if have is None or (have.state in _AT_REST and not have.stays_down):
                verb = Verb.WAIT if want.blocked_by else Verb.START
                steps.append(Move(verb, service, index))
    return steps
