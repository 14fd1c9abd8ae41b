"""The lifecycle of one service instance as a transition table.  PURE.

``step(state, event) -> (state, actions)``.  The asyncio loop (:mod:`.loop`) feeds it
events and runs the actions it returns; it never changes an instance's state any other
way.  Exits are classified by :mod:`.policy` *before* they reach the table, so the table
needs no guards: ``EXIT_RESTART`` (now), ``EXIT_BACKOFF`` (later), ``EXIT_DOWN`` (policy
says stay down), ``EXIT_GIVE_UP`` (too many quick restarts) and ``EXIT_WAIT`` (a restart
is due but a dependency is not ready: down until it is).  A restart corral decides for a
fault (``RESTART``: failing health checks, no watchdog ping, a start that took too long)
stops the instance first; the end of that stop is classified by the same policy
(``STOPPED_RESTART``, ``STOPPED_BACKOFF``, ``STOPPED_GIVE_UP``, or plain ``STOPPED``).

A pair that is not in the table is ignored: the state stays and nothing is done (for
example a late ``READY`` after a stop).  ``tests/unit/test_machine.py`` checks every cell.
"""

from __future__ import annotations

from enum import StrEnum

from corral.states import ServiceState as S


class Trigger(StrEnum):
    """Something that happened to an instance, or something a user asked of it."""

    START = "start"            # the user (or reconcile) wants it running
    STOP = "stop"              # the user (or reconcile) wants it stopped
    SPAWNED = "spawned"        # the launcher started the process
    READY = "ready"            # readiness reached (readiness: started, after start_seconds)
    UNHEALTHY = "unhealthy"    # health checks failed `retries` times
    HEALTHY = "healthy"        # a health check passed again
    EXIT_RESTART = "exit_restart"
    EXIT_BACKOFF = "exit_backoff"
    EXIT_DOWN = "exit_down"
    EXIT_GIVE_UP = "exit_give_up"
    EXIT_WAIT = "exit_wait"    # its restart waits for a dependency to be ready
    RESTART = "restart"        # stop it for a fault; the restart policy decides what next
    STOPPED = "stopped"        # a Terminate finished
    STOPPED_RESTART = "stopped_restart"    # a RESTART's Terminate finished: start it now
    STOPPED_BACKOFF = "stopped_backoff"    # ... start it after the backoff delay
    STOPPED_GIVE_UP = "stopped_give_up"    # ... too many quick restarts: failed
    TIMER = "timer"            # the backoff delay is over
    WAIT = "wait"              # the backoff delay is over but a dependency is not ready


class Action(StrEnum):
    """What the loop must do after a transition."""

    SPAWN = "spawn"
    TERMINATE = "terminate"
    SCHEDULE = "schedule"      # arm the backoff timer (delay from the policy)
    CANCEL = "cancel"          # disarm it


_LIVE = (S.STARTING, S.UP, S.UNHEALTHY)
_EXITS = {
    Trigger.EXIT_RESTART: (S.STARTING, (Action.SPAWN,)),
    Trigger.EXIT_BACKOFF: (S.BACKOFF, (Action.SCHEDULE,)),
    Trigger.EXIT_DOWN: (S.DOWN, ()),
    Trigger.EXIT_GIVE_UP: (S.FAILED, ()),
    Trigger.EXIT_WAIT: (S.DOWN, ()),
}

TABLE: dict[tuple[S, Trigger], tuple[S, tuple[Action, ...]]] = {
    (S.DOWN, Trigger.START): (S.STARTING, (Action.SPAWN,)),
    (S.FAILED, Trigger.START): (S.STARTING, (Action.SPAWN,)),
    (S.FAILED, Trigger.STOP): (S.DOWN, ()),
    (S.BACKOFF, Trigger.TIMER): (S.STARTING, (Action.SPAWN,)),
    (S.BACKOFF, Trigger.STOP): (S.DOWN, (Action.CANCEL,)),
    (S.BACKOFF, Trigger.START): (S.STARTING, (Action.CANCEL, Action.SPAWN)),
    (S.BACKOFF, Trigger.WAIT): (S.DOWN, (Action.CANCEL,)),
    (S.STARTING, Trigger.READY): (S.UP, ()),
    (S.UP, Trigger.UNHEALTHY): (S.UNHEALTHY, ()),
    (S.UNHEALTHY, Trigger.HEALTHY): (S.UP, ()),
    (S.STOPPING, Trigger.STOPPED): (S.DOWN, ()),
    (S.STOPPING, Trigger.STOPPED_RESTART): (S.STARTING, (Action.SPAWN,)),
    (S.STOPPING, Trigger.STOPPED_BACKOFF): (S.BACKOFF, (Action.SCHEDULE,)),
    (S.STOPPING, Trigger.STOPPED_GIVE_UP): (S.FAILED, ()),
    **{(state, Trigger.STOP): (S.STOPPING, (Action.TERMINATE,)) for state in _LIVE},
    **{(state, Trigger.RESTART): (S.STOPPING, (Action.TERMINATE,)) for state in _LIVE},
    **{(state, event): result for state in _LIVE for event, result in _EXITS.items()},
}


def step(state: S, event: Trigger) -> tuple[S, tuple[Action, ...]]:
    """Return the next state and the actions to run; unknown pairs change nothing."""
    return TABLE.get((state, event), (state, ()))
