"""corral as a whole, seen from outside: started yet? healthy? one line for systemd.

PURE: functions of the supervisor's :class:`~corral.supervisor.instance.Service` records,
no I/O.  They answer ``GET /v1/health`` (a load balancer's or kubelet's probe), and decide
when the launcher may tell systemd ``READY=1`` and what its ``STATUS=`` line says.

Health follows Habitat's ``/services/<svc>/<group>/health``: ``ok`` and ``warning`` are
healthy (HTTP 200), ``critical`` is not (HTTP 503).  Only services that should be up count
(desired ``up`` with at least one instance); a service is ready when each of its
instances is ``up`` and, if it has a health check, its last check said ok or warning.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from corral.states import Desired, HealthState, ServiceState

from .instance import Instance, Service

OK = "ok"
WARNING = "warning"
CRITICAL = "critical"

#: Order of states in the one-line summary.
_ORDER = [ServiceState.UP, ServiceState.STARTING, ServiceState.UNHEALTHY, ServiceState.BACKOFF,
          ServiceState.FAILED, ServiceState.STOPPING, ServiceState.DOWN]


def _wanted(services: Iterable[Service]) -> list[Service]:
    return [s for s in services if s.desired is Desired.UP and s.spec.instances > 0]


def started(services: Iterable[Service]) -> bool:
    """Whether every instance that should run was started: it has a pid, or its start
    was tried and failed (backoff, failed), or it waits for a dependency.  What happens
    next (a check passing, a restart) is corral's business, not start-up's."""
    for service in _wanted(services):
        for index in range(service.spec.instances):
            inst = service.instances.get(index)
            if inst is None or (inst.state is ServiceState.STARTING and inst.pid is None):
                return False
    return True


def _instance_verdict(service: Service, inst: Instance | None) -> str:
    if inst is None or inst.state is not ServiceState.UP:
        return CRITICAL
    if service.spec.health is None or inst.health is HealthState.OK:
        return OK
    return WARNING if inst.health is HealthState.WARNING else CRITICAL


def health(services: Iterable[Service]) -> dict[str, Any]:
    """``{status, not_ready, warning, services: {name: {status, ready, instances,
    reason}}}``: ``status`` is ``critical`` when a service that should be up is not ready,
    else ``warning`` when one's check says warning, else ``ok``."""
    report: dict[str, Any] = {}
    not_ready: list[str] = []
    warned: list[str] = []
    for service in _wanted(services):
        verdicts = [(_instance_verdict(service, service.instances.get(i)),
                     service.instances.get(i)) for i in range(service.spec.instances)]
        ready = sum(1 for v, _ in verdicts if v != CRITICAL)
        worst = next((pair for pair in verdicts if pair[0] == CRITICAL),
                     next((pair for pair in verdicts if pair[0] == WARNING), verdicts[0]))
        verdict, inst = worst
        if verdict == CRITICAL:
            not_ready.append(service.spec.name)
        elif verdict == WARNING:
            warned.append(service.spec.name)
        if inst is None:
            reason = "not started"
        elif verdict == OK:
            reason = ""
        elif inst.state is ServiceState.UP:
            reason = f"health {inst.health.value}"
        else:
            reason = f"{inst.state.value}: {inst.reason}" if inst.reason else inst.state.value
        report[service.spec.name] = {"status": verdict, "ready": ready,
                                     "instances": service.spec.instances, "reason": reason}
    status = CRITICAL if not_ready else WARNING if warned else OK
    return {"status": status, "not_ready": not_ready, "warning": warned, "services": report}


def summary(services: Iterable[Service]) -> str:
    """One line for systemd's ``STATUS=``: ``3 services: 2 up, 1 backoff``, with the count
    of instances when it differs (``2 services, 5 instances: 5 up``)."""
    counts: dict[ServiceState, int] = {}
    total = 0
    for service in services:
        total += 1
        for inst in service.instances.values():
            counts[inst.state] = counts.get(inst.state, 0) + 1
    if not total:
        return "no services"
    instances = sum(counts.values())
    head = f"{total} service{'s' * (total != 1)}"
    if instances != total:
        head += f", {instances} instance{'s' * (instances != 1)}"
    parts = [f"{counts[state]} {state.value}" for state in _ORDER if counts.get(state)]
    return f"{head}: {', '.join(parts)}" if parts else head
