"""Liveness: whether an instance's process is ready and stays well.  The start timers
(``readiness: started``, ``start_timeout``), the health watch and its verdicts, the
notify socket (``READY=1``) and the watchdog (``WATCHDOG=1``).  A failure restarts the
instance through the machine."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from corral.health.probes import Result
from corral.spec import ProcessSpec
from corral.states import LIVE_STATES, HealthState, ServiceState

from . import notify
from .identity import identity
from .instance import Instance
from .machine import Trigger
from .watch import HealthWatch

if TYPE_CHECKING:
    from .loop import Supervisor


class Liveness:
    """Watches the readiness and health of ``core``'s instances."""

    def __init__(self, core: Supervisor) -> None:
        self._core = core

    def arm_start(self, inst: Instance, spec: ProcessSpec) -> None:
        """Readiness of a new process under ``readiness: started`` (once it has run
        ``start_seconds``), and the ``start_timeout`` by which it must be ready and, with a
        health check, have passed it."""
        loop = asyncio.get_running_loop()
        pid = inst.pid
        if spec.readiness == "started":
            if spec.start_seconds <= 0:
                self._core.feed(inst, Trigger.READY, f"running as pid {pid}")
            else:
                inst.ready_timer = loop.call_later(spec.start_seconds, self._stayed_up,
                                                   inst, pid, spec.start_seconds)
        if spec.readiness != "started" or spec.health is not None:
            inst.start_timer = loop.call_later(spec.start_timeout, self._start_overdue,
                                               inst, pid, spec)

    def _stayed_up(self, inst: Instance, pid: int | None, seconds: float) -> None:
        inst.ready_timer = None
        if inst.pid == pid and inst.state is ServiceState.STARTING:
            self._core.feed(inst, Trigger.READY, f"running for {seconds:g}s as pid {pid}")

    def _start_overdue(self, inst: Instance, pid: int | None, spec: ProcessSpec) -> None:
        """``start_timeout`` after the spawn: a process not ready by then, or (with a health
        check) that never passed it, has failed its start."""
        inst.start_timer = None
        if inst.pid != pid or inst.state not in LIVE_STATES:
            return
        ready = inst.state is not ServiceState.STARTING
        if ready and (spec.health is None or inst.passed):
            return
        why = (f"not ready within {spec.start_timeout:g}s" if not ready
               else f"no passing health check within {spec.start_timeout:g}s")
        self._core.events.emit(inst.service, "health", f"restarting: {why}", instance=inst.index,
                         pid=pid)
        self.restart(inst, why)

    def listen_notify(self, inst: Instance, spec: ProcessSpec) -> None:
        name = notify.socket_name(self._core.state_dir, inst.launcher_name)
        try:
            inst.notify = notify.NotifySocket(name, lambda f, pid: self.on_notify(inst, f, pid))
        except OSError as exc:
            self._core.events.emit(inst.service, "state", f"cannot listen on NOTIFY_SOCKET {name}: "
                             f"{exc.strerror}; readiness will never be reported",
                             instance=inst.index)

    def on_notify(self, inst: Instance, fields: notify.Fields, sender: int) -> None:
        """A notify message from process ``sender`` (0: unknown): believed only when the
        sender is one of the instance's own processes."""
        service = self._core.services.get(inst.service)
        if service is None:
            return
        if inst.pid is None:
            # Its spawn has not answered yet: judge the sender once the pid is known, by
            # its lineage now (it may be gone by then).
            if inst.spawned is not None and not inst.spawned.done() \
                    and len(inst.early_notify) < 16:
                inst.early_notify.append((fields, notify.lineage(sender) if sender
                                          else frozenset()))
            return
        if not sender or not notify.from_tree(sender, inst.pid):
            if inst.notify is not None:
                inst.notify.ignored += 1
                if inst.notify.ignored == 1:  # one event: a flood must not fill the history
                    who = f"pid {sender}" if sender else "an unknown sender"
                    self._core.events.emit(inst.service, "notify",
                                     f"ignored a notify message from {who}: not a process "
                                     f"of this instance", instance=inst.index, pid=inst.pid)
            return
        if (fields.get("READY") == "1" and inst.state is ServiceState.STARTING
                and service.spec.readiness == "notify"):
            self._core.feed(inst, Trigger.READY, "ready (READY=1 on NOTIFY_SOCKET)")
        if fields.get("WATCHDOG") == "1" and inst.watchdog_timer is not None:
            self.arm_watchdog(inst, service.spec)

    def arm_watchdog(self, inst: Instance, spec: ProcessSpec) -> None:
        """(Re)start the watchdog countdown: no WATCHDOG=1 within ``watchdog`` -> restart."""
        if inst.watchdog_timer is not None:
            inst.watchdog_timer.cancel()
        assert spec.watchdog is not None
        pid = inst.pid

        def expired() -> None:
            inst.watchdog_timer = None
            if inst.pid != pid or inst.state not in LIVE_STATES:
                return
            why = f"no WATCHDOG=1 for {spec.watchdog:g}s"
            self._core.events.emit(inst.service, "watchdog", f"restarting: {why}",
                             instance=inst.index, pid=pid)
            self.restart(inst, why)
        inst.watchdog_timer = asyncio.get_running_loop().call_later(spec.watchdog, expired)

    def watch(self, inst: Instance, spec: ProcessSpec) -> None:
        assert spec.health is not None and inst.pid is not None
        if inst.watch is not None:
            inst.watch.stop()
        inst.failures = 0
        health = spec.health
        if health.http is not None and health.http.service is not None:
            # The port this instance got for that service (socket mode: the service's own).
            name = health.http.service
            port = self._core.traffic.port_of(inst, name)
            if port is not None:
                health = health.model_copy(update={"http": health.http.model_copy(
                    update={"port": port, "service": None})})
        inst.watch = HealthWatch(health, inst.pid, self._core.environment.of(inst, spec),
                                 self._core.workdirs.cwd(inst, spec),
                                 lambda pid, result: self._on_health(inst, pid, result),
                                 self._core.probe)
        inst.watch.user, inst.watch.group = identity(spec)
        inst.watch.start()

    def unwatch(self, inst: Instance) -> None:
        if inst.watchdog_timer is not None:
            inst.watchdog_timer.cancel()
            inst.watchdog_timer = None
        for timer in (inst.ready_timer, inst.start_timer):
            if timer is not None:
                timer.cancel()
        inst.ready_timer = inst.start_timer = None
        if inst.watch is not None:
            inst.watch.stop()
            inst.watch = None

    def _on_health(self, inst: Instance, pid: int, result: Result) -> None:
        """A probe finished: update health, readiness and, past `retries`, restart."""
        if inst.pid != pid or inst.state not in LIVE_STATES:
            return
        spec = self._core.spec_of(inst)
        health = spec.health
        assert health is not None
        if result.state is not inst.health:
            self._core.events.emit(inst.service, "health", f"health {result.state.value}: "
                             f"{result.detail}", instance=inst.index, pid=pid)
            inst.health = result.state
            self._core.waiters.wake()  # a rollout may be waiting for this instance to be healthy
            if self._core.traffic.target_services:
                self._core.traffic.dirty()
        self._core.traffic.probed(inst)
        if result.state in (HealthState.OK, HealthState.WARNING):
            inst.failures = 0
            inst.passed = True
            if inst.state is ServiceState.STARTING:
                # Readiness needs ok: a warning is never ready.
                if result.state is HealthState.OK and spec.readiness == "health":
                    self._core.feed(inst, Trigger.READY, f"ready: {result.detail}")
            elif inst.state is ServiceState.UNHEALTHY:
                self._core.feed(inst, Trigger.HEALTHY, f"healthy again: {result.detail}")
            return
        if not inst.passed:
            return  # starting is not unhealthy: only start_timeout fails a start
        inst.failures += 1
        if inst.failures < health.retries:
            return
        why = f"unhealthy after {inst.failures} failed checks: {result.detail}"
        if inst.state is ServiceState.UP:
            self._core.events.emit(inst.service, "health", why, instance=inst.index, pid=pid)
            self._core.feed(inst, Trigger.UNHEALTHY, why)
        if not health.restart_on_unhealthy:
            return
        other = self._out_for_restart(inst)
        if other is not None:
            # One instance of a process at a time: this one keeps its place (and keeps
            # being checked) until the other is back.
            wait = f"unhealthy; waiting for instance {other.index} to be back before " \
                   "restarting"
            if inst.reason != wait:
                inst.reason = wait
                self._core.events.emit(inst.service, "health", wait, instance=inst.index, pid=pid)
            return
        inst.failures = 0
        self.restart(inst, why)

    def _out_for_restart(self, inst: Instance) -> Instance | None:
        """Another instance of the same process that is on its way back (stopping,
        starting, backing off, or up but not past its first health check), if any."""
        service = self._core.services[inst.service]
        checked = service.spec.health is not None
        for other in service.instances.values():
            if other is inst:
                continue
            if (other.state in (ServiceState.STOPPING, ServiceState.STARTING,
                                ServiceState.BACKOFF)
                    or (other.state is ServiceState.DOWN and not other.stays_down)
                    or (other.state is ServiceState.UP and checked and not other.passed)):
                return other
        return None

    def restart(self, inst: Instance, why: str) -> None:
        """Stop ``inst`` for a fault; once stopped, the restart policy decides when it
        starts again (see :meth:`.Effects._terminated`)."""
        if inst.state in LIVE_STATES:
            inst.fault = why
            self._core.feed(inst, Trigger.RESTART, f"restarting: {why}")
