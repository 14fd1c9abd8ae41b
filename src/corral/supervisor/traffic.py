"""Traffic: ports, the load balancer's backends, draining, and bind checks.

Each instance of a process that receives a proxy-mode service gets its own port
(``SERVICE_PORT_<NAME>``), allocated on its first spawn, kept across its restarts and
recorded in ``run/ports.json`` (a new supervisor adopts them).  Whenever something that
decides who gets traffic changes, the backends (instances up and healthy, or draining)
are pushed to the balancer, once per loop turn.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from corral.balancer.ports import PortAllocator, PortsExhausted
from corral.errors import CorralError, LauncherError, SpawnFailed, StateWriteFailed
from corral.spec import Problem, ProcessSpec, ServiceSpec, Target, refuse
from corral.states import HealthState, ServiceState
from corral.store import subst

from .balancing import Backend, Balancer
from .clock import Clock
from .events import EventLog
from .instance import Instance, Service
from .launcher_client import LauncherClient
from .persistence import StateFiles


class Traffic:
    """The target's services (``target_services``) and who serves them.

    Args:
        files: where ``ports.json`` is kept.
        balancer: the load balancer's manager.
        ports: the allocator of ``SERVICE_PORT_*``.
        events: the event log.
        clock: monotonic time for the wait for adopted instances' first probes.
        processes: the loaded processes (read each time: the core replaces the mapping).
        spec_of: the spec an instance runs.
        launcher: the launcher client, once attached.
        background: runs a coroutine as a kept task.
        booting: whether the supervisor is still attaching (nothing is pushed then).
    """

    def __init__(self, files: StateFiles, balancer: Balancer, ports: PortAllocator,
                 events: EventLog, clock: Clock,
                 processes: Callable[[], Mapping[str, Service]],
                 spec_of: Callable[[Instance], ProcessSpec],
                 launcher: Callable[[], LauncherClient | None],
                 background: Callable[[Coroutine[Any, Any, None]], None],
                 booting: Callable[[], bool]) -> None:
        self._files = files
        self.balancer = balancer
        self.ports = ports
        self._events = events
        self._clock = clock
        self._processes = processes
        self.spec_of = spec_of
        self._launcher = launcher
        self.background = background
        self._booting = booting
        self.target_services: list[ServiceSpec] = []
        self.held_ports = files.ports()
        self._pending = False
        self._last: object = None
        # Adopted instances whose health this supervisor has not seen yet: until each has
        # had one probe (or the deadline passes), the balancer keeps the set the previous
        # supervisor gave it, rather than losing every backend whose health is unknown.
        self._unprobed: set[str] = set()
        self._unprobed_until = 0.0

    def adopt_ports(self, inst: Instance) -> None:
        """Give an adopted instance the ports ``ports.json`` says it holds."""
        inst.ports = {k: int(v) for k, v in self.held_ports.get(inst.launcher_name,
                                                                {}).items()}
        for port in inst.ports.values():
            self.ports.reserve(port)

    def release(self, inst: Instance) -> None:
        """An instance ended for good: its ports go back to the allocator."""
        if inst.ports:
            for port in inst.ports.values():
                self.ports.release(port)
            inst.ports = {}
            self.save_ports()

    def hold_until_probed(self, inst: Instance, wait: float) -> None:
        """Push no backends until adopted ``inst`` has had a probe, or ``wait`` seconds."""
        self._unprobed.add(inst.launcher_name)
        self._unprobed_until = max(self._unprobed_until, self._clock.monotonic() + wait)

    def push_when_probed(self) -> None:
        """After attach: push at the deadline of :meth:`hold_until_probed` at the latest."""
        if self._unprobed:
            asyncio.get_running_loop().call_later(
                self._unprobed_until - self._clock.monotonic(), self.dirty)

    def probed(self, inst: Instance) -> None:
        """``inst`` had a probe: the last one awaited lets the backends be pushed."""
        if self._unprobed:
            self._unprobed.discard(inst.launcher_name)
            if not self._unprobed:
                self.dirty()

    def sockets_for(self, spec: ProcessSpec) -> list[str]:
        """The socket-mode services whose listening sockets ``spec``'s processes get."""
        return [s.name for s in self.target_services
                if s.mode == "socket" and s.name in spec.receives]

    def port_of(self, inst: Instance, service: str) -> int | None:
        """The port ``inst`` serves ``service`` on: its own (proxy mode), else the
        service's (socket mode); None for a service that is not in the target."""
        svc = next((s for s in self.target_services if s.name == service), None)
        return inst.ports.get(service) or (svc.port if svc is not None else None)

    def save_ports(self) -> None:
        """Persist which instance holds which port (a new supervisor adopts them); a
        refused write is an event, not an error."""
        held = {i.launcher_name: i.ports for s in self._processes().values()
                for i in (*s.instances.values(), *s.retiring.values()) if i.ports}
        self.held_ports = held
        try:
            self._files.save_ports(held)
        except StateWriteFailed as exc:  # a cache for the next supervisor: spawns go on
            self._events.emit("", "state_write", str(exc))

    def service_ports(self, inst: Instance, spec: ProcessSpec) -> dict[str, str]:
        """``SERVICE_PORT_<NAME>`` for each proxy-mode service ``spec`` receives, from the
        instance's own ports (allocated on its first spawn, kept across its restarts)."""
        proxied = [s.name for s in self.target_services
                   if s.mode == "proxy" and s.name in spec.receives]
        if not proxied:
            return {}
        if any(name not in inst.ports for name in proxied):
            for name in proxied:
                if name not in inst.ports:
                    try:
                        inst.ports[name] = self.ports.allocate()
                    except PortsExhausted as exc:
                        raise SpawnFailed("PortsExhausted",
                                          f"no free port for service {name}: {exc}") from None
            self.save_ports()
        return {subst.port_variable(n): str(inst.ports[n]) for n in proxied}

    def replace_ports(self, inst: Instance, names: list[str]) -> None:
        """Give ``inst`` new ports for ``names``, whose ports another program holds now (it
        was down: a port kept for it is reserved in ``ports.json`` only, and another corral
        on the host, or anything else, may have bound it)."""
        for name in names:
            old = inst.ports[name]
            try:
                inst.ports[name] = self.ports.replace(old)
            except PortsExhausted:
                continue  # the spawn fails to bind and backs off; the next one tries again
            self._events.emit(inst.service, "port", f"port {old} for service {name} is taken "
                             f"by another program; using {inst.ports[name]}",
                             instance=inst.index)
        self.save_ports()

    def dirty(self) -> None:
        """Something that decides who gets traffic changed: push the backends soon (once
        per loop turn, however many instances changed in it)."""
        if self._pending or self._booting():
            return
        self._pending = True
        asyncio.get_running_loop().call_soon(
            lambda: self.background(self.push()))

    def backends(self) -> dict[str, list[Backend]]:
        """Per proxy service: the ready, healthy instances of every process receiving it
        (``active``), and those being drained (``draining``)."""
        out: dict[str, list[Backend]] = {s.name: [] for s in self.target_services
                                         if s.mode == "proxy"}
        for service in self._processes().values():
            for inst in (*service.instances.values(), *service.retiring.values()):
                if inst.pid is None or not inst.ports:
                    continue
                spec = self.spec_of(inst)
                live = inst.state is ServiceState.UP and (
                    spec.health is None or inst.health in (HealthState.OK,
                                                           HealthState.WARNING))
                if not (live or inst.draining) or inst.state is ServiceState.STOPPING:
                    continue
                for name, port in inst.ports.items():
                    if name in out:
                        out[name].append(Backend(inst.launcher_name, "127.0.0.1", port,
                                                 "draining" if inst.draining else "active"))
        return out

    async def push(self) -> None:
        self._pending = False
        if self._unprobed and self._clock.monotonic() < self._unprobed_until:
            return  # pushed once they are probed (or at the deadline): see hold_until_probed
        services = [s for s in self.target_services if s.mode == "proxy"]
        backends = self.backends()
        wanted = (services, backends)
        if wanted == self._last:
            return
        self._last = wanted
        try:
            errors = await self.balancer.configure(services, backends)
        except CorralError as exc:
            self._last = None
            self._events.emit("", "balancer", f"cannot configure the load balancer: {exc}")
            return
        for name, reason in errors.items():
            if reason:
                self._events.emit("", "balancer", f"service {name}: {reason}")

    async def drain(self, inst: Instance) -> None:
        """Take ``inst`` out of the balancer: no new connections, then wait until its open
        ones finish (or each service's drain_timeout passes)."""
        names = [s.name for s in self.target_services
                 if s.mode == "proxy" and s.name in inst.ports]
        if not names:
            return
        inst.draining = True
        await self.push()
        results = await asyncio.gather(*(self.balancer.drain(n, inst.launcher_name)
                                         for n in names), return_exceptions=True)
        left = [n for n, ok in zip(names, results, strict=True) if ok is not True]
        self._events.emit(inst.service, "drain", "drained" if not left else
                         "drain timed out for " + ", ".join(left) + "; closing what is left",
                         instance=inst.index, pid=inst.pid)

    async def check_binds(self, target: Target, text: str | None, source: str,
                          hold: bool) -> None:
        """Refuse services whose address cannot be bound (in use, not local, no
        permission); an address already served keeps working.  With ``hold``, socket-mode
        addresses are bound by the launcher now (kept while the service exists).

        Raises:
            SpecError: naming the line of each service's ``on``.
        """
        current = {s.name: s for s in self.target_services}
        fresh = [(i, s) for i, s in enumerate(target.services)
                 if current.get(s.name) != s and (current.get(s.name) is None
                                                  or current[s.name].on != s.on
                                                  or current[s.name].mode != s.mode)]
        if not fresh:
            return
        problems: list[Problem] = []
        proxied = [s for _, s in fresh if s.mode == "proxy"]
        try:
            refused = await self.balancer.validate_bind(proxied) if proxied else {}
        except CorralError as exc:
            refused = {s.name: f"cannot listen on {s.on}: {exc}" for s in proxied}
        bound: list[str] = []
        launcher = self._launcher()
        for i, svc in fresh:
            reason = refused.get(svc.name)
            if svc.mode == "socket":
                assert launcher is not None
                try:
                    await launcher.listen(svc.name, svc.bind_host, svc.port)
                    bound.append(svc.name)
                except LauncherError as exc:  # ListenFailed: one line naming the address
                    reason = str(exc)
                except CorralError as exc:
                    reason = f"cannot listen on {svc.on}: {exc}"
            if reason:
                problems.append((("services", i, "on"), reason))
        if problems or not hold:
            for name in bound:
                if name not in current:
                    with contextlib.suppress(CorralError):
                        await launcher.unlisten(name)  # type: ignore[union-attr]
        if problems:
            refuse(text, source, problems)
