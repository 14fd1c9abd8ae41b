"""The supervisor's control loop: feeds events to the machine and runs its actions.

Everything here runs on one asyncio loop.  Exit reports from the launcher arrive in
:meth:`Supervisor.on_exit`, are classified by :mod:`.policy`, and go through
:func:`.machine.step`; the resulting actions (spawn, terminate, schedule, cancel) are the
only places that talk to the launcher.  After anything that can change what is wanted or
what runs, :func:`.reconcile.plan` says which instances to start, stop or drop.

Desired state lives in the state directory: ``target.yaml`` (the loaded specs, in load
order) and ``desired.json`` (which services the user stopped).  Both are written
atomically before a command returns, so a supervisor started after a crash, or after a
full ``sup stop`` + ``sup run``, wants exactly what the user last asked for.
"""

from __future__ import annotations

import asyncio
import os
import random
import resource
import time
from collections.abc import Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any

from corral.balancer.ports import PortAllocator, port_taken, start_for
from corral.errors import Conflict, CorralError, NotFound, SpawnFailed, SpecError
from corral.health.probes import Result
from corral.monitor import sampler
from corral.protocol import messages as m
from corral.protocol import paths
from corral.spec import (
    ProcessSpec,
    Target,
    format_size,
    load_target,
)
from corral.states import (
    ENDED_STATES,
    LIVE_STATES,
    Desired,
    HealthState,
    ServiceState,
)
from corral.store.resources import ResourceStore
from corral.store.secrets import SecretStore, parse_env_file

from . import adoption, graph, machine, notify, policy, reconcile, spawn_request
from .balancing import Balancer
from .commands import Commands
from .environment import Environment
from .events import EventLog, rfc3339
from .hooks import HookResult, run_hook
from .identity import identity
from .instance import HISTORY_STEP, Instance, Service, parse_launcher_name
from .launcher_client import LauncherClient, Message, check
from .machine import Action, Event
from .persistence import StateFiles
from .redaction import Redactor
from .rollout_runner import RolloutRunner
from .targets import Targets
from .traffic import Traffic
from .waiting import StateWaiters
from .watch import HealthWatch
from .workdirs import Workdirs

SAMPLE_EVERY = 2.0

_EXIT_EVENTS = {
    policy.Verdict.RESTART_NOW: Event.EXIT_RESTART,
    policy.Verdict.RESTART_LATER: Event.EXIT_BACKOFF,
    policy.Verdict.STAY_DOWN: Event.EXIT_DOWN,
    policy.Verdict.GIVE_UP: Event.EXIT_GIVE_UP,
}
# The end of a Terminate: a plain stop, or one for a fault that the policy restarts.
_STOP_ENDS = frozenset({Event.STOPPED, Event.STOPPED_RESTART, Event.STOPPED_BACKOFF,
                        Event.STOPPED_GIVE_UP})


