"""The effects that talk to the launcher: spawning an instance (with what must happen
before: the init hook, a fresh working directory, the ``before`` script), terminating
it, and the backoff timer between a death and the next start.  The machine's actions
(:class:`.machine.Action`) end up here; so do the standing orders (:mod:`.orders`) that
go with a spawn, and the respawns the launcher carries out for them."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

from corral.balancer.ports import port_taken
from corral.errors import CorralError, SpawnFailed, StateWriteFailed
from corral.protocol import messages as m
from corral.protocol import paths
from corral.spec import ProcessSpec, StopSpec
from corral.states import Desired, HealthState, ServiceState

from . import notify, policy, spawn_request
from .clock import Clock
from .events import rfc3339
from .hooks import HookResult
from .identity import identity
from .instance import Instance
from .launcher_client import Message, check
from .machine import Trigger
from .orders import Orders

if TYPE_CHECKING:
    from .loop import Supervisor

# The machine's trigger for each verdict of the restart policy on an exit.
EXIT_TRIGGERS = {
    policy.Verdict.RESTART_NOW: Trigger.EXIT_RESTART,
    policy.Verdict.RESTART_LATER: Trigger.EXIT_BACKOFF,
    policy.Verdict.STAY_DOWN: Trigger.EXIT_DOWN,
    policy.Verdict.GIVE_UP: Trigger.EXIT_GIVE_UP,
}
# ... and for each verdict on the end of a stop for a fault.
STOPPED_TRIGGERS = {
    policy.Verdict.RESTART_NOW: Trigger.STOPPED_RESTART,
    policy.Verdict.RESTART_LATER: Trigger.STOPPED_BACKOFF,
    policy.Verdict.STAY_DOWN: Trigger.STOPPED_DOWN,
    policy.Verdict.GIVE_UP: Trigger.STOPPED_GIVE_UP,
}

_DEFAULT_STOP = StopSpec()


class Effects:
    """Spawns, terminates and schedules the restarts of ``core``'s instances.

    Attributes:
        spawn_base: per launcher name, the launcher's Spawn count before the current
            record's first spawn (a name run again after an unload, a revert, a
            scale-down): restarts are the launcher's count less this, so a new supervisor
            shows the same number.
    """

    def __init__(self, core: Supervisor) -> None:
        self._core = core
        self.spawn_base = core.files.spawn_base()
        self.orders = Orders(core)

    def spawn(self, inst: Instance) -> None:
        spec = self._core.spec_of(inst)
        assert self._core.launcher is not None
        # The launcher carries out the standing order: no Spawn (and the new process may
        # hold its ports already).
        respawn = self.orders.respawn_of(inst)
        if inst.ports and respawn is None:
            taken = [n for n, port in inst.ports.items() if port_taken(port)]
            if taken:  # another program took it while the instance was down
                self._core.traffic.replace_ports(inst, taken)
                inst.spawn_request = None  # rebuilt below with the new SERVICE_PORT_*
        # The encoded request is kept per instance and spec: a restart costs one frame
        # write, not an environment copy, a mkdir and a JSON encoding.
        if inst.spawn_request is None or inst.spawn_request[0] is not spec:
            try:
                inst.spawn_request = (spec, self._spawn_request(inst, spec))
            except Exception as exc:  # a secret gone, no free port, a disk error
                # ... fails like a spawn (backs off), never leaves it starting for good.
                if not isinstance(exc, CorralError):
                    exc = SpawnFailed(m.E_EXEC_FAILED, f"cannot prepare the spawn: "
                                      f"{type(exc).__name__}: {exc}")
                failed: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
                failed.set_exception(exc)
                inst.spawned = asyncio.get_running_loop().create_future()
                self._core.background(self._spawned(inst, failed, inst.spawned))
                return
        if (spec.readiness == "notify" or spec.watchdog is not None) and inst.notify is None:
            self._core.liveness.listen_notify(inst, spec)
        inst.next_restart_at = None
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        inst.spawned = done
        if respawn is not None:
            self._core.background(self._spawned(inst, respawn, done, respawned=True))
            return
        if ((spec.hooks.init is not None and not inst.init_done) or spec.resources
                or spec.before is not None or spec.templates):
            self._core.background(self._guarded_prepare(inst, spec, done))
            return
        future = self._core.launcher.send_encoded(inst.spawn_request[1],
                                                  self.orders.for_spawn(inst, spec))
        self._core.background(self._spawned(inst, future, done))

    async def _guarded_prepare(self, inst: Instance, spec: ProcessSpec,
                               done: asyncio.Future[None]) -> None:
        """:meth:`_prepare_then_spawn`, with any unexpected error handled as a failed spawn
        (it backs off) rather than an instance left starting with no process."""
        try:
            await self._prepare_then_spawn(inst, spec, done)
        except Exception as exc:
            if done.done() or inst.state is not ServiceState.STARTING:
                raise
            failed: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
            failed.set_exception(SpawnFailed(m.E_EXEC_FAILED, "cannot prepare the spawn: "
                                             f"{type(exc).__name__}: {exc}"))
            await self._spawned(inst, failed, done)

    async def _prepare_then_spawn(self, inst: Instance, spec: ProcessSpec,
                                  done: asyncio.Future[None]) -> None:
        """Before the spawn, off the loop's time: the init hook (before a start a user or
        the target asked for), a fresh working directory with the process's resources, and
        its ``before`` script.  A failure backs off like a crash (so it does not spin)."""
        result = HookResult(True, "", [])
        if spec.hooks.init is not None and not inst.init_done:
            result = await self.hook(inst, spec, "init", spec.hooks.init)
        if result.ok and (spec.resources or spec.before is not None or spec.templates):
            result = await self._prepare_workdir(inst, spec)
        if inst.state is not ServiceState.STARTING or self._core.launcher is None:
            if not done.done():
                done.set_result(None)
            if inst.state is ServiceState.STOPPING:
                self._core.feed(inst, Trigger.STOPPED, "stopped before it started")
            return
        if not result.ok:
            inst.failed_run = True
            if not done.done():
                done.set_result(None)
            decision = policy.decide_spawn_failure(spec.restart, inst.streak, result.summary,
                                                   self._core.uniform)
            inst.streak, inst.delay = decision.streak, decision.delay
            self._core.feed(inst, EXIT_TRIGGERS[decision.verdict], decision.reason)
            return
        inst.init_done = True
        if inst.spawn_request is None or inst.spawn_request[0] is not spec:
            # Dropped meanwhile: a group config or a bind changed its environment.
            inst.spawn_request = (spec, self._spawn_request(inst, spec))
        future = self._core.launcher.send_encoded(inst.spawn_request[1],
                                                  self.orders.for_spawn(inst, spec))
        await self._spawned(inst, future, done)

    async def _prepare_workdir(self, inst: Instance, spec: ProcessSpec) -> HookResult:
        """A fresh working directory (unless ``cwd`` is given) with the process's resources
        in place, then its ``before`` script run there; the result says what failed."""
        effective = self._core.environment.effective(spec, inst)
        workdir = Path(self._core.workdirs.cwd(inst, spec))
        try:
            await asyncio.to_thread(self._core.workdirs.fresh, inst, spec, workdir)
            for ref in effective.resources:
                await asyncio.to_thread(self._core.resources.place, ref.id, workdir, ref.file)
            # Rendered over placed resources: a template may be a resource itself.
            await self._core.groupconfig.write(spec, workdir)
        except (OSError, CorralError) as exc:
            detail = exc.strerror if isinstance(exc, OSError) else str(exc)
            summary = f"cannot prepare {workdir}: {detail}"
            self._core.events.emit(inst.service, "prepare", summary, instance=inst.index)
            return HookResult(False, summary, [])
        if effective.before is None:
            return HookResult(True, "", [])
        return await self.hook(inst, spec, "before", effective.before)

    async def hook(self, inst: Instance, spec: ProcessSpec, hook: str,
                    command: str) -> HookResult:
        env = self._core.environment.of(inst, spec)
        env.update(self._core.groupconfig.last_env(spec))
        if inst.pid is not None:
            env["CORRAL_PID"] = str(inst.pid)
        user, group = identity(spec)
        result = await self._core.run_hook(
            hook, command, env=env, cwd=self._core.workdirs.cwd(inst, spec), user=user,
            group=group, timeout=spec.hooks.timeout,
            log=paths.service_log(self._core.state_dir, spec.name), clock=self._core.clock)
        self._core.events.emit(inst.service, "hook", result.summary, instance=inst.index,
                         pid=inst.pid, last_lines=self._core.redact(result.output))
        return result

    async def hook_later(self, inst: Instance, hook: str, command: str) -> None:
        service = self._core.services.get(inst.service)
        if service is not None:
            await self.hook(inst, service.spec, hook, command)

    def _spawn_request(self, inst: Instance, spec: ProcessSpec) -> bytes:
        ports = self._core.traffic.service_ports(inst, spec)  # first: ${SERVICE_PORT_*} used below
        cwd = self._core.workdirs.cwd(inst, spec)
        env = self._core.environment.of(inst, spec)
        if spec.readiness == "notify" or spec.watchdog is not None:
            env["NOTIFY_SOCKET"] = notify.socket_name(self._core.state_dir, inst.launcher_name)
        if spec.watchdog is not None:
            env["WATCHDOG_USEC"] = str(int(spec.watchdog * 1_000_000))
        env.update(self._core.groupconfig.env(spec))
        env.update(ports)
        user, group = identity(spec)
        return spawn_request.build(
            inst.launcher_name, spec, self._core.environment.effective(spec, inst).argv, env, cwd,
            user, group, paths.service_log(self._core.state_dir, spec.name),
            self._core.traffic.sockets_for(spec))

    async def _spawned(self, inst: Instance, reply: asyncio.Future[Message],
                       done: asyncio.Future[None], respawned: bool = False) -> None:
        try:
            answer = check(await reply)
        except CorralError as exc:
            inst.spawn_request = None  # rebuild it (and its working directory) next time
            service = self._core.services.get(inst.service)
            # The launcher's message may quote the argv, which may hold a secret.
            why = self._core.redact([str(exc)])[0]
            if why != str(exc):
                exc = SpawnFailed(getattr(exc, "launcher_code", m.E_EXEC_FAILED), why)
            if not done.done():
                done.set_exception(exc)
                done.exception()  # mark retrieved: a caller may not be waiting
            if inst.state is ServiceState.STOPPING:
                self._core.feed(inst, Trigger.STOPPED, "stopped before it started")
            if service is None or inst.state is not ServiceState.STARTING:
                return
            decision = policy.decide_spawn_failure(service.spec.restart, inst.streak, why,
                                                   self._core.uniform)
            inst.streak, inst.delay = decision.streak, decision.delay
            self._core.events.emit(inst.service, "spawn_failed", decision.reason,
                             instance=inst.index, delay_s=decision.delay)
            self._core.feed(inst, EXIT_TRIGGERS[decision.verdict], decision.reason)
            return
        inst.pid = int(answer["pid"])
        # A new process: CPU % comes from its own two readings, never against the last
        # reading of the process it replaces.
        inst.usage, inst.cpu = None, None
        inst.started_at = float(answer.get("started_at", self._core.clock.time()))
        self._count_spawn(inst, answer.get("spawns"))
        inst.stays_down = False
        inst.health = HealthState.UNKNOWN
        inst.passed, inst.fault = False, None
        if not done.done():
            done.set_result(None)
        self._core.events.emit(inst.service, "spawn", f"spawned pid {inst.pid}", instance=inst.index,
                         pid=inst.pid)
        spec = self._core.spec_of(inst)
        self.orders.spawned(inst, spec, respawned)
        if spec.health is not None and inst.state is ServiceState.STARTING:
            self._core.liveness.watch(inst, spec)
        if spec.watchdog is not None and inst.state is ServiceState.STARTING:
            self._core.liveness.arm_watchdog(inst, spec)
        if inst.state is ServiceState.STARTING:
            self._core.liveness.arm_start(inst, spec)
        elif inst.state is ServiceState.STOPPING:
            self.terminate(inst)  # a stop came while the spawn was on its way
        early_notify, inst.early_notify = inst.early_notify, []
        for fields, lineage in early_notify:
            self._core.liveness.on_notify(inst, fields, inst.pid if inst.pid in lineage else 0)
        early, inst.early_exit = inst.early_exit, None
        if early is not None and early.get("pid") == inst.pid:
            self._core.on_exit(early)  # it died before we knew its pid: handle that now

    def _count_spawn(self, inst: Instance, launcher_count: object) -> None:
        """One more spawn of ``inst``.  With the launcher's count for its name, the
        instance's count follows it, less the name's base: the launcher's count before
        this record's first spawn (kept in ``run/spawn_base.json``, so that the next
        supervisor, which learns counts from the launcher, shows the same restarts)."""
        if not isinstance(launcher_count, int):  # a launcher that does not say
            inst.spawns += 1
            return
        name = inst.launcher_name
        if inst.spawns == 0 and self.spawn_base.get(name, 0) != launcher_count - 1:
            self.spawn_base[name] = launcher_count - 1
            live = {i.launcher_name for s in self._core.services.values()
                    for i in (*s.instances.values(), *s.retiring.values())}
            self.spawn_base = {n: b for n, b in self.spawn_base.items() if b and n in live}
            try:
                self._core.files.save_spawn_base(self.spawn_base)
            except StateWriteFailed as exc:  # only the next supervisor's count is off
                self._core.events.emit(inst.service, "state_write", str(exc))
        inst.spawns = launcher_count - self.spawn_base.get(name, 0)

    def terminate(self, inst: Instance) -> None:
        self._core.liveness.unwatch(inst)
        self.orders.stopping(inst)
        if inst.pid is None:
            # The spawn has not answered yet; _spawned terminates once it has a pid.
            if inst.spawned is None or inst.spawned.done():
                self._core.feed(inst, Trigger.STOPPED, "stopped before it started")
            return
        spec = self._core.spec_of(inst)
        assert self._core.launcher is not None
        future = self._core.launcher.send_request({"type": m.TERMINATE, "pid": inst.pid,
                                             "signal": spec.stop.signal,
                                             "timeout": spec.stop.timeout})
        self._core.background(self._terminated(inst, future))

    async def _terminated(self, inst: Instance, reply: asyncio.Future[Message]) -> None:
        try:
            answer = await reply
        except CorralError:
            return
        method = str(answer.get("method", m.ALREADY_EXITED))
        answer["pid"] = inst.pid
        inst.last_exit = exit_record(answer, method, self._core.clock)
        self._core.events.emit(inst.service, "stop", f"stopped ({method.replace('_', ' ')})",
                         instance=inst.index, pid=inst.pid, exit_code=answer.get("exit_code"),
                         signal=answer.get("signal"))
        self.strays_event(inst, answer)
        ran_for = self._core.clock.time() - (inst.started_at or self._core.clock.time())
        inst.pid = None
        fault, inst.fault = inst.fault, None
        if fault is not None and self._restart_wanted(inst):
            self._after_fault(inst, fault, ran_for)
            return
        self._core.feed(inst, Trigger.STOPPED, f"stopped ({method.replace('_', ' ')})")

    def strays_event(self, inst: Instance, report: Message) -> None:
        """A ``strays`` event when the launcher killed processes the instance left behind
        (daemons that left its process group, without a cgroup to hold them)."""
        strays = report.get("strays")
        if not isinstance(strays, list) or not strays:
            return
        pids = ", ".join(str(pid) for pid in strays)
        self._core.events.emit(
            inst.service, "strays",
            f"killed {len(strays)} process{'es' if len(strays) != 1 else ''} "
            f"it left behind (pid{'s' if len(strays) != 1 else ''} {pids})",
            instance=inst.index, pid=report.get("pid"))

    def _restart_wanted(self, inst: Instance) -> bool:
        """Whether ``inst``, stopped for a fault, is still wanted running (nobody asked for
        a stop, a scale-down or a replacement meanwhile)."""
        service = self._core.services.get(inst.service)
        return (service is not None and not self._core.stopping_all
                and service.desired is Desired.UP and inst.gen == service.gen
                and service.instances.get(inst.index) is inst
                and inst.index < service.spec.instances)

    def _after_fault(self, inst: Instance, why: str, ran_for: float) -> None:
        """An instance stopped for a fault: the restart policy decides, as after a crash,
        and a restart waits for dependencies that are not ready."""
        service = self._core.services[inst.service]
        decision = policy.decide_restart(service.spec.restart, why, ran_for, inst.streak,
                                         self._core.uniform)
        inst.streak, inst.delay = decision.streak, decision.delay
        blocked = self._core.restart_blocked(service, decision.verdict)
        if blocked:
            self._core.feed(inst, Trigger.STOPPED_WAIT, f"{why}; waiting for "
                            f"{', '.join(blocked)} to be ready")
        else:
            self._core.feed(inst, STOPPED_TRIGGERS[decision.verdict], decision.reason)

    def terminate_pid(self, pid: int, spec: ProcessSpec | None) -> None:
        """Stop a process no instance owns (``spec``: how its process is stopped; None
        for one whose process is no longer loaded: the default stop)."""
        stop = spec.stop if spec is not None else _DEFAULT_STOP
        assert self._core.launcher is not None
        self._core.launcher.send_request({"type": m.TERMINATE, "pid": pid,
                                          "signal": stop.signal, "timeout": stop.timeout})

    def schedule(self, inst: Instance) -> None:
        self._cancel_timer(inst)
        inst.next_restart_at = self._core.clock.time() + inst.delay
        inst.timer = asyncio.get_running_loop().call_later(inst.delay, self._backoff_over, inst)
        self._core.events.emit(inst.service, "restart_scheduled",
                         f"restart in {inst.delay:.2f}s", instance=inst.index,
                         delay_s=round(inst.delay, 3))

    def _backoff_over(self, inst: Instance) -> None:
        """The backoff delay is over: restart, or wait for dependencies not ready yet."""
        inst.timer = None
        service = self._core.services.get(inst.service)
        blocked = self._core.restart_blocked(service, policy.Verdict.RESTART_LATER) \
            if service is not None else ()
        if blocked:
            self._core.feed(inst, Trigger.WAIT, f"waiting for {', '.join(blocked)} to be ready")
        else:
            self._core.feed(inst, Trigger.TIMER, "backoff over; restarting")

    def cancel(self, inst: Instance) -> None:
        """Cancel the backoff timer and the standing order (and a respawn the launcher
        waits to carry out for it)."""
        self._cancel_timer(inst)
        self.orders.cancel(inst)

    def _cancel_timer(self, inst: Instance) -> None:
        if inst.timer is not None:
            inst.timer.cancel()
            inst.timer = None
        inst.next_restart_at = None


def exit_record(message: Message, stop: str | None, clock: Clock) -> dict[str, Any]:
    """What ``status`` shows of a run's end (``stop``: how a Terminate ended it); the
    message's own time, else now."""
    at = message.get("at")
    return {"exit_code": message.get("exit_code"), "signal": message.get("signal"),
            "at": rfc3339(float(at if at is not None else clock.time())), "stop": stop,
            "pid": message.get("pid")}
