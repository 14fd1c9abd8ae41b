"""The lifecycle of one service instance as a transition table.  PURE.

``step(state, event) -> (state, actions)``.  :meth:`.loop.Supervisor.feed` is the one
place that assigns an instance's state: it sets the state the table returns and runs the
actions it lists, in order, and nothing else (``tests/unit/test_machine.py`` checks that
no other code assigns one).  Exits are classified by :mod:`.policy` *before* they reach
the table, so the table needs no guards: ``EXIT_RESTART`` (now), ``EXIT_BACKOFF``
(later), ``EXIT_DOWN`` (policy says stay down), ``EXIT_GIVE_UP`` (too many quick
restarts), ``EXIT_WAIT`` (a restart is due but a dependency is not ready: down until it
is) and ``EXIT_RETIRED`` (an old instance a rollout is replacing: down, and nothing
more).  A restart corral decides for a fault (``RESTART``: failing health checks, no
watchdog ping, a start that took too long) stops the instance first; the end of that
stop is classified by the same policy (``STOPPED_RESTART``, ``STOPPED_BACKOFF``,
``STOPPED_GIVE_UP``, ``STOPPED_DOWN``, ``STOPPED_WAIT``, or a plain ``STOPPED``).

A new supervisor builds its records from the launcher: a child it keeps is ``ADOPTED``
(up, as it was), and an exit the launcher saw while no supervisor ran is replayed as
``AWAY_DOWN`` or ``AWAY_GIVE_UP`` when the policy leaves it down (an exit it restarts
needs no trigger: the instance is down and reconcile starts it), and a respawn the launcher
waits to carry out for the last supervisor is ``AWAY_BACKOFF``: in backoff for the rest of
its delay.

Actions come in a fixed order (the order :class:`Action` declares them): the flags a
transition sets, then what talks to the launcher or the timers, then the bookkeeping (the
state event, hooks, waiters released, reconcile).

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
    EXIT_RETIRED = "exit_retired"          # exited while a rollout replaces it
    RESTART = "restart"        # stop it for a fault; the restart policy decides what next
    STOPPED = "stopped"        # a Terminate finished
    STOPPED_RESTART = "stopped_restart"    # a RESTART's Terminate finished: start it now
    STOPPED_BACKOFF = "stopped_backoff"    # ... start it after the backoff delay
    STOPPED_GIVE_UP = "stopped_give_up"    # ... too many quick restarts: failed
    STOPPED_DOWN = "stopped_down"          # ... the policy leaves it down
    STOPPED_WAIT = "stopped_wait"          # ... its restart waits for a dependency
    TIMER = "timer"            # the backoff delay is over
    WAIT = "wait"              # the backoff delay is over but a dependency is not ready
    ADOPTED = "adopted"        # a new supervisor keeps a child the launcher still runs
    AWAY_DOWN = "away_down"    # exited while no supervisor ran; the policy leaves it down
    AWAY_GIVE_UP = "away_give_up"          # ... the policy gives up on it
    AWAY_BACKOFF = "away_backoff"          # ... the launcher restarts it after a delay


class Action(StrEnum):
    """What the loop must do after a transition, in this order."""

    FRESH_START = "fresh_start"  # a start asked for runs the init hook (unless held)
    HOLD = "hold"              # down until a dependency is ready (its start is a restart)
    KEEP_DOWN = "keep_down"    # left down on purpose: reconcile must not start it
    CANCEL = "cancel"          # disarm the backoff timer
    SPAWN = "spawn"
    TERMINATE = "terminate"
    SCHEDULE = "schedule"      # arm the backoff timer (delay from the policy)
    ANNOUNCE = "announce"      # the state event; wake waiters; the balancer's view changed
    POST_RUN = "post_run"      # run the post_run hook
    POST_STOP = "post_stop"    # run the post_stop hook
    RELEASE = "release"        # the stop is over: release its until_stopped waiters
    CLOSE_NOTIFY = "close_notify"  # no process: close its NOTIFY_SOCKET
    RECONCILE = "reconcile"    # what runs changed: start, stop or drop what must be
    RECONCILE_DEPENDENTS = "reconcile_dependents"  # up: dependents may be waiting for it


#: The bookkeeping actions: they run after the launcher has been told (see ``feed``).
BOOKKEEPING = frozenset({Action.ANNOUNCE, Action.POST_RUN, Action.POST_STOP, Action.RELEASE,
                         Action.CLOSE_NOTIFY, Action.RECONCILE,
                         Action.RECONCILE_DEPENDENTS})

_ORDER = list(Action)


def _to(state: S, *actions: Action) -> tuple[S, tuple[Action, ...]]:
    """A cell: ``state`` and ``actions`` in :class:`Action` order."""
    return state, tuple(sorted(actions, key=_ORDER.index))


A = Action
# What every move to an ended state (down, failed) does after its own actions.
_ENDED = (A.ANNOUNCE, A.RELEASE, A.CLOSE_NOTIFY, A.RECONCILE)
# ... and the end of a stop: its post_stop hook as well.
_STOP_END = (*_ENDED, A.POST_STOP)
# The end of a stop that is followed by a start (now, or after the backoff).
_STOP_THEN = (A.ANNOUNCE, A.POST_STOP, A.RELEASE)

_LIVE = (S.STARTING, S.UP, S.UNHEALTHY)
_EXITS = {
    Trigger.EXIT_BACKOFF: _to(S.BACKOFF, A.SCHEDULE, A.ANNOUNCE),
    Trigger.EXIT_DOWN: _to(S.DOWN, A.KEEP_DOWN, *_ENDED),
    Trigger.EXIT_GIVE_UP: _to(S.FAILED, A.KEEP_DOWN, *_ENDED),
    Trigger.EXIT_WAIT: _to(S.DOWN, A.HOLD, *_ENDED),
    Trigger.EXIT_RETIRED: _to(S.DOWN, *_ENDED),
    Trigger.STOP: _to(S.STOPPING, A.TERMINATE, A.ANNOUNCE),
    Trigger.RESTART: _to(S.STOPPING, A.TERMINATE, A.ANNOUNCE),
}

TABLE: dict[tuple[S, Trigger], tuple[S, tuple[Action, ...]]] = {
    (S.DOWN, Trigger.START): _to(S.STARTING, A.FRESH_START, A.SPAWN, A.ANNOUNCE),
    (S.DOWN, Trigger.ADOPTED): _to(S.UP),
    (S.DOWN, Trigger.AWAY_DOWN): _to(S.DOWN, A.KEEP_DOWN),
    (S.DOWN, Trigger.AWAY_GIVE_UP): _to(S.FAILED, A.KEEP_DOWN),
    (S.DOWN, Trigger.AWAY_BACKOFF): _to(S.BACKOFF, A.SCHEDULE, A.ANNOUNCE),
    (S.FAILED, Trigger.START): _to(S.STARTING, A.FRESH_START, A.SPAWN, A.ANNOUNCE),
    (S.FAILED, Trigger.STOP): _to(S.DOWN, *_ENDED),
    (S.BACKOFF, Trigger.TIMER): _to(S.STARTING, A.SPAWN, A.ANNOUNCE),
    (S.BACKOFF, Trigger.STOP): _to(S.DOWN, A.CANCEL, *_ENDED),
    (S.BACKOFF, Trigger.START): _to(S.STARTING, A.FRESH_START, A.CANCEL, A.SPAWN, A.ANNOUNCE),
    (S.BACKOFF, Trigger.WAIT): _to(S.DOWN, A.HOLD, A.CANCEL, *_ENDED),
    (S.STARTING, Trigger.READY): _to(S.UP, A.ANNOUNCE, A.POST_RUN, A.RECONCILE_DEPENDENTS),
    (S.UP, Trigger.UNHEALTHY): _to(S.UNHEALTHY, A.ANNOUNCE),
    (S.UNHEALTHY, Trigger.HEALTHY): _to(S.UP, A.ANNOUNCE, A.RECONCILE_DEPENDENTS),
    (S.STOPPING, Trigger.STOPPED): _to(S.DOWN, *_STOP_END),
    (S.STOPPING, Trigger.STOPPED_RESTART): _to(S.STARTING, A.SPAWN, *_STOP_THEN),
    (S.STOPPING, Trigger.STOPPED_BACKOFF): _to(S.BACKOFF, A.SCHEDULE, *_STOP_THEN),
    (S.STOPPING, Trigger.STOPPED_GIVE_UP): _to(S.FAILED, A.KEEP_DOWN, *_STOP_END),
    (S.STOPPING, Trigger.STOPPED_DOWN): _to(S.DOWN, A.KEEP_DOWN, *_STOP_END),
    (S.STOPPING, Trigger.STOPPED_WAIT): _to(S.DOWN, A.HOLD, *_STOP_END),
    # A crash restart of a starting instance stays starting: no state event.
    (S.STARTING, Trigger.EXIT_RESTART): _to(S.STARTING, A.SPAWN),
    (S.UP, Trigger.EXIT_RESTART): _to(S.STARTING, A.SPAWN, A.ANNOUNCE),
    (S.UNHEALTHY, Trigger.EXIT_RESTART): _to(S.STARTING, A.SPAWN, A.ANNOUNCE),
    **{(state, event): result for state in _LIVE for event, result in _EXITS.items()},
}


def step(state: S, event: Trigger) -> tuple[S, tuple[Action, ...]]:
    """Return the next state and the actions to run; unknown pairs change nothing."""
    return TABLE.get((state, event), (state, ()))
