"""This supervisor's members in the service groups: what it registers, and the census.

Every loaded process is a member of its service group (``<process>.<cluster group>``,
:attr:`corral.spec.ProcessSpec.service_group`).  :class:`Membership` keeps the cluster
backend (:class:`corral.cluster.LocalBackend` without ``--cluster``, else
:class:`corral.cluster.EtcdBackend`) told about each of them: instances and their states,
health, ports, spec generation.  It watches the event log (every state, health, load,
unload and update is an event) and, at most once per loop turn, builds each process's
:class:`~corral.cluster.MemberStatus` again; the backend writes only what changed.

The backend never blocks a service: with etcd down, registrations are kept and written
once it answers again, and the census is the last known one, marked stale.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from corral.cluster import (
    ClusterBackend,
    GroupConfig,
    InstanceStatus,
    LinkStatus,
    MemberStatus,
)
from corral.errors import NotFound

from .events import Event

if TYPE_CHECKING:
    from .instance import Service
    from .loop import Supervisor


#: How long a starting supervisor waits for the cluster's census and group configs.
SYNC_WAIT = 3.0


class Membership:
    """Registers the supervisor's processes with ``backend`` and answers census queries.

    Args:
        core: the supervisor whose services are the members.
        backend: where the members are registered and the census comes from.
    """

    def __init__(self, core: Supervisor, backend: ClusterBackend) -> None:
        self._core = core
        self.backend = backend
        self._registered: dict[str, str] = {}  # service name -> its registered group
        self._pending = False
        # Services whose events came since the last sync: only their members are built
        # again (a crash storm of many services must not rebuild every member per event).
        self._dirty: set[str] = set()
        self._started = False
        self._connected: bool | None = None
        core.groupconfig.backend = backend
        core.groupconfig.sync_members = self._sync_opened
        self._opened = False

    async def open(self) -> None:
        """Start the backend, before the attach: group configs and the census are known
        before the first process renders its templates.  Never fails because etcd is down."""
        if not self._opened:
            self._opened = True
            await self.backend.start(self)
            # Briefly: a first boot renders with the group's config, not the defaults.
            await self.backend.wait_synced(SYNC_WAIT)

    async def start(self) -> None:
        """Start the backend (unless :meth:`open` did) and register every loaded process
        (after the attach, so the instances' states are known).  Never fails because etcd
        is down."""
        await self.open()
        self._core.groupconfig.adopt()
        self._started = True
        self._core.events.observers.append(self._observe)
        self.sync()

    async def close(self, *, leave: bool = False) -> None:
        """Stop the backend; ``leave`` (``sup stop``) drops the members from the census now."""
        if self._observe in self._core.events.observers:
            self._core.events.observers.remove(self._observe)
        self._started = False
        self._core.groupconfig.active = False
        await self.backend.close(leave=leave)

    # ------------------------------------------------------------------ registering
    def _observe(self, event: Event) -> None:
        if not event["service"]:
            return
        self._dirty.add(event["service"])
        if not self._pending:
            self._pending = True
            asyncio.get_running_loop().call_soon(self._sync_dirty)

    def _sync_dirty(self) -> None:
        """Register the members of the services with events since the last sync."""
        self._pending = False
        dirty, self._dirty = self._dirty, set()
        if not self._started:
            return
        if any(n not in self._core.services and n not in self._registered for n in dirty):
            self.sync()  # an event of something else (a balanced service): build them all
            return
        for name in dirty:
            self._sync_one(name)

    def _sync_one(self, name: str) -> None:
        service = self._core.services.get(name)
        group = service.spec.service_group if service is not None else None
        old = self._registered.get(name)
        if old is not None and old != group:
            self.backend.withdraw(old)
            del self._registered[name]
        if service is not None and group is not None:
            self.backend.register(group, self.status_of(service))
            self._registered[name] = group

    def _sync_opened(self) -> None:
        """:meth:`sync` once the backend is open (a process renders during the attach)."""
        if self._opened and not self._started:
            self._started = True
            try:
                self.sync()
            finally:
                self._started = False
        elif self._started:
            self.sync()

    def sync(self) -> None:
        """Register each loaded process's member as it is now; withdraw the removed ones."""
        if not self._started:
            return
        for name in set(self._registered) | set(self._core.services):
            self._sync_one(name)

    def status_of(self, service: Service) -> MemberStatus:
        """What the member of ``service`` publishes: its instances, ports and generation."""
        instances = tuple(InstanceStatus(i.index, i.state, i.health)
                          for i in sorted(service.instances.values(), key=lambda i: i.index))
        ports: dict[str, int] = {}
        for inst in sorted(service.instances.values(), key=lambda i: i.index):
            for name, port in inst.ports.items():
                ports.setdefault(name, port)
        # A received service is reached at its balancer's address, not an instance's port.
        for svc in self._core.traffic.target_services:
            if svc.name in service.spec.receives:
                ports[svc.name] = svc.port
        version, exports = self._core.groupconfig.member_fields(service.spec)
        return MemberStatus(instances=instances, ports=ports, spec_generation=service.gen,
                            config_version=version, exports=exports)

    # ------------------------------------------------------------------ the listener
    def census_changed(self, service_groups: frozenset[str]) -> None:
        """Re-render the processes that see these groups; release strict binds."""
        self._core.groupconfig.census_changed(service_groups)

    def config_changed(self, service_group: str, config: GroupConfig | None) -> None:
        """Re-render the process of ``service_group``; reconfigure or replace it."""
        self._core.groupconfig.config_changed(service_group, config)

    def link_changed(self, link: LinkStatus) -> None:
        """Record in the event log when the link to the cluster goes down or comes back."""
        if link.connected == self._connected:
            return
        first = self._connected is None
        self._connected = link.connected
        if link.connected:
            if not first:
                self._core.events.emit("", "cluster", f"cluster link back ({link.endpoint})")
        else:
            self._core.events.emit("", "cluster", "cluster link down: "
                                   f"{link.last_error or 'no endpoint answers'}; services "
                                   "keep running, the census is the last known one")

    # ------------------------------------------------------------------ reading
    def census(self, service_group: str | None = None) -> dict[str, Any]:
        """The census as JSON (``GET /v1/census``); ``service_group`` keeps only that one.

        Raises:
            NotFound: no member of ``service_group`` is known.
        """
        census = self.backend.census()
        data = census.to_json()
        data["member"] = self.backend.identity.member
        data["backend"] = self.backend.link().backend
        if service_group is not None:
            if service_group not in data["groups"]:
                known = ", ".join(data["groups"]) or "none"
                raise NotFound(f"no member of service group {service_group!r} is known "
                               f"(known: {known})")
            data["groups"] = {service_group: data["groups"][service_group]}
        return data

    def link(self) -> dict[str, Any]:
        """The link's status for ``sup status``, plus the advertised address and host."""
        identity = self.backend.identity
        return {**self.backend.link().to_json(), "host": identity.host,
                "address": identity.address}
