"""The dependency graph between loaded processes (``depends_on``).  Pure: it reads the
services it is given and changes nothing."""

from __future__ import annotations

from collections.abc import Mapping

from corral.states import READY_STATES, Desired

from .instance import Service


def ready(service: Service) -> bool:
    """Wanted up, with every instance it should have ready (up or unhealthy)."""
    count = sum(1 for i in service.instances.values() if i.state in READY_STATES)
    return service.desired is Desired.UP and count >= service.spec.instances


def blocked_by(services: Mapping[str, Service], service: Service) -> tuple[str, ...]:
    """The dependencies of ``service`` whose instances are not all ready."""
    blocked = []
    for name in service.spec.depends_on:
        dep = services.get(name)
        if dep is None or not ready(dep):
            blocked.append(name)
    return tuple(blocked)


def depended_on(services: Mapping[str, Service]) -> frozenset[str]:
    """The names some service depends on."""
    return frozenset(d for s in services.values() for d in s.spec.depends_on)


def stop_order(services: Mapping[str, Service]) -> list[Service]:
    """Services in the order to stop them: dependents before their dependencies,
    otherwise last loaded first."""
    order: list[Service] = []
    placed: set[str] = set()
    remaining = list(services.values())[::-1]
    users = {n: {s.spec.name for s in services.values() if n in s.spec.depends_on}
             for n in services}
    while remaining:
        for service in remaining:
            if users[service.spec.name] <= placed:
                break
        else:  # unreachable for a validated (acyclic) target; keep going anyway
            service = remaining[0]
        remaining.remove(service)
        placed.add(service.spec.name)
        order.append(service)
    return order
