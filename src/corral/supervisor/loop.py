"""The supervisor's core: feeds triggers to the machine and hands its actions on.

Everything here runs on one asyncio loop.  Exit reports from the launcher arrive in
:meth:`Supervisor.on_exit`, are classified by :mod:`.policy`, and go through
:func:`.machine.step`; the resulting actions (spawn, terminate, schedule, cancel) are run
by :class:`.effects.Effects`, the only place that starts or stops a process.  After
anything that can change what is wanted or what runs, :func:`.reconcile.plan` says which
instances to start, stop or drop.

Desired state lives in the state directory (:mod:`.persistence`): ``target.yaml`` (the
loaded specs, in load order) and ``desired.json`` (which services the user stopped).
Both are written atomically before a command returns, so a supervisor started after a
crash, or after a full ``sup stop`` + ``sup run``, wants exactly what the user last asked
for.  The user's commands are :class:`.commands.Commands` and :class:`.targets.Targets`.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any

from corral.balancer.ports import PortAllocator
from corral.errors import Conflict, CorralError, NotFound, SpecError
from corral.health import probes
from corral.monitor.sampler import TreeSampler
from corral.spec import (
    ProcessSpec,
    Target,
    load_target,
)
from corral.states import (
    ENDED_STATES,
    Desired,
    ServiceState,
)
from corral.store.resources import ResourceStore
from corral.store.secrets import SecretStore, parse_env_file

from . import graph, hooks, machine, policy, reconcile
from .balancing import Balancer
from .clock import Clock
from .commands import Commands
from .effects import EXIT_TRIGGERS, Effects, exit_record
from .environment import Environment
from .events import EventLog
from .groupconfig import GroupConfigs
from .hooks import HookResult
from .instance import Instance, Service, parse_launcher_name
from .launcher_client import LauncherClient, Message
from .liveness import Liveness
from .machine import Action, Trigger
from .persistence import StateFiles
from .reattach import Reattach
from .redaction import Redactor
from .rollout_runner import RolloutRunner
from .sampling import Sampling
from .targets import Targets
from .traffic import Traffic
from .waiting import StateWaiters
from .watch import Probe
from .workdirs import Workdirs


class Supervisor:
    """Keeps the loaded services in their desired state through a launcher.

    Args:
        state_dir: the state directory (``target.yaml``, ``desired.json``, ``logs/``).
        files: its state files; ``secrets`` and ``resources``: its stores.
        balancer: the load balancer's manager; ``ports``: the ``SERVICE_PORT_*``
            allocator; ``sampler``: reads process trees' CPU and memory.
        clock: wall and monotonic time.
        base_env: the environment every process starts from.
        uniform: randomness for backoff jitter (deterministic in tests).
        probe: runs a health check once (:func:`corral.health.probes.probe`; a fake in
            unit tests).
        run_hook: runs a hook (:func:`.hooks.run_hook`; a fake in unit tests).
    """

    def __init__(self, state_dir: Path, *, files: StateFiles, secrets: SecretStore,
                 resources: ResourceStore, balancer: Balancer, ports: PortAllocator,
                 sampler: TreeSampler, clock: Clock, base_env: dict[str, str],
                 uniform: Callable[[float, float], float] = random.uniform,
                 probe: Probe = probes.probe,
                 run_hook: Callable[..., Awaitable[HookResult]] = hooks.run_hook) -> None:
        self.state_dir = state_dir
        self.uniform = uniform
        self.probe = probe
        self.run_hook = run_hook
        self.clock = clock
        self.services: dict[str, Service] = {}
        self.events = EventLog(seq_file=state_dir / "event-seq.json", clock=clock)
        self.launcher: LauncherClient | None = None
        self.started_at = self.clock.time()
        self.exit_code: asyncio.Future[int] | None = None
        self._booting = True
        self._early_exits: dict[str, Message] = {}
        self.stopping_all = False
        self._tasks: set[asyncio.Future[None]] = set()
        self.waiters = StateWaiters()
        self._depended: frozenset[str] | None = None  # see _depended_on
        self.sampling = Sampling(sampler, lambda: self.services, self.events,
                                 self._over_limit, clock)
        self.secrets = secrets
        self.resources = resources
        self.files = files
        self.environment = Environment(base_env, self.secrets)
        self.redact = Redactor(self.secrets)
        self.workdirs = Workdirs(state_dir, self.environment)
        self.traffic = Traffic(self.files, balancer, ports, self.events, clock,
                               lambda: self.services, self.spec_of, lambda: self.launcher,
                               self.background, lambda: self._booting)
        self.effects = Effects(self)
        self.reattach = Reattach(self)
        self.liveness = Liveness(self)
        self.rollouts = RolloutRunner(self)
        self.groupconfig = GroupConfigs(self)
        self.targets = Targets(self)
        self.commands = Commands(self)
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
        children, waiting = await launcher.inventory()
        for child in children:
            if not self.traffic.balancer.adopt(child):
                self.reattach.adopt(child)
        self.traffic.balancer.attach(launcher)
        for svc in self.traffic.target_services:
            if svc.mode == "socket":  # idempotent: a new launcher binds, a known one has it
                try:
                    await launcher.listen(svc.name, svc.bind_host, svc.port)
                except CorralError as exc:
                    self.events.emit("", "balancer", f"service {svc.name}: {exc}")
        running = {str(c.get("name")) for c in children}
        self._booting = False
        for name, exited in self._early_exits.items():
            if name not in running:
                self.reattach.replay_exit(exited)
        for respawn in waiting:  # unless its exit was just replayed (that cancelled it)
            replayed = self._early_exits.get(str(respawn.get("name")))
            if replayed is None or replayed.get("pid") != respawn.get("old_pid"):
                self.reattach.resume_respawn(respawn)
        self._early_exits.clear()
        self.effects.orders.attached()
        for inst in self.reattach.watch_after_attach:
            spec = self.spec_of(inst)
            self.liveness.watch(inst, spec)
            if inst.ports and spec.health is not None:
                self.traffic.hold_until_probed(
                    inst, spec.health.start_period + spec.health.timeout + 1.0)
        self.reattach.watch_after_attach.clear()
        self.traffic.push_when_probed()
        for service in self.services.values():
            if service.spec.watchdog is None:
                continue
            for inst in service.instances.values():
                if inst.pid is not None:  # adopted: keep watching it
                    self.liveness.listen_notify(inst, service.spec)
                    self.liveness.arm_watchdog(inst, service.spec)
        self.background(self.sampling.run())
        self.reconcile()
        self.traffic.dirty()
        self.rollouts.resume()

    # ------------------------------------------------------------ launcher events
    def on_exit(self, exited: Message) -> None:
        """The launcher reports an exit: classify it and feed the machine."""
        if self.traffic.balancer.on_exit(exited):  # the balancer's manager restarts it
            return
        if self._booting:
            self._early_exits[str(exited.get("name"))] = exited
            return
        inst = self._find(str(exited.get("name", "")), exited.get("pid"))
        if inst is None and self.effects.orders.hold_exit(exited):
            return  # a process the launcher respawned, dead before its pid was taken
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
            inst.last_exit = exit_record(exited, None, self.clock)
            inst.pid = None
            self.liveness.unwatch(inst)
            self.events.emit(inst.service, "exit", "exited while being replaced",
                             instance=inst.index, pid=exited.get("pid"),
                             exit_code=exited.get("exit_code"), signal=exited.get("signal"))
            self.effects.strays_event(inst, exited)
            self.feed(inst, Trigger.EXIT_RETIRED, "exited while being replaced")
            return
        ran_for = self.clock.time() - (inst.started_at or self.clock.time())
        decision = self.effects.orders.decision(inst, exited) or policy.decide(
            service.spec.restart, exited.get("exit_code"), exited.get("signal"), ran_for,
            inst.streak, self.uniform)
        inst.streak = decision.streak
        inst.delay = decision.delay
        inst.pid = None
        self.liveness.unwatch(inst)
        reason = decision.reason
        blocked = self.restart_blocked(service, decision.verdict)
        if blocked:
            reason = f"{policy.describe_exit(exited.get('exit_code'), exited.get('signal'))}; " \
                     f"waiting for {', '.join(blocked)} to be ready"

        def record() -> None:
            inst.last_exit = exit_record(exited, None, self.clock)
            self.events.emit(inst.service, "exit", reason, instance=inst.index,
                             pid=exited.get("pid"), exit_code=exited.get("exit_code"),
                             signal=exited.get("signal"), delay_s=decision.delay,
                             last_lines=self.redact(exited.get("last_lines") or []))
            self.effects.strays_event(inst, exited)

        if decision.verdict is policy.Verdict.RESTART_NOW and not blocked:
            # The restart-latency hot path: the Spawn goes out before the exit is recorded
            # (timestamp formatting, redaction, the event's fan-out).  A restart's only
            # action is the spawn, which emits nothing, so the exit event still comes
            # first, before the state event.
            self.feed(inst, Trigger.EXIT_RESTART, decision.reason, then=record)
            return
        record()
        if blocked:
            self.feed(inst, Trigger.EXIT_WAIT, reason)
            return
        self.feed(inst, EXIT_TRIGGERS[decision.verdict], decision.reason)

    def restart_blocked(self, service: Service, verdict: policy.Verdict) -> tuple[str, ...]:
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

    def spec_of(self, inst: Instance) -> ProcessSpec:
        """The spec ``inst`` runs: its own while retiring, else its service's."""
        return inst.spec if inst.spec is not None else self.services[inst.service].spec

    # ------------------------------------------------------------------- machine
    def feed(self, inst: Instance, event: Trigger, reason: str, *,
             then: Callable[[], None] | None = None) -> None:
        """Step the instance's machine and run the actions it returns: the one place an
        instance's state is assigned.  A transition that changes the state records
        ``reason``.

        ``then`` runs right after the actions that talk to the launcher and the timers,
        before the bookkeeping (``on_exit`` records a restarting exit there, after the
        Spawn).
        """
        before = inst.state
        after, actions = machine.step(before, event)
        inst.state = after
        if after is not before:
            inst.reason = reason
        # In the table's order: a restart's Spawn is on the wire before any bookkeeping.
        for action in actions:
            if then is not None and action in machine.BOOKKEEPING:
                then()
                then = None
            self._act(inst, action, before, after, reason)
        if then is not None:
            then()

    def _act(self, inst: Instance, action: Action, before: ServiceState,
             after: ServiceState, reason: str) -> None:
        """Run one of the machine's actions for ``inst`` (which went ``before`` -> ``after``)."""
        if action is Action.SPAWN:
            self.effects.spawn(inst)
        elif action is Action.TERMINATE:
            self.effects.terminate(inst)
        elif action is Action.SCHEDULE:
            self.effects.schedule(inst)
        elif action is Action.CANCEL:
            self.effects.cancel(inst)
        elif action is Action.FRESH_START:
            if not inst.held:  # a crash restart that waited for a dependency skips init
                inst.init_done = False  # a start asked for (not a crash restart) runs init
            inst.held = False
        elif action is Action.HOLD:
            inst.held = True
        elif action is Action.KEEP_DOWN:
            inst.stays_down = True
        elif action is Action.ANNOUNCE:
            self.events.emit(inst.service, "state", reason, instance=inst.index,
                             from_=before.value, to=after.value, pid=inst.pid)
            self.waiters.wake()
            if self.traffic.target_services:
                self.traffic.dirty()
        elif action in (Action.POST_RUN, Action.POST_STOP):
            own = self.spec_of(inst).hooks if inst.service in self.services else None
            command = (None if own is None
                       else own.post_run if action is Action.POST_RUN else own.post_stop)
            if command:
                self.background(self.effects.hook_later(inst, action.value, command))
        elif action is Action.RELEASE:
            inst.stopped()  # the stop is over, also when a restart for a fault follows it
        elif action is Action.CLOSE_NOTIFY:
            if inst.notify is not None:
                inst.notify.close()
                inst.notify = None
        elif action is Action.RECONCILE:
            self.reconcile()
        elif action is Action.RECONCILE_DEPENDENTS and inst.service in self._depended_on():
            self.reconcile()  # a dependent may be waiting for this one

    def forget(self, inst: Instance) -> None:
        """An instance ended for good: release its ports, and remove its directory unless
        its last run failed (then it becomes ``last-failed``)."""
        self.traffic.release(inst)
        service = self.services.get(inst.service)
        self.workdirs.forget(inst, inst.spec or (service.spec if service else None))

    def background(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` as a task kept referenced until it ends (asyncio keeps weak ones)."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ----------------------------------------------------------------- reconcile
    def reconcile(self) -> None:
        """Start, stop or drop instances until what runs matches what is wanted."""
        if self._booting or self.launcher is None or self.stopping_all:
            return
        wanted = {name: reconcile.Want(s.spec.instances, s.desired is Desired.UP,
                                       self._start_blocked(s))
                  for name, s in self.services.items()}
        observed = {(name, i.index): reconcile.Seen(i.state, i.stays_down)
                    for name, s in self.services.items() for i in s.instances.values()}
        for step in reconcile.plan(wanted, observed):
            service = self.services[step.service]
            if step.verb is reconcile.Verb.WAIT:
                inst = service.instances.setdefault(step.index,
                                                    service.new_instance(step.index))
                inst.reason = "waiting for " + ", ".join(self._start_blocked(service)) + \
                    " to be ready"
            elif step.verb is reconcile.Verb.START:
                inst = service.instances.setdefault(step.index,
                                                    service.new_instance(step.index))
                self.feed(inst, Trigger.START, "starting")
            else:
                inst = service.instances[step.index]
                if inst.state in ENDED_STATES:
                    if step.verb is reconcile.Verb.DROP:
                        del service.instances[step.index]
                        self.forget(inst)
                    continue
                self.feed(inst, Trigger.STOP, "stopping")

    def _start_blocked(self, service: Service) -> tuple[str, ...]:
        """What a start of ``service`` waits for: dependencies not ready, strict binds
        whose producer has no live member (``bind db``)."""
        return graph.blocked_by(self.services, service) + \
            self.groupconfig.waiting_binds(service.spec)

    # ----------------------------------------------------------------- resources

    def _over_limit(self, inst: Instance, why: str) -> None:
        self.feed(inst, Trigger.STOP, why)

    def specs_changed(self) -> None:
        """The loaded specs changed (a load, an unload, a new target, a revert)."""
        self._depended = None

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

    async def stop_instances(self, service: Service, instances: Iterable[Instance]) -> None:
        chosen = list(instances)
        for inst in chosen:
            if inst.state not in (ServiceState.DOWN, ServiceState.FAILED, ServiceState.STOPPING):
                self.feed(inst, Trigger.STOP, "stopping")
        await asyncio.gather(*[inst.until_stopped() for inst in chosen
                               if inst.state is ServiceState.STOPPING])

    async def stop_all(self) -> None:
        """Stop every service in reverse load order (the desired state is kept)."""
        self.stopping_all = True
        if self.rollouts.task is not None:
            self.rollouts.task.cancel()
        for service in graph.stop_order(self.services):
            live = [i for i in (*service.instances.values(), *service.retiring.values())
                    if i.state not in ENDED_STATES]
            for inst in live:
                if inst.state is ServiceState.BACKOFF:
                    self.feed(inst, Trigger.STOP, "shutting down")
            await self.stop_instances(service, live)

    def status(self) -> list[dict[str, Any]]:
        return [s.as_dict(self.clock.time()) for s in self.services.values()]

    def conflict_if_stopping(self) -> None:
        if self.stopping_all:
            raise Conflict("the supervisor is shutting down")
