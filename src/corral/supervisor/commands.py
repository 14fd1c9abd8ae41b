"""The user's commands on one service: load, unload, start, stop, restart, scale, reload,
and waiting until it is ready.  Each changes what is wanted, saves it, and lets the core
reconcile."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from corral.errors import Conflict, NotReady, SpawnFailed, SpecError, StateWriteFailed
from corral.logs.reader import tail
from corral.protocol import messages as m
from corral.protocol import paths
from corral.spec import ProcessSpec, Target, validate_target
from corral.states import READY_STATES, Desired, ServiceState

from . import policy
from .instance import Service
from .rollout import Phase
from .rollout_runner import Replacing

if TYPE_CHECKING:
    from .loop import Supervisor


class Commands:
    """The service commands the API offers, run on ``core``'s processes."""

    def __init__(self, core: Supervisor) -> None:
        self._core = core

    async def load(self, spec: ProcessSpec) -> str:
        """Add or update a service; returns ``added``, ``updated`` or ``unchanged``.

        Error handling: a new service whose first spawn fails (missing binary, unknown
        user), or whose save is refused (:class:`StateWriteFailed`), is removed again and
        the error is raised: nothing changed.
        """
        existing = self._core.services.get(spec.name)
        if existing is not None and existing.spec == spec:
            return "unchanged"
        current = self._core.target()
        others = [p.to_dict() for p in current.processes if p.name != spec.name]
        # Validating the would-be target checks dependencies (unknown names, cycles).
        target = validate_target({"processes": [*others, spec.to_dict()],
                                  "services": [s.to_dict() for s in current.services]},
                                 spec.name)
        self._core.targets.check(target, None, spec.name)
        if existing is not None:
            target = Target.model_construct(
                processes=[spec if p.name == spec.name else p for p in current.processes],
                services=current.services)
            record = await self._core.targets.apply(target, None, spec.name, cause="svc load")
            await self._core.rollouts.wait()
            await self._wait_stopped(existing)
            await self._wait_spawned(existing)
            if record is not None and record.phase is Phase.FAILED:
                step = record.steps.get(spec.name)
                raise NotReady(f"{spec.name}: {record.reason}; {record.outcome()}",
                               step.last_lines if step else [])
            return "updated"
        service = Service(spec=spec)
        self._core.services[spec.name] = service
        self._core.specs_changed()
        self._core.events.emit(spec.name, "load", "loaded")
        self._core.reconcile()
        try:
            await self._wait_spawned(service)
            self._core.save()
        except (SpawnFailed, StateWriteFailed):
            await self._remove(service)
            raise
        return "added"

    async def unload(self, name: str) -> None:
        service = self._core.get(name)
        users = sorted(s.spec.name for s in self._core.services.values()
                       if name in s.spec.depends_on)
        if users:
            raise Conflict(f"{name} cannot be unloaded: {', '.join(users)} depend on it; "
                           "unload or change those first")
        self._core.save(without={name})  # first: a refused write leaves it loaded and running
        await self._remove(service)
        self._core.events.emit(name, "unload", "unloaded")

    async def _remove(self, service: Service) -> None:
        service.desired = Desired.DOWN
        await self._core.stop_instances(service, [*service.instances.values(),
                                             *service.retiring.values()])
        for inst in [*service.instances.values(), *service.retiring.values()]:
            self._core.forget(inst)
        self._core.services.pop(service.spec.name, None)
        self._core.specs_changed()

    async def start(self, name: str) -> None:
        service = self._core.get(name)
        self._set_desired(service, Desired.UP)
        for inst in service.instances.values():
            inst.stays_down = False
            if inst.state is ServiceState.FAILED:
                inst.streak = policy.Streak()
        self._core.reconcile()
        await self._wait_spawned(service)

    async def stop(self, name: str) -> None:
        service = self._core.get(name)
        self._set_desired(service, Desired.DOWN)
        self._core.reconcile()
        await self._wait_stopped(service)

    def _set_desired(self, service: Service, desired: Desired) -> None:
        """Want ``service`` up or down, saved first: a refused write changes nothing."""
        before, service.desired = service.desired, desired
        try:
            self._core.save()
        except StateWriteFailed:
            service.desired = before
            raise

    async def restart(self, name: str) -> None:
        """Stop then start every instance; a process that receives traffic is replaced
        instance by instance instead (new one healthy, old one drained, then stopped)."""
        service = self._core.get(name)
        live = [i for i in service.instances.values() if i.pid is not None]
        if service.spec.receives and service.desired is Desired.UP and live:
            if self._core.rollouts.running():
                await self._core.rollouts.wait()
            replace: Replacing = [
                (service, service.spec, service.gen)]
            service.gen += 1
            previous = self._core.rollouts.record
            try:
                record = self._core.rollouts.begin(f"svc restart {name}", [], replace)
                self._core.save()
            except StateWriteFailed:
                self._core.rollouts.abandon(previous, replace)
                raise
            self._core.rollouts.start(record, replace)
            await self._core.rollouts.wait()
            if record.phase is Phase.FAILED:
                raise NotReady(f"restart of {name} failed: {record.reason}; "
                               f"{record.outcome()}", record.steps[name].last_lines)
            return
        self._set_desired(service, Desired.UP)
        await self._core.stop_instances(service, list(service.instances.values()))
        for inst in service.instances.values():
            inst.stays_down = False
        self._core.reconcile()
        await self._wait_spawned(service)

    async def scale(self, name: str, instances: int) -> None:
        service = self._core.get(name)
        if not 0 <= instances <= 1000:
            raise SpecError(f"instances must be between 0 and 1000, not {instances}")
        await self.load(service.spec.model_copy(update={"instances": instances}))
        if service.desired is Desired.UP:
            await self._wait_spawned(service)

    async def reload(self, name: str) -> None:
        """Run the reload hook (or send ``reload_signal``) for every running instance.

        Raises:
            Conflict: the service has neither, or no running instance.
        """
        service = self._core.get(name)
        hooks = service.spec.hooks
        if hooks.reload is None and hooks.reload_signal is None:
            raise Conflict(f"{name} has no reload hook: add hooks.reload (a command) or "
                           "hooks.reload_signal (e.g. HUP), or use: corral svc restart " + name)
        live = [i for i in service.instances.values() if i.pid is not None]
        if not live:
            raise Conflict(f"{name} has no running instance to reload")
        failed = []
        for inst in live:
            if hooks.reload is not None:
                result = await self._core.effects.hook(inst, service.spec, "reload", hooks.reload)
                if not result.ok:
                    failed.append(f"instance {inst.index}: {result.summary}")
            else:
                assert self._core.launcher is not None and inst.pid is not None
                await self._core.launcher.request({"type": m.SIGNAL, "pid": inst.pid,
                                             "signal": hooks.reload_signal})
                self._core.events.emit(name, "reload", f"sent SIG{hooks.reload_signal}",
                                 instance=inst.index, pid=inst.pid)
        if failed:
            raise Conflict(f"reload of {name} failed: " + "; ".join(failed))

    async def _wait_stopped(self, service: Service) -> None:
        await asyncio.gather(*[inst.until_stopped() for inst in service.instances.values()
                               if inst.state is ServiceState.STOPPING])

    async def _wait_spawned(self, service: Service) -> None:
        futures = [i.spawned for i in service.instances.values()
                   if i.spawned is not None and i.state is ServiceState.STARTING]
        for future in futures:
            await asyncio.shield(future)

    async def wait_ready(self, name: str, timeout: float) -> None:
        """Return once every instance of ``name`` is ready (up or unhealthy).

        Raises:
            NotReady: an instance failed or went down for good, or ``timeout`` passed;
                the message says which state and why, ``details`` the last log lines.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            service = self._core.get(name)
            insts = list(service.instances.values())
            ready = [i for i in insts if i.state in READY_STATES]
            if len(ready) >= service.spec.instances:
                return
            stuck = [i for i in insts if i.state is ServiceState.FAILED
                     or (i.state is ServiceState.DOWN and i.stays_down)]
            remaining = deadline - loop.time()
            if stuck or remaining <= 0 or service.desired is Desired.DOWN:
                pending = stuck or [i for i in insts if i not in ready] or insts
                state = (f"{pending[0].state.value}: {pending[0].reason}" if pending
                         else "no instance")
                when = "" if stuck else f" within {timeout:g}s"
                log = paths.service_log(self._core.state_dir, name)
                raise NotReady(f"{name} did not become ready{when} ({state})",
                               tail(log, 5, service.spec.logs.keep))
            await self._core.waiters.wait(remaining)