class Supervisor:
    """Keeps the loaded services in their desired state through a launcher.

    Args:
        state_dir: the state directory (``target.yaml``, ``desired.json``, ``logs/``).
        uniform: randomness for backoff jitter (deterministic in tests).
    """

    def __init__(self, state_dir: Path,
                 uniform: Callable[[float, float], float] = random.uniform) -> None:
        self.state_dir = state_dir
        self.uniform = uniform
        self.services: dict[str, Service] = {}
        self.events = EventLog(seq_file=state_dir / "event-seq.json")
        self.launcher: LauncherClient | None = None
        self.started_at = time.time()
        self.exit_code: asyncio.Future[int] | None = None
        self._booting = True
        self._early_exits: dict[str, Message] = {}
        self._base_env = {k: v for k, v in os.environ.items() if k != m.ENV_LAUNCHER_FD}
        self._stopping_all = False
        self._tasks: set[asyncio.Future[None]] = set()
        self._adopted_watch: list[Instance] = []
        self.waiters = StateWaiters()
        self._depended: frozenset[str] | None = None  # see _depended_on
        # Three kept-open /proc files per sampled instance: 3/8 of the fd limit at most.
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        budget = soft // 8 if soft != resource.RLIM_INFINITY else 5000
        self._sampler = sampler.TreeSampler(max_open=min(5000, budget))
        self._history_at = 0.0  # wall clock of the last resource history point
        self.secrets = SecretStore(state_dir / "secrets.json")
        self.resources = ResourceStore(state_dir / "resources")
        self.files = StateFiles(state_dir)
        self.environment = Environment(self._base_env, self.secrets)
        self.redact = Redactor(self.secrets)
        self.workdirs = Workdirs(state_dir, self.environment)
        low, high = _port_range(os.environ.get("CORRAL_PORT_RANGE", ""))
        self.traffic = Traffic(
            self.files, Balancer(state_dir, self._base_env),
            PortAllocator(low, high, start=start_for(
                low, high, f"{os.geteuid()}:{state_dir.resolve()}")),
            self.events, lambda: self.services, self._spec_of, lambda: self.launcher,
            self._background, lambda: self._booting)
        # Per launcher name, the launcher's Spawn count before the current record's first
        # spawn (a name run again after an unload, a revert, a scale-down): restarts are
        # the launcher's count less this, so a new supervisor shows the same number.
        self._spawn_base = self.files.spawn_base()
        self.rollouts = RolloutRunner(self)
        self.targets = Targets(self)
        self.commands = Commands(self)
        self.adopted = 0  # instances adopted from the launcher at attach
        self._boot: tuple[Target, str, str] | None = None  # sup run --target, to check

    # ------------------------------------------------------------------ start up
    def load_state(self, target_file: Path | None = None,
                   secrets_file: Path | None = None) -> None:
        """Read ``target.yaml`` and ``desired.json``; ``target_file`` (``sup run --target``)
        replaces the stored target when given: :meth:`check_boot_target` checks and saves
        it.  ``secrets_file`` (``sup run --secrets-file``, ``NAME=value`` lines) is stored
        in the secret store first.

        Raises:
            SpecError: a file cannot be read, or is not valid on its own.
        """
        path = self.files.target_path
        if secrets_file is not None:
            try:
                lines = secrets_file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                why = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text"
                raise SpecError(f"cannot read secrets file {secrets_file}: {why}") from None
            for name, value in parse_env_file(lines, str(secrets_file)).items():
                self.secrets.set(name, value)
        if target_file is not None:
            try:
                text = target_file.read_text()
            except OSError as exc:
                raise SpecError(f"cannot read target {target_file}: {exc.strerror}") from None
            target = load_target(text, str(target_file))
        elif path.exists():
            target = load_target(path.read_text(), str(path))
        else:
            target = Target()
        down, gens = self.files.desired()
        for spec in target.processes:
            desired = Desired.DOWN if spec.name in down else Desired.UP
            self.services[spec.name] = Service(spec=spec, desired=desired,
                                               gen=int(gens.get(spec.name, 0)))
        self.traffic.target_services = list(target.services)
        self.rollouts.load(replaced_target=target_file is not None
                           and (not path.exists() or path.read_text() != text))
        if target_file is not None:
            self._boot = (target, text, str(target_file))

    async def check_boot_target(self, launcher: LauncherClient) -> None:
        """Check the ``sup run --target`` file as ``target set`` would (secrets, resources,
        users, limits, addresses), before anything starts; then save it.

        Raises:
            SpecError: one line per problem; nothing was started or saved.
        """
        if self._boot is None:
            return
        target, text, source = self._boot
        self.launcher = launcher
        self.targets.check(target, text, source)
        # A new launcher holds no address yet: every service's address is checked.
        services, self.traffic.target_services = self.traffic.target_services, []
        try:
            await self.traffic.check_binds(target, text, source, hold=True)
        finally:
            self.traffic.target_services = services
        self._boot = None
        # Saved before anything is spawned (a supervisor killed right after its first
        # Spawns must leave a target that wants them), and as the file's own text: it
        # is valid, and dumping 1,000 specs as YAML would cost a cold start ~0.3 s.
        if self.files.stored_target() != text:
            self.files.save_target_text(text)
            self.files.save_desired(self.services)

    async def attach(self, launcher: LauncherClient) -> None:
        """Adopt the launcher's children (same PIDs, no restart), then reconcile."""
        self.launcher = launcher
        children = await launcher.list_children()
        for child in children:
            if not self.traffic.balancer.adopt(child):
                self._adopt(child)
        self.traffic.balancer.attach(launcher)
        for svc in self.traffic.target_services:
            if svc.mode == "socket":  # idempotent: a new launcher binds, a known one has it
                try:
                    await launcher.listen(svc.name, svc.bind_host, svc.port)
                except CorralError as exc:
                    self.events.emit("", "balancer", f"service {svc.name} cannot listen on "
                                     f"{svc.on}: {exc}")
        running = {str(c.get("name")) for c in children}
        self._booting = False
        for name, exited in self._early_exits.items():
            if name not in running:
                self._replay_exit(exited)
        self._early_exits.clear()
        for inst in self._adopted_watch:
            spec = self._spec_of(inst)
            self._watch(inst, spec)
            if inst.ports and spec.health is not None:
                self.traffic.hold_until_probed(
                    inst, spec.health.start_period + spec.health.timeout + 1.0)
        self._adopted_watch.clear()
        self.traffic.push_when_probed()
        for service in self.services.values():
            if service.spec.watchdog is None:
                continue
            for inst in service.instances.values():
                if inst.pid is not None:  # adopted: keep watching it
                    self._listen_notify(inst, service.spec)
                    self._arm_watchdog(inst, service.spec)
        self._background(self.monitor())
        self.reconcile()
        self.traffic.dirty()
        self.rollouts.resume()

    def _adopt(self, child: Message) -> None:
        """Take over a running child.  An instance of an older generation (a rollout was
        under way when the last supervisor died) is adopted too, and replaced once
        attached; a newer, unconfirmed one beside it is stopped and started again."""
        parsed = parse_launcher_name(str(child.get("name", "")))
        name, index, gen = parsed if parsed else ("", -1, 0)
        service = self.services.get(name)
        pid = int(child["pid"])
        if service is None or not adoption.wanted(service, index):
            # Not wanted any more (unloaded or stopped while no supervisor ran): stop it.
            self._terminate_pid(pid, service.spec if service else None)
            return
        present = service.instances.get(index)
        if present is not None:
            if adoption.arbitrate(present.gen, gen, service.gen) is adoption.Keep.PRESENT:
                self._terminate_pid(pid, service.spec)
                return
            assert present.pid is not None
            self._terminate_pid(present.pid, service.spec)
            if present in self._adopted_watch:
                self._adopted_watch.remove(present)
        inst = Instance(service=name, index=index, gen=gen, state=ServiceState.UP, pid=pid,
                        started_at=float(child.get("started_at", time.time())),
                        reason="adopted", passed=True, spec=self.rollouts.pinned_spec(name, gen))
        inst.spawns = max(1, int(child.get("spawns", 1)) - self._spawn_base.get(
            inst.launcher_name, 0))
        self.adopted += 1
        self.traffic.adopt_ports(inst)
        service.instances[index] = inst
        if service.spec.health is not None:
            self._adopted_watch.append(inst)
        self.events.emit(name, "adopt", f"adopted pid {pid} after a supervisor restart",
                         instance=index, pid=pid, to=inst.state.value)

    def _replay_exit(self, exited: Message) -> None:
        """An instance exited while no supervisor ran: apply its restart policy now."""
        parsed = parse_launcher_name(str(exited.get("name", "")))
        if parsed is None:
            return
        name, index, gen = parsed
        service = self.services.get(name)
        pinned = self.rollouts.pinned_spec(name, gen)  # an old instance of a resumed rollout
        if (service is None or service.desired is Desired.DOWN
                or (gen != service.gen and pinned is None)
                or index >= service.spec.instances or index in service.instances):
            return
        inst = service.instances.setdefault(index, Instance(service=name, index=index,
                                                            gen=gen, spec=pinned))
        # The run that ended counts: its restart, if any, is one more.
        spawns = exited.get("spawns")
        inst.spawns = (int(spawns) - self._spawn_base.get(inst.launcher_name, 0)
                       if isinstance(spawns, int) else max(inst.spawns, 1))
        decision = policy.decide(service.spec.restart, exited.get("exit_code"),
                                 exited.get("signal"), service.spec.restart.cooldown,
                                 inst.streak, self.uniform)
        inst.last_exit = _exit_record(exited, None)
        inst.reason = decision.reason
        if decision.verdict in (policy.Verdict.STAY_DOWN, policy.Verdict.GIVE_UP):
            inst.settled = True
            inst.state = (ServiceState.FAILED if decision.verdict is policy.Verdict.GIVE_UP
                          else ServiceState.DOWN)
        self.events.emit(name, "exit", f"{decision.reason} (while no supervisor ran)",
                         instance=index, pid=exited.get("pid"),
                         exit_code=exited.get("exit_code"), signal=exited.get("signal"))

    # ------------------------------------------------------------ launcher events
    def on_exit(self, exited: Message) -> None:
        """The launcher reports an exit: classify it and feed the machine."""
        if self.traffic.balancer.on_exit(exited):  # the balancer's manager restarts it
            return
        if self._booting:
            self._early_exits[str(exited.get("name"))] = exited
            return
        inst = self._find(str(exited.get("name", "")), exited.get("pid"))
        if inst is None:
            # A process that died at once: its Exited can be read before the coroutine
            # waiting for its Spawned reply has run.  Keep it for that coroutine.
            waiting = self._spawning(str(exited.get("name", "")))
            if waiting is not None:
                waiting.early_exit = exited
            return  # else a replayed exit we already handled, or of a process we stopped
        service = self.services[inst.service]
        if inst.state is ServiceState.STOPPING:
            return  # the Terminate reply records it
        if service.retiring.get(inst.index) is inst:  # its replacement is on the way
            inst.last_exit = _exit_record(exited, None)
            inst.pid = None
            self._unwatch(inst)
            self.events.emit(inst.service, "exit", "exited while being replaced",
                             instance=inst.index, pid=exited.get("pid"),
                             exit_code=exited.get("exit_code"), signal=exited.get("signal"))
            self.feed(inst, Event.EXIT_DOWN, "exited while being replaced")
            return
        ran_for = time.time() - (inst.started_at or time.time())
        decision = policy.decide(service.spec.restart, exited.get("exit_code"),
                                 exited.get("signal"), ran_for, inst.streak, self.uniform)
        inst.streak = decision.streak
        inst.delay = decision.delay
        inst.pid = None
        self._unwatch(inst)
        if decision.verdict in (policy.Verdict.STAY_DOWN, policy.Verdict.GIVE_UP):
            inst.settled = True
        reason = decision.reason
        blocked = self._restart_blocked(service, decision.verdict)
        if blocked:
            reason = f"{policy.describe_exit(exited.get('exit_code'), exited.get('signal'))}; " \
                     f"waiting for {', '.join(blocked)} to be ready"

        def record() -> None:
            inst.last_exit = _exit_record(exited, None)
            self.events.emit(inst.service, "exit", reason, instance=inst.index,
                             pid=exited.get("pid"), exit_code=exited.get("exit_code"),
                             signal=exited.get("signal"), delay_s=decision.delay,
                             last_lines=self.redact(exited.get("last_lines") or []))

        if decision.verdict is policy.Verdict.RESTART_NOW and not blocked:
            # The restart-latency hot path: the Spawn goes out before the exit is recorded
            # (timestamp formatting, redaction, the event's fan-out).  A restart's only
            # action is the spawn, which emits nothing, so the exit event still comes
            # first, before the state event.
            self.feed(inst, Event.EXIT_RESTART, decision.reason, then=record)
            return
        record()
        if blocked:
            inst.held = True
            self.feed(inst, Event.EXIT_WAIT, reason)
            return
        self.feed(inst, _EXIT_EVENTS[decision.verdict], decision.reason)

    def _restart_blocked(self, service: Service, verdict: policy.Verdict) -> tuple[str, ...]:
        """The dependencies a restart the policy wants must wait for (none if it wants no
        restart): every start waits until its dependencies are ready, not only the first."""
        if not service.spec.depends_on or verdict not in (policy.Verdict.RESTART_NOW,
                                                          policy.Verdict.RESTART_LATER):
            return ()
        return graph.blocked_by(self.services, service)

    def _find(self, name: str, pid: Any) -> Instance | None:
        parsed = parse_launcher_name(name)
        service = self.services.get(parsed[0]) if parsed else None
        if parsed is None or service is None:
            return None
        for inst in (service.instances.get(parsed[1]), service.retiring.get(parsed[1])):
            if inst is not None and inst.pid == pid and inst.gen == parsed[2]:
                return inst
        return None

    def _spawning(self, name: str) -> Instance | None:
        """The instance called ``name`` whose spawn is still on its way, if any."""
        parsed = parse_launcher_name(name)
        service = self.services.get(parsed[0]) if parsed else None
        if parsed is None or service is None:
            return None
        inst = service.instances.get(parsed[1])
        if (inst is None or inst.gen != parsed[2] or inst.pid is not None
                or inst.spawned is None or inst.spawned.done()):
            return None
        return inst

    def _spec_of(self, inst: Instance) -> ProcessSpec:
        """The spec ``inst`` runs: its own while retiring, else its service's."""
        return inst.spec if inst.spec is not None else self.services[inst.service].spec

    # ------------------------------------------------------------------- machine
    def feed(self, inst: Instance, event: Event, reason: str, *,
             then: Callable[[], None] | None = None) -> None:
        """Step the instance's machine and run the actions it returns.

        ``then`` runs right after the actions, before the state event and the rest of the
        bookkeeping (``on_exit`` records a restarting exit there, after the Spawn).
        """
        before = inst.state
        after, actions = machine.step(before, event)
        inst.state = after
        if event is Event.START:
            if not inst.held:  # a crash restart that waited for a dependency skips init
                inst.init_done = False  # a start asked for (not a crash restart) runs init
            inst.held = False
        if after is not before:
            inst.reason = reason
        # Actions first: a restart's Spawn is on the wire before any bookkeeping.
        for action in actions:
            if action is Action.SPAWN:
                self._spawn(inst)
            elif action is Action.TERMINATE:
                self._terminate(inst)
            elif action is Action.SCHEDULE:
                self._schedule(inst)
            elif action is Action.CANCEL:
                self._cancel(inst)
        if then is not None:
            then()
        if after is not before:
            self.events.emit(inst.service, "state", reason, instance=inst.index,
                             from_=before.value, to=after.value, pid=inst.pid)
            self.waiters.wake()
            if self.traffic.target_services:
                self.traffic.dirty()
        hooks = self._spec_of(inst).hooks if inst.service in self.services else None
        if hooks is not None and after is not before:
            if before is ServiceState.STARTING and after is ServiceState.UP and hooks.post_run:
                self._background(self._hook_later(inst, "post_run", hooks.post_run))
            if event in _STOP_ENDS and hooks.post_stop:
                self._background(self._hook_later(inst, "post_stop", hooks.post_stop))
        if after in ENDED_STATES or (
                before is ServiceState.STOPPING and after is not before):
            inst.stopped()  # the stop is over, also when a restart for a fault follows it
        if after in ENDED_STATES:
            if inst.notify is not None:
                inst.notify.close()
                inst.notify = None
            if after is not before:
                self.reconcile()
        elif after is ServiceState.UP and before is not after \
                and inst.service in self._depended_on():
            self.reconcile()  # a dependent may be waiting for this one

    def _spawn(self, inst: Instance) -> None:
        spec = self._spec_of(inst)
        assert self.launcher is not None
        if inst.ports:
            taken = [n for n, port in inst.ports.items() if port_taken(port)]
            if taken:  # another program took it while the instance was down
                self.traffic.replace_ports(inst, taken)
                inst.request = None  # rebuilt below with the new SERVICE_PORT_*
        # The encoded request is kept per instance and spec: a restart costs one frame
        # write, not an environment copy, a mkdir and a JSON encoding.
        if inst.request is None or inst.request[0] is not spec:
            try:
                inst.request = (spec, self._spawn_request(inst, spec))
            except Exception as exc:  # a secret gone, no free port, a disk error
                # ... fails like a spawn (backs off), never leaves it starting for good.
                if not isinstance(exc, CorralError):
                    exc = SpawnFailed(m.E_EXEC_FAILED, f"cannot prepare the spawn: "
                                      f"{type(exc).__name__}: {exc}")
                failed: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
                failed.set_exception(exc)
                inst.spawned = asyncio.get_running_loop().create_future()
                self._background(self._spawned(inst, failed, inst.spawned))
                return
        if (spec.readiness == "notify" or spec.watchdog is not None) and inst.notify is None:
            self._listen_notify(inst, spec)
        inst.next_restart_at = None
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        inst.spawned = done
        if ((spec.hooks.init is not None and not inst.init_done) or spec.resources
                or spec.before is not None):
            self._background(self._guarded_prepare(inst, spec, done))
            return
        future = self.launcher.send_encoded(inst.request[1])
        self._background(self._spawned(inst, future, done))

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
            result = await self._hook(inst, spec, "init", spec.hooks.init)
        if result.ok and (spec.resources or spec.before is not None):
            result = await self._prepare_workdir(inst, spec)
        if inst.state is not ServiceState.STARTING or self.launcher is None:
            if not done.done():
                done.set_result(None)
            if inst.state is ServiceState.STOPPING:
                self.feed(inst, Event.STOPPED, "stopped before it started")
            return
        if not result.ok:
            inst.failed_run = True
            if not done.done():
                done.set_result(None)
            decision = policy.decide_spawn_failure(spec.restart, inst.streak, result.summary,
                                                   self.uniform)
            inst.streak, inst.delay = decision.streak, decision.delay
            if decision.verdict is policy.Verdict.GIVE_UP:
                inst.settled = True
            self.feed(inst, _EXIT_EVENTS[decision.verdict], decision.reason)
            return
        inst.init_done = True
        assert inst.request is not None
        future = self.launcher.send_encoded(inst.request[1])
        await self._spawned(inst, future, done)

    async def _prepare_workdir(self, inst: Instance, spec: ProcessSpec) -> HookResult:
        """A fresh working directory (unless ``cwd`` is given) with the process's resources
        in place, then its ``before`` script run there; the result says what failed."""
        effective = self.environment.effective(spec, inst)
        workdir = Path(self.workdirs.cwd(inst, spec))
        try:
            await asyncio.to_thread(self.workdirs.fresh, inst, spec, workdir)
            for ref in effective.resources:
                await asyncio.to_thread(self.resources.place, ref.id, workdir, ref.file)
        except (OSError, CorralError) as exc:
            detail = exc.strerror if isinstance(exc, OSError) else str(exc)
            summary = f"cannot prepare {workdir}: {detail}"
            self.events.emit(inst.service, "prepare", summary, instance=inst.index)
            return HookResult(False, summary, [])
        if effective.before is None:
            return HookResult(True, "", [])
        return await self._hook(inst, spec, "before", effective.before)

    def _forget(self, inst: Instance) -> None:
        """An instance ended for good: release its ports, and remove its directory unless
        its last run failed (then it becomes ``last-failed``)."""
        self.traffic.release(inst)
        service = self.services.get(inst.service)
        self.workdirs.forget(inst, inst.spec or (service.spec if service else None))

    async def _hook(self, inst: Instance, spec: ProcessSpec, hook: str,
                    command: str) -> HookResult:
        env = self.environment.of(inst, spec)
        if inst.pid is not None:
            env["CORRAL_PID"] = str(inst.pid)
        user, group = identity(spec)
        result = await run_hook(hook, command, env=env, cwd=self.workdirs.cwd(inst, spec),
                                user=user, group=group, timeout=spec.hooks.timeout,
                                log=paths.logs_dir(self.state_dir) / f"{spec.name}.log")
        self.events.emit(inst.service, "hook", result.summary, instance=inst.index,
                         pid=inst.pid, last_lines=self.redact(result.output))
        return result

    def _spawn_request(self, inst: Instance, spec: ProcessSpec) -> bytes:
        ports = self.traffic.service_ports(inst, spec)  # first: ${SERVICE_PORT_*} used below
        cwd = self.workdirs.cwd(inst, spec)
        env = self.environment.of(inst, spec)
        if spec.readiness == "notify" or spec.watchdog is not None:
            env["NOTIFY_SOCKET"] = notify.socket_name(self.state_dir, inst.launcher_name)
        if spec.watchdog is not None:
            env["WATCHDOG_USEC"] = str(int(spec.watchdog * 1_000_000))
        env.update(ports)
        user, group = identity(spec)
        return spawn_request.build(
            inst.launcher_name, spec, self.environment.effective(spec, inst).argv, env, cwd,
            user, group, paths.logs_dir(self.state_dir) / f"{spec.name}.log",
            self.traffic.sockets_for(spec))

    async def _spawned(self, inst: Instance, reply: asyncio.Future[Message],
                       done: asyncio.Future[None]) -> None:
        try:
            answer = check(await reply)
        except CorralError as exc:
            inst.request = None  # rebuild it (and its working directory) next time
            service = self.services.get(inst.service)
            # The launcher's message may quote the argv, which may hold a secret.
            why = self.redact([str(exc)])[0]
            if why != str(exc):
                exc = SpawnFailed(getattr(exc, "launcher_code", m.E_EXEC_FAILED), why)
            if not done.done():
                done.set_exception(exc)
                done.exception()  # mark retrieved: a caller may not be waiting
            if inst.state is ServiceState.STOPPING:
                self.feed(inst, Event.STOPPED, "stopped before it started")
            if service is None or inst.state is not ServiceState.STARTING:
                return
            decision = policy.decide_spawn_failure(service.spec.restart, inst.streak, why,
                                                   self.uniform)
            inst.streak, inst.delay = decision.streak, decision.delay
            if decision.verdict is policy.Verdict.GIVE_UP:
                inst.settled = True
            self.events.emit(inst.service, "spawn_failed", decision.reason,
                             instance=inst.index, delay_s=decision.delay)
            self.feed(inst, _EXIT_EVENTS[decision.verdict], decision.reason)
            return
        inst.pid = int(answer["pid"])
        # A new process: CPU % comes from its own two readings, never against the last
        # reading of the process it replaces.
        inst.usage, inst.cpu = None, None
        inst.started_at = float(answer.get("started_at", time.time()))
        self._count_spawn(inst, answer.get("spawns"))
        inst.settled = False
        inst.health = HealthState.UNKNOWN
        inst.passed, inst.fault = False, None
        if not done.done():
            done.set_result(None)
        self.events.emit(inst.service, "spawn", f"spawned pid {inst.pid}", instance=inst.index,
                         pid=inst.pid)
        spec = self._spec_of(inst)
        if spec.health is not None and inst.state is ServiceState.STARTING:
            self._watch(inst, spec)
        if spec.watchdog is not None and inst.state is ServiceState.STARTING:
            self._arm_watchdog(inst, spec)
        if inst.state is ServiceState.STARTING:
            self._arm_start(inst, spec)
        elif inst.state is ServiceState.STOPPING:
            self._terminate(inst)  # a stop came while the spawn was on its way
        early_notify, inst.early_notify = inst.early_notify, []
        for fields, lineage in early_notify:
            self._on_notify(inst, fields, inst.pid if inst.pid in lineage else 0)
        early, inst.early_exit = inst.early_exit, None
        if early is not None and early.get("pid") == inst.pid:
            self.on_exit(early)  # it died before we knew its pid: handle that now

    def _arm_start(self, inst: Instance, spec: ProcessSpec) -> None:
        """Readiness of a new process under ``readiness: started`` (once it has run
        ``start_seconds``), and the ``start_timeout`` by which it must be ready and, with a
        health check, have passed it."""
        loop = asyncio.get_running_loop()
        pid = inst.pid
        if spec.readiness == "started":
            if spec.start_seconds <= 0:
                self.feed(inst, Event.READY, f"running as pid {pid}")
            else:
                inst.ready_timer = loop.call_later(spec.start_seconds, self._stayed_up,
                                                   inst, pid, spec.start_seconds)
        if spec.readiness != "started" or spec.health is not None:
            inst.start_timer = loop.call_later(spec.start_timeout, self._start_overdue,
                                               inst, pid, spec)

    def _stayed_up(self, inst: Instance, pid: int | None, seconds: float) -> None:
        inst.ready_timer = None
        if inst.pid == pid and inst.state is ServiceState.STARTING:
            self.feed(inst, Event.READY, f"running for {seconds:g}s as pid {pid}")

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
        self.events.emit(inst.service, "health", f"restarting: {why}", instance=inst.index,
                         pid=pid)
        self._restart(inst, why)
    def _count_spawn(self, inst: Instance, launcher_count: object) -> None:
        """One more spawn of ``inst``.  With the launcher's count for its name, the
        instance's count follows it, less the name's base: the launcher's count before
        this record's first spawn (kept in ``run/spawn_base.json``, so that the next
        supervisor, which learns counts from the launcher, shows the same restarts)."""
        if not isinstance(launcher_count, int):  # a launcher that does not say
            inst.spawns += 1
            return
        name = inst.launcher_name
        if inst.spawns == 0 and self._spawn_base.get(name, 0) != launcher_count - 1:
            self._spawn_base[name] = launcher_count - 1
            live = {i.launcher_name for s in self.services.values()
                    for i in (*s.instances.values(), *s.retiring.values())}
            self._spawn_base = {n: b for n, b in self._spawn_base.items() if b and n in live}
            self.files.save_spawn_base(self._spawn_base)
        inst.spawns = launcher_count - self._spawn_base.get(name, 0)

    async def _hook_later(self, inst: Instance, hook: str, command: str) -> None:
        service = self.services.get(inst.service)
        if service is not None:
            await self._hook(inst, service.spec, hook, command)

    def _listen_notify(self, inst: Instance, spec: ProcessSpec) -> None:
        name = notify.socket_name(self.state_dir, inst.launcher_name)
        try:
            inst.notify = notify.NotifySocket(name, lambda f, pid: self._on_notify(inst, f, pid))
        except OSError as exc:
            self.events.emit(inst.service, "state", f"cannot listen on NOTIFY_SOCKET {name}: "
                             f"{exc.strerror}; readiness will never be reported",
                             instance=inst.index)

    def _on_notify(self, inst: Instance, fields: notify.Fields, sender: int) -> None:
        """A notify message from process ``sender`` (0: unknown): believed only when the
        sender is one of the instance's own processes."""
        service = self.services.get(inst.service)
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
                    self.events.emit(inst.service, "notify",
                                     f"ignored a notify message from {who}: not a process "
                                     f"of this instance", instance=inst.index, pid=inst.pid)
            return
        if (fields.get("READY") == "1" and inst.state is ServiceState.STARTING
                and service.spec.readiness == "notify"):
            self.feed(inst, Event.READY, "ready (READY=1 on NOTIFY_SOCKET)")
        if fields.get("WATCHDOG") == "1" and inst.dog is not None:
            self._arm_watchdog(inst, service.spec)

    def _arm_watchdog(self, inst: Instance, spec: ProcessSpec) -> None:
        """(Re)start the watchdog countdown: no WATCHDOG=1 within ``watchdog`` -> restart."""
        if inst.dog is not None:
            inst.dog.cancel()
        assert spec.watchdog is not None
        pid = inst.pid

        def expired() -> None:
            inst.dog = None
            if inst.pid != pid or inst.state not in LIVE_STATES:
                return
            why = f"no WATCHDOG=1 for {spec.watchdog:g}s"
            self.events.emit(inst.service, "watchdog", f"restarting: {why}",
                             instance=inst.index, pid=pid)
            self._restart(inst, why)
        inst.dog = asyncio.get_running_loop().call_later(spec.watchdog, expired)

    def _watch(self, inst: Instance, spec: ProcessSpec) -> None:
        assert spec.health is not None and inst.pid is not None
        if inst.watch is not None:
            inst.watch.stop()
        inst.failures = 0
        health = spec.health
        if health.http is not None and health.http.service is not None:
            # The port this instance got for that service (socket mode: the service's own).
            name = health.http.service
            port = self.traffic.port_of(inst, name)
            if port is not None:
                health = health.model_copy(update={"http": health.http.model_copy(
                    update={"port": port, "service": None})})
        inst.watch = HealthWatch(health, inst.pid, self.environment.of(inst, spec),
                                 self.workdirs.cwd(inst, spec),
                                 lambda pid, result: self._on_health(inst, pid, result))
        inst.watch.user, inst.watch.group = identity(spec)
        inst.watch.start()

    def _unwatch(self, inst: Instance) -> None:
        if inst.dog is not None:
            inst.dog.cancel()
            inst.dog = None
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
        spec = self._spec_of(inst)
        health = spec.health
        assert health is not None
        if result.state is not inst.health:
            self.events.emit(inst.service, "health", f"health {result.state.value}: "
                             f"{result.detail}", instance=inst.index, pid=pid)
            inst.health = result.state
            self.waiters.wake()  # a rollout may be waiting for this instance to be healthy
            if self.traffic.target_services:
                self.traffic.dirty()
        self.traffic.probed(inst)
        if result.state in (HealthState.OK, HealthState.WARNING):
            inst.failures = 0
            inst.passed = True
            if inst.state is ServiceState.STARTING:
                # Readiness needs ok: a warning is never ready.
                if result.state is HealthState.OK and spec.readiness == "health":
                    self.feed(inst, Event.READY, f"ready: {result.detail}")
            elif inst.state is ServiceState.UNHEALTHY:
                self.feed(inst, Event.HEALTHY, f"healthy again: {result.detail}")
            return
        if not inst.passed:
            return  # starting is not unhealthy: only start_timeout fails a start
        inst.failures += 1
        if inst.failures < health.retries:
            return
        why = f"unhealthy after {inst.failures} failed checks: {result.detail}"
        if inst.state is ServiceState.UP:
            self.events.emit(inst.service, "health", why, instance=inst.index, pid=pid)
            self.feed(inst, Event.UNHEALTHY, why)
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
                self.events.emit(inst.service, "health", wait, instance=inst.index, pid=pid)
            return
        inst.failures = 0
        self._restart(inst, why)

    def _out_for_restart(self, inst: Instance) -> Instance | None:
        """Another instance of the same process that is on its way back (stopping,
        starting, backing off, or up but not past its first health check), if any."""
        service = self.services[inst.service]
        checked = service.spec.health is not None
        for other in service.instances.values():
            if other is inst:
                continue
            if (other.state in (ServiceState.STOPPING, ServiceState.STARTING,
                                ServiceState.BACKOFF)
                    or (other.state is ServiceState.DOWN and not other.settled)
                    or (other.state is ServiceState.UP and checked and not other.passed)):
                return other
        return None

    def _restart(self, inst: Instance, why: str) -> None:
        """Stop ``inst`` for a fault; once stopped, the restart policy decides when it
        starts again (see :meth:`_terminated`)."""
        if inst.state in LIVE_STATES:
            inst.fault = why
            self.feed(inst, Event.RESTART, f"restarting: {why}")

    def _terminate(self, inst: Instance) -> None:
        self._unwatch(inst)
        if inst.pid is None:
            # The spawn has not answered yet; _spawned terminates once it has a pid.
            if inst.spawned is None or inst.spawned.done():
                self.feed(inst, Event.STOPPED, "stopped before it started")
            return
        spec = self._spec_of(inst)
        assert self.launcher is not None
        future = self.launcher.send_request({"type": m.TERMINATE, "pid": inst.pid,
                                             "signal": spec.stop.signal,
                                             "timeout": spec.stop.timeout})
        self._background(self._terminated(inst, future))

    async def _terminated(self, inst: Instance, reply: asyncio.Future[Message]) -> None:
        try:
            answer = await reply
        except CorralError:
            return
        method = str(answer.get("method", m.ALREADY_EXITED))
        answer["pid"] = inst.pid
        inst.last_exit = _exit_record(answer, method)
        self.events.emit(inst.service, "stop", f"stopped ({method.replace('_', ' ')})",
                         instance=inst.index, pid=inst.pid, exit_code=answer.get("exit_code"),
                         signal=answer.get("signal"))
        ran_for = time.time() - (inst.started_at or time.time())
        inst.pid = None
        fault, inst.fault = inst.fault, None
        if fault is not None and self._restart_wanted(inst):
            self._after_fault(inst, fault, ran_for)
            return
        self.feed(inst, Event.STOPPED, f"stopped ({method.replace('_', ' ')})")

    def _restart_wanted(self, inst: Instance) -> bool:
        """Whether ``inst``, stopped for a fault, is still wanted running (nobody asked for
        a stop, a scale-down or a replacement meanwhile)."""
        service = self.services.get(inst.service)
        return (service is not None and not self._stopping_all
                and service.desired is Desired.UP and inst.gen == service.gen
                and service.instances.get(inst.index) is inst
                and inst.index < service.spec.instances)

    def _after_fault(self, inst: Instance, why: str, ran_for: float) -> None:
        """An instance stopped for a fault: the restart policy decides, as after a crash,
        and a restart waits for dependencies that are not ready."""
        service = self.services[inst.service]
        decision = policy.decide_restart(service.spec.restart, why, ran_for, inst.streak,
                                         self.uniform)
        inst.streak, inst.delay = decision.streak, decision.delay
        if decision.verdict in (policy.Verdict.STAY_DOWN, policy.Verdict.GIVE_UP):
            inst.settled = True
        blocked = self._restart_blocked(service, decision.verdict)
        if blocked:
            inst.held = True
            self.feed(inst, Event.STOPPED, f"{why}; waiting for {', '.join(blocked)} "
                                           "to be ready")
        elif decision.verdict is policy.Verdict.RESTART_NOW:
            self.feed(inst, Event.STOPPED_RESTART, decision.reason)
        elif decision.verdict is policy.Verdict.RESTART_LATER:
            self.feed(inst, Event.STOPPED_BACKOFF, decision.reason)
        elif decision.verdict is policy.Verdict.GIVE_UP:
            self.feed(inst, Event.STOPPED_GIVE_UP, decision.reason)
        else:
            self.feed(inst, Event.STOPPED, decision.reason)

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` as a task kept referenced until it ends (asyncio keeps weak ones)."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _terminate_pid(self, pid: int, spec: ProcessSpec | None) -> None:
        assert self.launcher is not None
        self.launcher.send_request({"type": m.TERMINATE, "pid": pid,
                                    "signal": spec.stop.signal if spec else "TERM",
                                    "timeout": spec.stop.timeout if spec else 8.0})

    def _schedule(self, inst: Instance) -> None:
        self._cancel(inst)
        inst.next_restart_at = time.time() + inst.delay
        inst.timer = asyncio.get_running_loop().call_later(inst.delay, self._backoff_over, inst)
        self.events.emit(inst.service, "restart_scheduled",
                         f"restart in {inst.delay:.2f}s", instance=inst.index,
                         delay_s=round(inst.delay, 3))

    def _backoff_over(self, inst: Instance) -> None:
        """The backoff delay is over: restart, or wait for dependencies not ready yet."""
        inst.timer = None
        service = self.services.get(inst.service)
        blocked = self._restart_blocked(service, policy.Verdict.RESTART_LATER) \
            if service is not None else ()
        if blocked:
            inst.held = True
            self.feed(inst, Event.WAIT, f"waiting for {', '.join(blocked)} to be ready")
        else:
            self.feed(inst, Event.TIMER, "backoff over; restarting")

    def _cancel(self, inst: Instance) -> None:
        if inst.timer is not None:
            inst.timer.cancel()
            inst.timer = None
        inst.next_restart_at = None

    # ----------------------------------------------------------------- reconcile
    def reconcile(self) -> None:
        """Start, stop or drop instances until what runs matches what is wanted."""
        if self._booting or self.launcher is None or self._stopping_all:
            return
        wanted = {name: reconcile.Want(s.spec.instances, s.desired is Desired.UP,
                                       graph.blocked_by(self.services, s))
                  for name, s in self.services.items()}
        observed = {(name, i.index): reconcile.Seen(i.state, i.settled)
                    for name, s in self.services.items() for i in s.instances.values()}
        for step in reconcile.plan(wanted, observed):
            service = self.services[step.service]
            if step.verb is reconcile.Verb.WAIT:
                inst = service.instances.setdefault(step.index,
                                                    service.new_instance(step.index))
                inst.reason = "waiting for " + ", ".join(graph.blocked_by(self.services, service)) + \
                    " to be ready"
            elif step.verb is reconcile.Verb.START:
                inst = service.instances.setdefault(step.index,
                                                    service.new_instance(step.index))
                self.feed(inst, Event.START, "starting")
            else:
                inst = service.instances[step.index]
                if inst.state in ENDED_STATES:
                    if step.verb is reconcile.Verb.DROP:
                        del service.instances[step.index]
                        self._forget(inst)
                    continue
                self.feed(inst, Event.STOP, "stopping")

    # ----------------------------------------------------------------- resources
    async def monitor(self) -> None:
        """Sample CPU and RSS of every instance's process tree every 2 s, forever; enforce
        limits.  (Kept-open /proc files make a round of 1,000 ``sleep`` services cost about
        9 ms: see :class:`corral.monitor.sampler.TreeSampler`.)"""
        while True:
            await asyncio.sleep(SAMPLE_EVERY)
            self.sample_once(time.monotonic())

    def sample_once(self, now: float) -> None:
        # Per instance this is the hot part of an idle supervisor at 1,000 services: the
        # clock is read once a round, whether to keep a history point is decided once a
        # round, an instance that has not run since the last round (the sampler hands back
        # the same reading) costs a comparison, and limits are checked only where set.
        wall = time.time()
        record = wall - self._history_at >= HISTORY_STEP
        if record:
            self._history_at = wall
        usage = self._sampler.usage
        for service in list(self.services.values()):
            limits = service.spec.limits
            limited = limits.memory is not None or limits.cpu is not None
            for inst in list(service.instances.values()):
                if inst.pid is None or inst.state not in LIVE_STATES:
                    inst.usage = None
                    continue
                use = usage(inst.pid)
                if use is None:
                    continue
                last = inst.usage
                if use is not last:
                    if last is not None and now > inst.sampled_at:
                        inst.cpu = max(0.0, (use.cpu_seconds - last.cpu_seconds)
                                       / (now - inst.sampled_at) * 100)
                    inst.rss = use.rss_bytes
                    inst.usage = use
                else:  # not run since the last reading (a second reading: CPU known)
                    inst.cpu = 0.0
                inst.sampled_at = now
                if record:
                    inst.history.append(wall, inst.cpu or 0.0, use.rss_bytes)
                if limited:
                    self._check_limits(service, inst, now)
        self._sampler.end_round()

    def _check_limits(self, service: Service, inst: Instance, now: float) -> None:
        limits = service.spec.limits
        over = []
        if limits.memory is not None and inst.rss is not None and inst.rss > limits.memory:
            over.append(f"memory {inst.rss / 2**20:.0f}MiB over the {format_size(limits.memory)}"
                        " limit")
        if limits.cpu is not None and inst.cpu is not None and inst.cpu > limits.cpu:
            over.append(f"cpu {inst.cpu:.0f}% over the {limits.cpu:g}% limit")
        if not over:
            inst.over_limit_since = None
            return
        if inst.over_limit_since is None:
            inst.over_limit_since = now
        if now - inst.over_limit_since < limits.grace:
            return
        why = "; ".join(over)
        inst.over_limit_since = None
        self.events.emit(inst.service, "limit", f"restarting: {why}", instance=inst.index,
                         pid=inst.pid)
        self.feed(inst, Event.STOP, f"restarting: {why}")

    def _depended_on(self) -> frozenset[str]:
        """Names some service depends on; rebuilt only when the loaded specs change (this
        is asked on every transition to up, hundreds of times a second in a crash storm)."""
        if self._depended is None:
            self._depended = graph.depended_on(self.services)
        return self._depended

    # ------------------------------------------------------------------ commands
    def get(self, name: str) -> Service:
        service = self.services.get(name)
        if service is None:
            loaded = ", ".join(self.services) or "none"
            raise NotFound(f"no service named {name!r} (loaded: {loaded})")
        return service

    def save(self, without: frozenset[str] | set[str] = frozenset()) -> None:
        """Persist the desired state atomically; ``without``: services being removed (saved
        as gone before they are stopped, so a crash midway does not bring them back)."""
        self.files.save(self.target(without), self.services, without)

    def target(self, without: frozenset[str] | set[str] = frozenset()) -> Target:
        """Everything loaded, however it got there (``target set``, ``svc load``)."""
        return Target.model_construct(
            processes=[s.spec for n, s in self.services.items() if n not in without],
            services=list(self.traffic.target_services))

    async def _stop_instances(self, service: Service, instances: Iterable[Instance]) -> None:
        chosen = list(instances)
        for inst in chosen:
            if inst.state not in (ServiceState.DOWN, ServiceState.FAILED, ServiceState.STOPPING):
                self.feed(inst, Event.STOP, "stopping")
        await asyncio.gather(*[inst.until_stopped() for inst in chosen
                               if inst.state is ServiceState.STOPPING])

    async def stop_all(self) -> None:
        """Stop every service in reverse load order (the desired state is kept)."""
        self._stopping_all = True
        if self.rollouts.task is not None:
            self.rollouts.task.cancel()
        for service in graph.stop_order(self.services):
            live = [i for i in (*service.instances.values(), *service.retiring.values())
                    if i.state not in ENDED_STATES]
            for inst in live:
                if inst.state is ServiceState.BACKOFF:
                    self.feed(inst, Event.STOP, "shutting down")
            await self._stop_instances(service, live)

    def status(self) -> list[dict[str, Any]]:
        return [s.as_dict() for s in self.services.values()]

    def conflict_if_stopping(self) -> None:
        if self._stopping_all:
            raise Conflict("the supervisor is shutting down")

    # ----------------------------------------------------------- load balancing

    # ------------------------------------------------------------------- target

    # --- stores (secrets, resources) ---
    # The stores themselves are self.secrets and self.resources (built in __init__).

    # --- end of stores ---


def _port_range(text: str) -> tuple[int, int]:
    """``CORRAL_PORT_RANGE`` (``LOW-HIGH``) for SERVICE_PORT_* allocation; the default
    30000-39999 when unset or unreadable."""
    low, _, high = text.partition("-")
    if low.strip().isdigit() and high.strip().isdigit() and 0 < int(low) <= int(high) < 65536:
        return int(low), int(high)
    return 30000, 39999


def _exit_record(message: Message, stop: str | None) -> dict[str, Any]:
    return {"exit_code": message.get("exit_code"), "signal": message.get("signal"),
            "at": rfc3339(float(message.get("at", time.time()))), "stop": stop,
            "pid": message.get("pid")}
