"""Service and health states, and their named groups.  LEAF: imports the stdlib only.

An instance moves through ``starting -> up -> (unhealthy) -> stopping -> down``, with
``backoff`` between a death and the next start and ``failed`` when the restart policy
gives up.  The pure transition table lives in :mod:`corral.supervisor.machine`.
"""

from __future__ import annotations

from enum import StrEnum


class ServiceState(StrEnum):
    """Where one instance of a service is in its lifecycle."""

    STARTING = "starting"
    UP = "up"
    UNHEALTHY = "unhealthy"
    STOPPING = "stopping"
    DOWN = "down"
    BACKOFF = "backoff"
    FAILED = "failed"


class HealthState(StrEnum):
    """Result of the latest health check (Habitat's four codes)."""

    OK = "ok"
    WARNING = "warning"
    CRITICAL = "critical"
    UNKNOWN = "unknown"


class Desired(StrEnum):
    """What the user wants of a service."""

    UP = "up"
    DOWN = "down"


#: States in which the instance has a live process.
RUNNING_STATES = frozenset({ServiceState.STARTING, ServiceState.UP, ServiceState.UNHEALTHY,
                            ServiceState.STOPPING})
#: States in which no process exists.
STOPPED_STATES = frozenset({ServiceState.DOWN, ServiceState.BACKOFF, ServiceState.FAILED})
#: States in which the instance has a process that is not being stopped.
LIVE_STATES = frozenset({ServiceState.STARTING, ServiceState.UP, ServiceState.UNHEALTHY})
#: States in which the instance is ready (it may be failing its health check).
READY_STATES = frozenset({ServiceState.UP, ServiceState.UNHEALTHY})
#: States in which the instance is at rest: no process, and no restart on its way.
ENDED_STATES = frozenset({ServiceState.DOWN, ServiceState.FAILED})
