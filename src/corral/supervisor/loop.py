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
import contextlib
import json
import os
import random
import resource
import shutil
import time
from collections.abc import Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any

from corral.balancer.ports import PortAllocator, PortsExhausted, port_taken, start_for
from corral.errors import (
    Conflict,
    CorralError,
    NotFound,
    NotReady,
    SpawnFailed,
    SpecError,
    StateWriteFailed,
)
from corral.health import owner
from corral.health.probes import Result
from corral.logs.reader import tail
from corral.monitor import sampler
from corral.protocol import messages as m
from corral.protocol import paths
from corral.spec import (
    Problem,
    ProcessSpec,
    ResourceRef,
    ServiceSpec,
    Target,
    format_size,
    load_target,
    refuse,
    validate_target,
)
from corral.states import Desired, HealthState, ServiceState
from corral.store import subst
from corral.store.resources import ResourceStore
from corral.store.secrets import SecretStore, check_name, check_value, parse_env_file

from . import machine, notify, policy, reconcile, rollout, statefile
from .balancing import Backend, Balancer  # balancer hook (issue 6)
from .events import EventLog, rfc3339
from .hooks import HookResult, run_hook
from .identity import give_workdir, identity, identity_problems
from .instance import HISTORY_STEP, Instance, Service, parse_launcher_name
from .launcher_client import LauncherClient, Message, check
from .machine import Action, Event
from .rollout import Change, Phase, Prior, Rollout, Step
from .watch import HealthWatch

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
        self._state_waiters: list[asyncio.Future[None]] = []
        self._depended: frozenset[str] | None = None  # see _depended_on
        self.target_services: list[ServiceSpec] = []
        # Three kept-open /proc files per sampled instance: 3/8 of the fd limit at most.
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        budget = soft // 8 if soft != resource.RLIM_INFINITY else 5000
        self._sampler = sampler.TreeSampler(max_open=min(5000, budget))
        self._history_at = 0.0  # wall clock of the last resource history point
        self.secrets = SecretStore(state_dir / "secrets.json")
        self.resources = ResourceStore(state_dir / "resources")
        self.rollout: Rollout | None = None
        self._rollout_task: asyncio.Future[None] | None = None
        # balancer hook (issue 6): the load balancer is a launcher child kept by its manager.
        self.balancer = Balancer(state_dir, self._base_env)
        low, high = _port_range(os.environ.get("CORRAL_PORT_RANGE", ""))
        self.ports = PortAllocator(low, high, start=start_for(
            low, high, f"{os.geteuid()}:{state_dir.resolve()}"))
        self._held_ports: dict[str, dict[str, int]] = statefile.read_json(
            self._ports_file(), {})
        # Per launcher name, the launcher's Spawn count before the current record's first
        # spawn (a name run again after an unload, a revert, a scale-down): restarts are
        # the launcher's count less this, so a new supervisor shows the same number.
        self._spawn_base: dict[str, int] = statefile.read_json(self._spawn_base_file(), {})
        self.adopted = 0  # instances adopted from the launcher at attach
        self._boot: tuple[Target, str, str] | None = None  # sup run --target, to check
        self._balancer_pending = False
        self._balancer_last: object = None
        # Adopted instances whose health this supervisor has not seen yet: until each has
        # had one probe (or the deadline passes), the balancer keeps the set the previous
        # supervisor gave it, rather than losing every backend whose health is unknown.
        self._unprobed: set[str] = set()
        self._unprobed_until = 0.0

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
        path = self.state_dir / "target.yaml"
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
        stored_desired = statefile.read_json(self.state_dir / "desired.json", {})
        down = set(stored_desired.get("down", []))
        gens = stored_desired.get("gen", {})
        for spec in target.processes:
            desired = Desired.DOWN if spec.name in down else Desired.UP
            self.services[spec.name] = Service(spec=spec, desired=desired,
                                               gen=int(gens.get(spec.name, 0)))
        self.target_services = list(target.services)
        self._load_rollout(replaced_target=target_file is not None
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
        self.check_target(target, text, source)
        # A new launcher holds no address yet: every service's address is checked.
        services, self.target_services = self.target_services, []
        try:
            await self.check_binds(target, text, source, hold=True)
        finally:
            self.target_services = services
        self._boot = None
        # Saved before anything is spawned (a supervisor killed right after its first
        # Spawns must leave a target that wants them), and as the file's own text: it
        # is valid, and dumping 1,000 specs as YAML would cost a cold start ~0.3 s.
        path = self.state_dir / "target.yaml"
        stored = path.read_text() if path.exists() else None
        if stored != text:
            statefile.atomic_write(path, text.encode())
            self._save_desired()

    def _load_rollout(self, replaced_target: bool) -> None:
        """The last rollout's record (``target status`` shows it after a restart).  One
        still running is resumed by :meth:`attach`, unless ``sup run --target`` replaced
        the target it was applying: then it ends here, failed, and the secrets it changed
        get their old values back."""
        try:
            doc = statefile.read_json(self._rollout_file(), None)
            record = Rollout.from_state(doc) if doc is not None else None
        except (ValueError, KeyError, TypeError, AttributeError, CorralError):
            self.events.emit("", "rollout", f"{self._rollout_file()} is damaged; the last "
                             "rollout is forgotten")
            record = None
        self.rollout = record
        try:
            if record is None or record.phase is not Phase.RUNNING:
                # Values kept for a rollout that never got its record: it never began.
                self.secrets.settle(list(self.secrets.previous()), revert=True)
            elif replaced_target:
                record.finish(time.time())
                record.phase = Phase.FAILED
                record.reason = "the target was replaced by sup run --target"
                self.secrets.settle(record.secrets, revert=True)
                self._save_rollout()
        except CorralError as exc:  # an unreadable secrets file: the request that needs it says
            self.events.emit("", "rollout", f"cannot settle the secrets of the last rollout: "
                             f"{exc}")

    def _rollout_file(self) -> Path:
        return self.state_dir / "rollout.json"

    def _save_rollout(self) -> None:
        """Persist the rollout's record: written before a rollout changes anything, at its
        verdict and at its end (a new supervisor resumes it, or shows it)."""
        if self.rollout is not None:
            statefile.write_json(self._rollout_file(), self.rollout.to_state())

    def _pinned_spec(self, name: str, gen: int) -> ProcessSpec | None:
        """The spec an instance of generation ``gen`` runs when that is not its service's
        current one: the previous spec of a rollout this supervisor resumes, else None."""
        record, service = self.rollout, self.services.get(name)
        prior = record.prior.get(name) if record is not None else None
        if (record is None or record.phase is not Phase.RUNNING or prior is None
                or service is None or gen == service.gen or gen != prior.gen):
            return None
        return prior.spec

    async def attach(self, launcher: LauncherClient) -> None:
        """Adopt the launcher's children (same PIDs, no restart), then reconcile."""
        self.launcher = launcher
        children = await launcher.list_children()
        for child in children:
            if not self.balancer.adopt(child):  # balancer hook (issue 6)
                self._adopt(child)
        self.balancer.attach(launcher)  # balancer hook (issue 6)
        for svc in self.target_services:
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
                self._unprobed.add(inst.launcher_name)
                wait = spec.health.start_period + spec.health.timeout + 1.0
                self._unprobed_until = max(self._unprobed_until, time.monotonic() + wait)
        self._adopted_watch.clear()
        if self._unprobed:
            asyncio.get_running_loop().call_later(
                self._unprobed_until - time.monotonic(), self._balancer_dirty)
        for service in self.services.values():
            if service.spec.watchdog is None:
                continue
            for inst in service.instances.values():
                if inst.pid is not None:  # adopted: keep watching it
                    self._listen_notify(inst, service.spec)
                    self._arm_watchdog(inst, service.spec)
        self._background(self.monitor())
        self.reconcile()
        self._balancer_dirty()
        if self.rollout is not None and self.rollout.phase is Phase.RUNNING:
            self._resume_rollout(self.rollout)
            return
        stale = [s for s in self.services.values()
                 if any(i.gen != s.gen for i in s.instances.values())]
        if stale:  # a rollout (with no record) was under way: finish it, forward
            self.rollout = record = Rollout(
                id=self.rollout.id + 1 if self.rollout else 1,
                cause="resumed after a supervisor restart", started_at=time.time(), changes=[])
            for service in stale:
                record.steps[service.spec.name] = Step(service.spec.name,
                                                       service.spec.instances)
            self._rollout_task = asyncio.ensure_future(
                self._run_rollout(record, [(s, None, s.gen) for s in stale]))

    def _resume_rollout(self, record: Rollout) -> None:
        """Go on with the rollout the last supervisor left running, as if nothing had
        happened: each replaced process is brought to its new version health-gated, and a
        failure puts the previous one back (``record.prior``).  A process whose generation
        was never bumped (killed between the record and the target's save) is back on its
        previous spec: nothing of it changed."""
        replace: list[tuple[Service, ProcessSpec | None, int]] = []
        for name, prior in record.prior.items():
            service = self.services.get(name)
            if service is None:
                continue
            if service.gen == prior.gen:
                service.spec = prior.spec
                self._depended = None
            replace.append((service, prior.spec, prior.gen))
        if replace and not record.reverting and all(s.gen == g for s, _, g in replace):
            # Killed before the generations were saved: nothing was replaced.
            self.secrets.settle(record.secrets, revert=True)
            self.save()
            record.finish(time.time())
            record.phase = Phase.FAILED
            record.reason = "the supervisor stopped before the rollout began; nothing changed"
            self._save_rollout()
            return
        for step in record.steps.values():
            if step.phase is Phase.RUNNING:
                step.detail = "resumed after a supervisor restart"
        self.events.emit("", "rollout", f"rollout {record.id} ({record.cause}) resumed after "
                         "a supervisor restart")
        added = [self.services[n] for n in record.added if n in self.services]
        self._rollout_task = asyncio.ensure_future(self._run_rollout(record, replace, added))

    def _adopt(self, child: Message) -> None:
        """Take over a running child.  An instance of an older generation (a rollout was
        under way when the last supervisor died) is adopted too, and replaced once
        attached; a newer, unconfirmed one beside it is stopped and started again."""
        parsed = parse_launcher_name(str(child.get("name", "")))
        name, index, gen = parsed if parsed else ("", -1, 0)
        service = self.services.get(name)
        pid = int(child["pid"])
        if (service is None or service.desired is Desired.DOWN
                or not 0 <= index < service.spec.instances):
            # Not wanted any more (unloaded or stopped while no supervisor ran): stop it.
            self._terminate_pid(pid, service.spec if service else None)
            return
        present = service.instances.get(index)
        if present is not None:
            keep_new = present.gen != service.gen and gen == service.gen
            if gen == present.gen or keep_new or (gen != service.gen and
                                                 present.gen != service.gen):
                self._terminate_pid(pid, service.spec)
                return
            # This one is older than the one adopted first: keep the older, stop the other.
            assert present.pid is not None
            self._terminate_pid(present.pid, service.spec)
            if present in self._adopted_watch:
                self._adopted_watch.remove(present)
        inst = Instance(service=name, index=index, gen=gen, state=ServiceState.UP, pid=pid,
                        started_at=float(child.get("started_at", time.time())),
                        reason="adopted", passed=True, spec=self._pinned_spec(name, gen))
        inst.spawns = max(1, int(child.get("spawns", 1)) - self._spawn_base.get(
            inst.launcher_name, 0))
        self.adopted += 1
        inst.ports = {k: int(v) for k, v in self._held_ports.get(inst.launcher_name, {}).items()}
        for port in inst.ports.values():
            self.ports.reserve(port)
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
        pinned = self._pinned_spec(name, gen)  # an old instance of a resumed rollout
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
        if self.balancer.on_exit(exited):  # balancer hook (issue 6): it restarts it
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
            self._strays_event(inst, exited)
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
            self._strays_event(inst, exited)

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
        return self._blocked_by(service)
    def _strays_event(self, inst: Instance, report: Message) -> None:
        """A ``strays`` event when the launcher killed processes the instance left behind
        (daemons that left its process group, without a cgroup to hold them)."""
        strays = report.get("strays")
        if not isinstance(strays, list) or not strays:
            return
        pids = ", ".join(str(pid) for pid in strays)
        self.events.emit(inst.service, "strays",
                         f"killed {len(strays)} process{'es' if len(strays) != 1 else ''} "
                         f"it left behind (pid{'s' if len(strays) != 1 else ''} {pids})",
                         instance=inst.index, pid=report.get("pid"))

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
            self._wake()
            if self.target_services:
                self._balancer_dirty()
        hooks = self._spec_of(inst).hooks if inst.service in self.services else None
        if hooks is not None and after is not before:
            if before is ServiceState.STARTING and after is ServiceState.UP and hooks.post_run:
                self._background(self._hook_later(inst, "post_run", hooks.post_run))
            if event in _STOP_ENDS and hooks.post_stop:
                self._background(self._hook_later(inst, "post_stop", hooks.post_stop))
        if after in (ServiceState.DOWN, ServiceState.FAILED) or (
                before is ServiceState.STOPPING and after is not before):
            inst.stopped()  # the stop is over, also when a restart for a fault follows it
        if after in (ServiceState.DOWN, ServiceState.FAILED):
            if inst.notify is not None:
                inst.notify.close()
                inst.notify = None
            if after is not before:
                self.reconcile()
        elif after is ServiceState.UP and before is not after \
                and inst.service in self._depended_on():
            self.reconcile()  # a dependent may be waiting for this one

    def _wake(self) -> None:
        """Wake every coroutine waiting for a state or health change."""
        for waiter in self._state_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._state_waiters.clear()

    def _spawn(self, inst: Instance) -> None:
        spec = self._spec_of(inst)
        assert self.launcher is not None
        if inst.ports:
            taken = [n for n, port in inst.ports.items() if port_taken(port)]
            if taken:  # another program took it while the instance was down
                self._replace_ports(inst, taken)
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
        effective = self._effective(spec, inst)
        workdir = Path(self._instance_cwd(inst, spec))
        try:
            await asyncio.to_thread(self._fresh_workdir, inst, spec, workdir)
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

    def _fresh_workdir(self, inst: Instance, spec: ProcessSpec, workdir: Path) -> None:
        """Empty ``workdir`` for a new run; the last failed run's is kept as
        ``run/<process>/last-failed`` for inspection (one per process)."""
        if spec.cwd is not None:
            workdir.mkdir(parents=True, exist_ok=True)
            return
        if workdir.exists():
            if inst.failed_run:
                kept = workdir.parent / "last-failed"
                shutil.rmtree(kept, ignore_errors=True)
                workdir.rename(kept)
            else:
                shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True, exist_ok=True)
        give_workdir(workdir, spec)
        inst.failed_run = False

    def _forget(self, inst: Instance) -> None:
        """An instance ended for good: release its ports, and remove its directory unless
        its last run failed (then it becomes ``last-failed``)."""
        if inst.ports:
            for port in inst.ports.values():
                self.ports.release(port)
            inst.ports = {}
            self._save_ports()
        self._forget_workdir(inst)

    def _forget_workdir(self, inst: Instance) -> None:
        """Remove an ended instance's directory, or keep it as ``last-failed`` if its last
        run failed.  Directories given as ``cwd`` are the user's."""
        service = self.services.get(inst.service)
        spec = inst.spec or (service.spec if service else None)
        if spec is None or spec.cwd is not None:
            return
        workdir = self._workdir(inst)
        if not workdir.exists():
            return
        if inst.failed_run:
            kept = workdir.parent / "last-failed"
            shutil.rmtree(kept, ignore_errors=True)
            with contextlib.suppress(OSError):
                workdir.rename(kept)
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    def _workdir(self, inst: Instance) -> Path:
        """``run/<process>/<index>`` (``<index>@<gen>`` after a spec change)."""
        leaf = f"{inst.index}@{inst.gen}" if inst.gen else str(inst.index)
        return paths.run_dir(self.state_dir) / inst.service / leaf

    def redact(self, lines: list[str]) -> list[str]:
        """``lines`` (a process's output, for an event or an error) with every secret's
        value replaced by ``***``: what a program prints is its business, what corral
        shows is ours."""
        values = [v for v in self.secrets.values().values() if len(v) >= 3]
        if not values or not lines:
            return lines
        out = []
        for line in lines:
            for value in values:
                line = line.replace(value, "***")
            out.append(line)
        return out

    def _effective(self, spec: ProcessSpec, inst: Instance | None = None) -> ProcessSpec:
        """``spec`` with its secrets, and ``inst``'s own variables (``CORRAL_INSTANCE``,
        ``SERVICE_PORT_*``...), substituted (the spec itself when it uses none).

        Raises:
            SpecError: a secret it uses is not set (removal is refused while in use, so
                only a hand-edited state directory gets here).
        """
        own = self._own_values(inst, spec) if inst is not None else None
        return subst.substitute(spec, self.secrets.values(), spec.name, own)

    def _own_values(self, inst: Instance, spec: ProcessSpec) -> dict[str, str]:
        """corral's own variables for ``inst``: what ``${CORRAL_INSTANCE}`` and
        ``${SERVICE_PORT_<NAME>}`` stand for (its ports, once allocated)."""
        own = {"CORRAL_SERVICE": spec.name, "CORRAL_INSTANCE": str(inst.index)}
        for name, port in inst.ports.items():
            if name in spec.receives:
                own[subst.port_variable(name)] = str(port)
        return own

    async def _hook(self, inst: Instance, spec: ProcessSpec, hook: str,
                    command: str) -> HookResult:
        env = self._instance_env(inst, spec)
        if inst.pid is not None:
            env["CORRAL_PID"] = str(inst.pid)
        user, group = identity(spec)
        result = await run_hook(hook, command, env=env, cwd=self._instance_cwd(inst, spec),
                                user=user, group=group, timeout=spec.hooks.timeout,
                                log=paths.logs_dir(self.state_dir) / f"{spec.name}.log")
        self.events.emit(inst.service, "hook", result.summary, instance=inst.index,
                         pid=inst.pid, last_lines=self.redact(result.output))
        return result

    def _instance_env(self, inst: Instance, spec: ProcessSpec) -> dict[str, str]:
        env = dict(self._base_env)
        env.update(self._effective(spec, inst).env)
        env["CORRAL_SERVICE"] = spec.name
        env["CORRAL_INSTANCE"] = str(inst.index)
        return env

    def _instance_cwd(self, inst: Instance, spec: ProcessSpec) -> str:
        if spec.cwd is not None:
            return self._effective(spec, inst).cwd or spec.cwd
        workdir = self._workdir(inst)
        if not workdir.is_dir():
            workdir.mkdir(parents=True, exist_ok=True)
            give_workdir(workdir, spec)
        return str(workdir)

    def _spawn_request(self, inst: Instance, spec: ProcessSpec) -> bytes:
        ports = self._service_ports(inst, spec)  # first: ${SERVICE_PORT_*} may be used below
        cwd = self._instance_cwd(inst, spec)
        env = self._instance_env(inst, spec)
        if spec.readiness == "notify" or spec.watchdog is not None:
            env["NOTIFY_SOCKET"] = notify.socket_name(self.state_dir, inst.launcher_name)
        if spec.watchdog is not None:
            env["WATCHDOG_USEC"] = str(int(spec.watchdog * 1_000_000))
        env.update(ports)
        sockets = [s.name for s in self.target_services
                   if s.mode == "socket" and s.name in spec.receives]
        user, group = identity(spec)
        request: Message = {
            "type": m.SPAWN, "name": inst.launcher_name,
            "argv": self._effective(spec, inst).argv, "env": env,
            "cwd": cwd, "user": user, "group": group,
            "umask": int(spec.umask, 8) if spec.umask else None, "rlimits": dict(spec.rlimits),
            "memory_max": spec.limits.memory,  # launcher: cgroup memory.max (additive, h5)
            # How a launcher that finds it left by a dead one stops it.
            "stop": {"signal": spec.stop.signal, "timeout": spec.stop.timeout},
            "log": {"path": str(paths.logs_dir(self.state_dir) / f"{spec.name}.log"),
                    "format": spec.logs.format, "max_bytes": spec.logs.max_bytes,
                    "keep": spec.logs.keep, "stdout": spec.logs.stdout},
        }
        if sockets:
            request["listen_fds"] = sockets
        return json.dumps(request, separators=(",", ":")).encode()

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
        if inst.pid != pid or inst.state not in (ServiceState.STARTING, ServiceState.UP,
                                                 ServiceState.UNHEALTHY):
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
            try:
                statefile.write_json(self._spawn_base_file(), self._spawn_base)
            except StateWriteFailed as exc:  # only the next supervisor's count is off
                self.events.emit(inst.service, "state_write", str(exc))
        inst.spawns = launcher_count - self._spawn_base.get(name, 0)

    def _spawn_base_file(self) -> Path:
        return paths.run_dir(self.state_dir) / "spawn_base.json"

    async def _hook_later(self, inst: Instance, hook: str, command: str) -> None:
        service = self.services.get(inst.service)
        if service is not None:
            await self._hook(inst, service.spec, hook, command)

    async def reload(self, name: str) -> None:
        """Run the reload hook (or send ``reload_signal``) for every running instance.

        Raises:
            Conflict: the service has neither, or no running instance.
        """
        service = self.get(name)
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
                result = await self._hook(inst, service.spec, "reload", hooks.reload)
                if not result.ok:
                    failed.append(f"instance {inst.index}: {result.summary}")
            else:
                assert self.launcher is not None and inst.pid is not None
                await self.launcher.request({"type": m.SIGNAL, "pid": inst.pid,
                                             "signal": hooks.reload_signal})
                self.events.emit(name, "reload", f"sent SIG{hooks.reload_signal}",
                                 instance=inst.index, pid=inst.pid)
        if failed:
            raise Conflict(f"reload of {name} failed: " + "; ".join(failed))

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
            if inst.pid != pid or inst.state not in (ServiceState.STARTING, ServiceState.UP,
                                                      ServiceState.UNHEALTHY):
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
            svc = next((s for s in self.target_services if s.name == name), None)
            port = inst.ports.get(name) or (svc.port if svc is not None else None)
            if port is not None:
                health = health.model_copy(update={"http": health.http.model_copy(
                    update={"port": port, "service": None})})
        inst.watch = HealthWatch(health, inst.pid, self._instance_env(inst, spec),
                                 self._instance_cwd(inst, spec),
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
        if inst.pid != pid or inst.state not in (ServiceState.STARTING, ServiceState.UP,
                                                  ServiceState.UNHEALTHY):
            return
        spec = self._spec_of(inst)
        health = spec.health
        assert health is not None
        if result.state is not inst.health:
            self.events.emit(inst.service, "health", f"health {result.state.value}: "
                             f"{result.detail}", instance=inst.index, pid=pid)
            inst.health = result.state
            self._wake()  # a rollout may be waiting for this instance to be healthy
            if self.target_services:
                self._balancer_dirty()
        if self._unprobed:
            self._unprobed.discard(inst.launcher_name)
            if not self._unprobed:
                self._balancer_dirty()
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
        if inst.state in (ServiceState.STARTING, ServiceState.UP, ServiceState.UNHEALTHY):
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
        self._strays_event(inst, answer)
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
                                       self._blocked_by(s))
                  for name, s in self.services.items()}
        observed = {(name, i.index): reconcile.Seen(i.state, i.settled)
                    for name, s in self.services.items() for i in s.instances.values()}
        for step in reconcile.plan(wanted, observed):
            service = self.services[step.service]
            if step.verb is reconcile.Verb.WAIT:
                inst = service.instances.setdefault(step.index,
                                                    service.new_instance(step.index))
                inst.reason = "waiting for " + ", ".join(self._blocked_by(service)) + \
                    " to be ready"
            elif step.verb is reconcile.Verb.START:
                inst = service.instances.setdefault(step.index,
                                                    service.new_instance(step.index))
                self.feed(inst, Event.START, "starting")
            else:
                inst = service.instances[step.index]
                if inst.state in (ServiceState.DOWN, ServiceState.FAILED):
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
        live = (ServiceState.STARTING, ServiceState.UP, ServiceState.UNHEALTHY)
        usage = self._sampler.usage
        for service in list(self.services.values()):
            limits = service.spec.limits
            limited = limits.memory is not None or limits.cpu is not None
            for inst in list(service.instances.values()):
                if inst.pid is None or inst.state not in live:
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

    def _blocked_by(self, service: Service) -> tuple[str, ...]:
        """The dependencies of ``service`` whose instances are not all ready."""
        blocked = []
        for name in service.spec.depends_on:
            dep = self.services.get(name)
            if dep is None or not self._ready(dep):
                blocked.append(name)
        return tuple(blocked)

    @staticmethod
    def _ready(service: Service) -> bool:
        ready = [i for i in service.instances.values()
                 if i.state in (ServiceState.UP, ServiceState.UNHEALTHY)]
        return service.desired is Desired.UP and len(ready) >= service.spec.instances

    def _depended_on(self) -> frozenset[str]:
        """Names some service depends on; rebuilt only when the loaded specs change (this
        is asked on every transition to up, hundreds of times a second in a crash storm)."""
        if self._depended is None:
            self._depended = frozenset(d for s in self.services.values()
                                       for d in s.spec.depends_on)
        return self._depended

    def stop_order(self) -> list[Service]:
        """Services in the order to stop them: dependents before their dependencies,
        otherwise last loaded first."""
        order: list[Service] = []
        placed: set[str] = set()
        remaining = list(reversed(self.services.values()))
        users = {n: {s.spec.name for s in self.services.values() if n in s.spec.depends_on}
                 for n in self.services}
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
        statefile.atomic_write(self.state_dir / "target.yaml",
                               self.target(without).to_yaml().encode())
        self._save_desired(without)

    def _save_desired(self, without: frozenset[str] | set[str] = frozenset()) -> None:
        kept = {n: s for n, s in self.services.items() if n not in without}
        statefile.write_json(self.state_dir / "desired.json", {
            "down": sorted(n for n, s in kept.items() if s.desired is Desired.DOWN),
            "gen": {n: s.gen for n, s in kept.items() if s.gen}})

    def target(self, without: frozenset[str] | set[str] = frozenset()) -> Target:
        """Everything loaded, however it got there (``target set``, ``svc load``)."""
        return Target.model_construct(
            processes=[s.spec for n, s in self.services.items() if n not in without],
            services=list(self.target_services))

    async def load(self, spec: ProcessSpec) -> str:
        """Add or update a service; returns ``added``, ``updated`` or ``unchanged``.

        Error handling: a new service whose first spawn fails (missing binary, unknown
        user) is removed again and :class:`SpawnFailed` is raised: nothing changed.
        """
        existing = self.services.get(spec.name)
        if existing is not None and existing.spec == spec:
            return "unchanged"
        current = self.target()
        others = [p.to_dict() for p in current.processes if p.name != spec.name]
        # Validating the would-be target checks dependencies (unknown names, cycles).
        target = validate_target({"processes": [*others, spec.to_dict()],
                                  "services": [s.to_dict() for s in current.services]},
                                 spec.name)
        self.check_target(target, None, spec.name)
        if existing is not None:
            target = Target.model_construct(
                processes=[spec if p.name == spec.name else p for p in current.processes],
                services=current.services)
            record = await self.apply_target(target, None, spec.name, cause="svc load")
            await self.wait_rollout()
            await self._wait_stopped(existing)
            await self._wait_spawned(existing)
            if record is not None and record.phase is Phase.FAILED:
                step = record.steps.get(spec.name)
                raise NotReady(f"{spec.name}: {record.reason}; {record.outcome()}",
                               step.last_lines if step else [])
            return "updated"
        service = Service(spec=spec)
        self.services[spec.name] = service
        self._depended = None
        self.events.emit(spec.name, "load", "loaded")
        self.reconcile()
        try:
            await self._wait_spawned(service)
            self.save()
        except (SpawnFailed, StateWriteFailed):
            await self._remove(service)
            raise
        return "added"

    async def unload(self, name: str) -> None:
        service = self.get(name)
        users = sorted(s.spec.name for s in self.services.values()
                       if name in s.spec.depends_on)
        if users:
            raise Conflict(f"{name} cannot be unloaded: {', '.join(users)} depend on it; "
                           "unload or change those first")
        self.save(without={name})  # first: a refused write leaves it loaded and running
        await self._remove(service)
        self.events.emit(name, "unload", "unloaded")

    async def _remove(self, service: Service) -> None:
        service.desired = Desired.DOWN
        await self._stop_instances(service, [*service.instances.values(),
                                             *service.retiring.values()])
        for inst in [*service.instances.values(), *service.retiring.values()]:
            self._forget(inst)
        self.services.pop(service.spec.name, None)
        self._depended = None

    async def start(self, name: str) -> None:
        service = self.get(name)
        self._set_desired(service, Desired.UP)
        for inst in service.instances.values():
            inst.settled = False
            if inst.state is ServiceState.FAILED:
                inst.streak = policy.Streak()
        self.reconcile()
        await self._wait_spawned(service)

    async def stop(self, name: str) -> None:
        service = self.get(name)
        self._set_desired(service, Desired.DOWN)
        self.reconcile()
        await self._wait_stopped(service)

    def _set_desired(self, service: Service, desired: Desired) -> None:
        """Want ``service`` up or down, saved first: a refused write changes nothing."""
        before, service.desired = service.desired, desired
        try:
            self.save()
        except StateWriteFailed:
            service.desired = before
            raise

    async def restart(self, name: str) -> None:
        """Stop then start every instance; a process that receives traffic is replaced
        instance by instance instead (new one healthy, old one drained, then stopped)."""
        service = self.get(name)
        live = [i for i in service.instances.values() if i.pid is not None]
        if service.spec.receives and service.desired is Desired.UP and live:
            if self.rollout_running():
                await self.wait_rollout()
            replace: list[tuple[Service, ProcessSpec | None, int]] = [
                (service, service.spec, service.gen)]
            service.gen += 1
            previous = self.rollout
            try:
                record = self._begin_rollout(f"svc restart {name}", [], replace)
                self.save()
            except StateWriteFailed:
                self._abandon_rollout(previous, replace)
                raise
            self._rollout_task = asyncio.ensure_future(self._run_rollout(record, replace))
            await self.wait_rollout()
            if record.phase is Phase.FAILED:
                raise NotReady(f"restart of {name} failed: {record.reason}; "
                               f"{record.outcome()}", record.steps[name].last_lines)
            return
        self._set_desired(service, Desired.UP)
        await self._stop_instances(service, list(service.instances.values()))
        for inst in service.instances.values():
            inst.settled = False
        self.reconcile()
        await self._wait_spawned(service)

    async def scale(self, name: str, instances: int) -> None:
        service = self.get(name)
        if not 0 <= instances <= 1000:
            raise SpecError(f"instances must be between 0 and 1000, not {instances}")
        await self.load(service.spec.model_copy(update={"instances": instances}))
        if service.desired is Desired.UP:
            await self._wait_spawned(service)

    async def _stop_instances(self, service: Service, instances: Iterable[Instance]) -> None:
        chosen = list(instances)
        for inst in chosen:
            if inst.state not in (ServiceState.DOWN, ServiceState.FAILED, ServiceState.STOPPING):
                self.feed(inst, Event.STOP, "stopping")
        await asyncio.gather(*[inst.until_stopped() for inst in chosen
                               if inst.state is ServiceState.STOPPING])

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
            service = self.get(name)
            insts = list(service.instances.values())
            ready = [i for i in insts if i.state in (ServiceState.UP, ServiceState.UNHEALTHY)]
            if len(ready) >= service.spec.instances:
                return
            stuck = [i for i in insts if i.state is ServiceState.FAILED
                     or (i.state is ServiceState.DOWN and i.settled)]
            remaining = deadline - loop.time()
            if stuck or remaining <= 0 or service.desired is Desired.DOWN:
                pending = stuck or [i for i in insts if i not in ready] or insts
                state = (f"{pending[0].state.value}: {pending[0].reason}" if pending
                         else "no instance")
                when = "" if stuck else f" within {timeout:g}s"
                log = paths.logs_dir(self.state_dir) / f"{name}.log"
                raise NotReady(f"{name} did not become ready{when} ({state})",
                               tail(log, 5, service.spec.logs.keep))
            waiter: asyncio.Future[None] = loop.create_future()
            self._state_waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, remaining)
            except TimeoutError:
                pass

    async def stop_all(self) -> None:
        """Stop every service in reverse load order (the desired state is kept)."""
        self._stopping_all = True
        if self._rollout_task is not None:
            self._rollout_task.cancel()
        for service in self.stop_order():
            live = [i for i in (*service.instances.values(), *service.retiring.values())
                    if i.state not in (ServiceState.DOWN, ServiceState.FAILED)]
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
    def _ports_file(self) -> Path:
        return paths.run_dir(self.state_dir) / "ports.json"

    def _save_ports(self) -> None:
        """Persist which instance holds which port (a new supervisor adopts them)."""
        held = {i.launcher_name: i.ports for s in self.services.values()
                for i in (*s.instances.values(), *s.retiring.values()) if i.ports}
        self._held_ports = held
        try:
            statefile.write_json(self._ports_file(), held)
        except StateWriteFailed as exc:  # a cache for the next supervisor: spawns go on
            self.events.emit("", "state_write", str(exc))

    def _service_ports(self, inst: Instance, spec: ProcessSpec) -> dict[str, str]:
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
            self._save_ports()
        return {subst.port_variable(n): str(inst.ports[n]) for n in proxied}

    def _replace_ports(self, inst: Instance, names: list[str]) -> None:
        """Give ``inst`` new ports for ``names``, whose ports another program holds now (it
        was down: a port kept for it is reserved in ``ports.json`` only, and another corral
        on the host, or anything else, may have bound it)."""
        for name in names:
            old = inst.ports[name]
            try:
                inst.ports[name] = self.ports.replace(old)
            except PortsExhausted:
                continue  # the spawn fails to bind and backs off; the next one tries again
            self.events.emit(inst.service, "port", f"port {old} for service {name} is taken "
                             f"by another program; using {inst.ports[name]}",
                             instance=inst.index)
        self._save_ports()

    def _balancer_dirty(self) -> None:
        """Something that decides who gets traffic changed: push the backends soon (once
        per loop turn, however many instances changed in it)."""
        if self._balancer_pending or self._booting:
            return
        self._balancer_pending = True
        asyncio.get_running_loop().call_soon(
            lambda: self._background(self._push_balancer()))

    def _backends(self) -> dict[str, list[Backend]]:
        """Per proxy service: the ready, healthy instances of every process receiving it
        (``active``), and those being drained (``draining``)."""
        out: dict[str, list[Backend]] = {s.name: [] for s in self.target_services
                                         if s.mode == "proxy"}
        for service in self.services.values():
            for inst in (*service.instances.values(), *service.retiring.values()):
                if inst.pid is None or not inst.ports:
                    continue
                spec = self._spec_of(inst)
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

    async def _push_balancer(self) -> None:
        self._balancer_pending = False
        if self._unprobed and time.monotonic() < self._unprobed_until:
            return  # pushed once they are probed (or at the deadline): see __init__
        services = [s for s in self.target_services if s.mode == "proxy"]
        backends = self._backends()
        wanted = (services, backends)
        if wanted == self._balancer_last:
            return
        self._balancer_last = wanted
        try:
            errors = await self.balancer.configure(services, backends)
        except CorralError as exc:
            self._balancer_last = None
            self.events.emit("", "balancer", f"cannot configure the load balancer: {exc}")
            return
        for name, reason in errors.items():
            if reason:
                self.events.emit("", "balancer", f"service {name} cannot listen: {reason}")

    async def _drain(self, inst: Instance) -> None:
        """Take ``inst`` out of the balancer: no new connections, then wait until its open
        ones finish (or each service's drain_timeout passes)."""
        names = [s.name for s in self.target_services
                 if s.mode == "proxy" and s.name in inst.ports]
        if not names:
            return
        inst.draining = True
        await self._push_balancer()
        results = await asyncio.gather(*(self.balancer.drain(n, inst.launcher_name)
                                         for n in names), return_exceptions=True)
        left = [n for n, ok in zip(names, results, strict=True) if ok is not True]
        self.events.emit(inst.service, "drain", "drained" if not left else
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
            refused = {s.name: str(exc) for s in proxied}
        bound: list[str] = []
        for i, svc in fresh:
            reason = refused.get(svc.name)
            if svc.mode == "socket":
                assert self.launcher is not None
                try:
                    await self.launcher.listen(svc.name, svc.bind_host, svc.port)
                    bound.append(svc.name)
                except CorralError as exc:
                    reason = str(exc)
            if reason:
                problems.append((("services", i, "on"), f"cannot listen on {svc.on}: {reason}"))
        if problems or not hold:
            for name in bound:
                if name not in current:
                    with contextlib.suppress(CorralError):
                        await self.launcher.unlisten(name)  # type: ignore[union-attr]
        if problems:
            refuse(text, source, problems)

    # ------------------------------------------------------------------- target
    def check_target(self, target: Target, text: str | None, source: str) -> None:
        """Refuse what the target's own validation cannot see: secrets that are not set,
        resources that were never uploaded, users, groups and rlimits that the user corral
        runs as cannot give a process.

        Raises:
            SpecError: one line per problem, naming ``source``, the line (when ``text``,
                the YAML, is given) and the field.
        """
        problems: list[Problem] = []
        names = self.secrets.names()
        values: dict[str, str] | None = None
        proxied = [s.name for s in target.services if s.mode == "proxy"]
        for i, spec in enumerate(target.processes):
            problems += identity_problems(i, spec)
            lacking = subst.missing(spec, names, subst.own_names(spec, proxied))
            for line in lacking:
                where, _, msg = line.partition(": ")
                problems.append((("processes", i, *_field_loc(where.split(".", 1)[1])), msg))
            values = self.secrets.values() if values is None else values
            for k, ref in enumerate(spec.resources):
                try:
                    resolved = subst.expand(ref.id, values)
                except (KeyError, ValueError):
                    continue  # the missing secret (or bad reference) is reported above
                if resolved not in self.resources:
                    what = (f"the resource that {ref.id} names" if "${" in ref.id
                            else f"resource {ref.id[:12]}…")  # a secret's value stays unsaid
                    problems.append((("processes", i, "resources", k, "id"),
                                     f"{what} is not in the store; upload it with: "
                                     "corral resource up FILE"))
        if problems:
            refuse(text, source, problems)

    def plan_target(self, target: Target) -> list[Change]:
        """What ``apply_target(target)`` would change."""
        return rollout.diff(self.target(), target)

    def rollout_running(self) -> bool:
        return self._rollout_task is not None and not self._rollout_task.done()

    async def apply_target(self, target: Target, text: str | None, source: str,
                           cause: str = "target set") -> Rollout | None:
        """Make ``target`` the desired state: validate, save, then add, scale, replace
        (health-gated, in the background: see :attr:`rollout`) and remove.

        Returns:
            The rollout record (None when nothing changes).  Processes that are removed
            are gone when this returns; the rollout goes on in the background: it waits
            for added processes and new instances of rescaled ones to be healthy (or
            ready), and replaces changed ones, putting everything it replaced back if one
            fails.

        Raises:
            SpecError: the target is refused; nothing changed.
            Conflict: a rollout is still running, or the supervisor is shutting down.
        """
        self.conflict_if_stopping()
        self.check_target(target, text, source)
        if self.rollout_running():
            raise Conflict("a rollout is still running (see: corral target status); "
                           "wait for it to finish")
        await self.check_binds(target, text, source, hold=True)
        changes = self.plan_target(target)
        if not changes:
            return None
        # What a refused save must put back (nothing is spawned or stopped before it).
        undo = (self.services, self.target_services, self.rollout,
                [(s, s.spec, s.gen, s.desired) for s in self.services.values()])
        replace: list[tuple[Service, ProcessSpec | None, int]] = []
        removed = [self.services[c.name] for c in changes
                   if c.kind == "process" and c.action is rollout.Action.REMOVE]
        ordered: dict[str, Service] = {}
        added: list[Service] = []
        for spec in target.processes:
            service = self.services.get(spec.name)
            if service is None:
                service = Service(spec=spec)
                added.append(service)
                self.events.emit(spec.name, "load", f"loaded ({cause})")
            elif service.spec != spec:
                old, old_gen = service.spec, service.gen
                service.spec = spec
                only_scale = old.model_copy(update={"instances": spec.instances}) == spec
                if not only_scale:
                    service.gen += 1
                    replace.append((service, old, old_gen))
                elif spec.instances > old.instances:
                    added.append(service)  # its new instances are waited for, as added ones
                self.events.emit(spec.name, "update", f"scaled to {spec.instances}"
                                 if only_scale else "spec changed; replacing its instances")
            ordered[spec.name] = service
        for service in removed:
            ordered[service.spec.name] = service  # until stopped, below
        self.services = ordered
        self.target_services = list(target.services)
        self._depended = None
        for service in removed:
            service.desired = Desired.DOWN
        try:
            record = self._begin_rollout(cause, changes, replace, added)
            self.save(without={s.spec.name for s in removed})
        except StateWriteFailed:
            self.services, self.target_services, previous, was = undo
            for service, spec, gen, desired in was:
                service.spec, service.gen, service.desired = spec, gen, desired
            self._depended = None
            self._abandon_rollout(previous, replace)
            raise
        for service in sorted(removed, key=self.stop_order().index):
            await self._stop_instances(service, [*service.instances.values(),
                                                 *service.retiring.values()])
            for inst in [*service.instances.values(), *service.retiring.values()]:
                self._forget(inst)
            self.services.pop(service.spec.name, None)
            self.events.emit(service.spec.name, "unload", f"unloaded ({cause})")
        gone = [c.name for c in changes if c.kind == "service" and
                (c.action is rollout.Action.REMOVE or "mode" in c.fields or "on" in c.fields)]
        kept = {s.name for s in self.target_services if s.mode == "socket"}
        for name in gone:
            if name not in kept and self.launcher is not None:
                with contextlib.suppress(CorralError):
                    await self.launcher.unlisten(name)
        self._depended = None
        self.reconcile()
        self._balancer_dirty()
        self._rollout_task = asyncio.ensure_future(
            self._run_rollout(record, replace, added))
        return record

    def _begin_rollout(self, cause: str, changes: list[Change],
                       replace: list[tuple[Service, ProcessSpec | None, int]],
                       added: Iterable[Service] = (), secrets: Iterable[str] = ()) -> Rollout:
        """A new rollout's record, saved before anything changes: it holds what each
        replaced process ran (its spec, also pinned on the instances still running it, and
        its generation), so that a failure, here or in the next supervisor, puts that back."""
        record = Rollout(id=(self.rollout.id + 1 if self.rollout else 1), cause=cause,
                         started_at=time.time(), changes=changes, secrets=list(secrets))
        for service, old_spec, old_gen in replace:
            name = service.spec.name
            record.steps[name] = Step(name, service.spec.instances)
            if old_spec is not None:
                record.prior[name] = Prior(old_spec, old_gen)
                self._pin(service, {old_gen: old_spec})
        for service in added:
            record.added.append(service.spec.name)
            if service.spec.instances:
                record.steps[service.spec.name] = Step(service.spec.name,
                                                       service.spec.instances, detail="starting")
        self.rollout = record
        self._save_rollout()
        return record

    def _abandon_rollout(self, previous: Rollout | None,
                         replace: list[tuple[Service, ProcessSpec | None, int]]) -> None:
        """Undo :meth:`_begin_rollout` when it, or the save after it, was refused:
        ``previous`` is the record again (on disk too, when the new one got there and the
        old one can be written back), and each replaced service is back at its old
        generation, its instances unpinned."""
        self.rollout = previous
        for service, _, old_gen in replace:
            service.gen = old_gen
            self._pin(service, {})
        try:
            on_disk = statefile.read_json(self._rollout_file(), None)
        except (OSError, ValueError):
            on_disk = None
        kept = previous.id if previous is not None else None
        if not isinstance(on_disk, dict) or on_disk.get("id") == kept:
            return  # the refused write was the new record's own: the file is as it was
        try:
            if previous is not None:
                self._save_rollout()
            else:
                self._rollout_file().unlink(missing_ok=True)
        except (StateWriteFailed, OSError) as exc:
            self.events.emit("", "state_write", f"the refused rollout's record stays: {exc}")

    def _pin(self, service: Service, specs: dict[int, ProcessSpec]) -> None:
        """Every instance runs its own generation's spec: none is pinned on those of the
        service's current generation, ``specs[gen]`` on those of another (older, or after
        a revert newer) one, so that a crash restarts them as what they were."""
        for inst in (*service.instances.values(), *service.retiring.values()):
            if inst.gen == service.gen:
                inst.spec = None
            elif inst.gen in specs:
                inst.spec = specs[inst.gen]

    async def _run_rollout(self, record: Rollout,
                           replace: list[tuple[Service, ProcessSpec | None, int]],
                           added: list[Service] | None = None) -> None:
        """Replace each changed process, dependencies first, every instance healthy (or
        ready) before the next; added processes are waited for too, so that the caller
        learns whether the whole target came up.  When a replacement fails, everything
        the rollout replaced is put back (:meth:`_revert`), secrets included."""
        order = {s.spec.name: i for i, s in enumerate(reversed(self.stop_order()))}
        replace = sorted(replace, key=lambda r: order.get(r[0].spec.name, -1))
        try:
            if added and not record.reverting:
                await asyncio.gather(*(self._await_new(s, record.steps[s.spec.name], record)
                                       for s in added if s.spec.name in record.steps))
            failed = record.reverting
            for service, _, _ in ([] if failed else replace):
                name = service.spec.name
                step = record.steps[name]
                if await self._replace(service, step, record, record.prior.get(name)):
                    step.phase, step.detail = Phase.DONE, "replaced"
                    continue
                step.phase = Phase.FAILED
                self.events.emit(name, "rollout", f"rollout failed: {step.detail}; putting "
                                 "the old version back", last_lines=step.last_lines)
                failed = True
                break
            if failed:
                await self._revert(record, replace)
            else:
                self._settle_secrets(record, revert=False)
            record.finish(time.time())
            self._save_rollout()
            what = ("done" if record.phase is Phase.DONE
                    else f"failed: {record.reason}" + (f"; {record.outcome()}"
                                                       if record.outcome() else ""))
            self.events.emit("", "rollout", f"rollout {record.id} ({record.cause}) {what}")
        except asyncio.CancelledError:
            record.finish(time.time())  # here only: the saved record is resumed next time
            raise
        finally:
            self._wake()

    async def _revert(self, record: Rollout,
                      replace: list[tuple[Service, ProcessSpec | None, int]]) -> None:
        """Put back what a failed rollout changed: the secrets' old values first (so that
        no old instance starts again with a new one), then each replaced process's spec
        and generation, its instances brought back the same way, health-gated.  Saved as
        it goes: a supervisor killed meanwhile finishes the revert."""
        record.reverting = True
        self._settle_secrets(record, revert=True)
        self._save_rollout()
        for service, old_spec, old_gen in replace:
            name = service.spec.name
            step = record.steps[name]
            if old_spec is None or self.services.get(name) is not service:
                continue
            newer = {service.gen: service.spec}
            service.spec, service.gen = old_spec, old_gen
            self._depended = None
            self._pin(service, newer)
            try:
                self.save()
            except StateWriteFailed as exc:  # the old version comes back all the same
                self.events.emit(name, "rollout", f"the old version is back, but not saved: "
                                 f"{exc}")
            back = Step(name, service.spec.instances)
            ok = await self._replace(service, back, record, None, reverting=True)
            if step.phase is not Phase.FAILED:
                what = ("not replaced" if step.phase is Phase.RUNNING
                        else "put back to the old version")
                step.phase = Phase.REVERTED
                step.detail = what if ok else f"{what}; the old version is not healthy: " \
                                              f"{back.detail}"
            elif not ok:
                step.detail += f"; the old version is not healthy: {back.detail}"

    async def _replace(self, service: Service, step: Step, record: Rollout,
                       prior: Prior | None, reverting: bool = False) -> bool:
        """Bring every instance of ``service`` to its current generation, index by index,
        each healthy (or, with no health check, ready) before the next:

        - start-first (see ``ProcessSpec.replace_order``): the new instance starts beside
          the old one, which is drained and stopped once the new one is healthy;
        - stop-first: the old one is drained and stopped, then the new one started;
        - where nothing runs (down, waiting, backing off, failed), the new version starts;
        - an instance already of the current generation (replaced before a supervisor
          restart, or started meanwhile) must be healthy too.

        False (with ``step.detail`` and ``step.last_lines``) when a new instance is not
        healthy within ``rollout_timeout``: see :meth:`_put_back`.  ``reverting``: the
        current generation is the old version coming back (``record.restored``)."""
        name = service.spec.name
        for index in range(service.spec.instances):
            if self.services.get(name) is not service:
                return True  # unloaded meanwhile: nothing is left to replace
            timeout = service.spec.rollout_timeout
            old = service.instances.get(index)
            if old is not None and old.gen == service.gen:
                if service.desired is Desired.DOWN:
                    continue
                ok, why = await self._wait_healthy(old, timeout)
                if ok:
                    step.replaced += 1
                    continue
                await self._put_back(service, step, record, prior, index, None, old, why,
                                     record.started_at, reverting)
                return False
            if old is not None:
                if old.spawned is not None and not old.spawned.done():
                    with contextlib.suppress(CorralError):
                        await asyncio.shield(old.spawned)  # a spawn on its way: let it land
                if old.state is ServiceState.STOPPING:
                    await old.until_stopped()
            if service.desired is Desired.DOWN:
                if old is not None:
                    # Stopped (reconcile stops a running one): its next start is the new spec.
                    await self._stop_instances(service, [old])
                    self._cancel(old)
                    self._unwatch(old)
                    replacement = service.new_instance(index)
                    replacement.settled = old.settled
                    service.instances[index] = replacement
                    self._forget(old)
                    step.replaced += 1
                continue
            since = time.time()
            new = service.new_instance(index)
            beside = old is not None and old.pid is not None \
                and service.spec.replace_order == "start-first"
            if beside:
                assert old is not None
                self._unwatch(old)  # its checks belong to its spec; it is leaving anyway
                service.retiring[index] = old
                service.instances[index] = new
                step.detail = f"instance {index}: starting the new version beside pid {old.pid}"
                self.events.emit(name, "rollout", step.detail, instance=index)
                self.feed(new, Event.START, f"replacing pid {old.pid}")
            else:
                if old is not None and old.pid is not None:
                    step.detail = f"instance {index}: stopping pid {old.pid}, then starting " \
                                  "the new version"
                    self.events.emit(name, "rollout", step.detail, instance=index,
                                     pid=old.pid)
                    new.settled = True  # held: reconcile must not start it beside the old one
                    new.reason = f"waiting for pid {old.pid} to stop"
                    service.retiring[index] = old
                    service.instances[index] = new
                    await self._drain(old)
                    await self._stop_instances(service, [old])
                    service.retiring.pop(index, None)
                    new.settled = False
                elif old is not None:
                    self._cancel(old)
                    self._unwatch(old)
                    step.detail = f"instance {index}: starting the new version (the old " \
                                  f"one was {old.state.value})"
                    self.events.emit(name, "rollout", step.detail, instance=index)
                    service.instances[index] = new
                else:
                    service.instances[index] = new
                self.reconcile()  # starts it, or has it wait for its dependencies
            ok, why = await self._wait_healthy(new, timeout, beside=old if beside else None)
            if not ok:
                await self._put_back(service, step, record, prior, index, old, new, why,
                                     since, reverting)
                return False
            if beside:
                assert old is not None
                step.detail = f"instance {index}: new pid {new.pid} is ready; stopping " \
                              f"pid {old.pid}"
                self.events.emit(name, "rollout", step.detail, instance=index, pid=new.pid)
                await self._drain(old)
                await self._stop_instances(service, [old])
                service.retiring.pop(index, None)
            if old is not None:
                self._forget(old)
            step.replaced += 1
            if reverting:
                record.restored = True
        return True

    async def _put_back(self, service: Service, step: Step, record: Rollout,
                        prior: Prior | None, index: int, old: Instance | None, new: Instance,
                        why: str, since: float, reverting: bool) -> None:
        """``new`` did not become healthy: record why, with its own last lines, stop it, and
        put the old instance back in its place — still running (start-first), or started
        again and waited for (``record.restored``; the secrets' old values are back first).
        An old instance that its policy had left down (failed, or exited for good) stays so.
        While ``reverting``, ``new`` is the old version coming back: it stays (restarting as
        its policy says), and what it was replacing goes."""
        step.detail = f"instance {index}: {why}"
        step.last_lines = self._new_lines(service, new, since, old)
        if reverting:
            if old is not None:
                await self._stop_instances(service, [old])
                service.retiring.pop(index, None)
                self._forget(old)
            return
        self._settle_secrets(record, revert=True)
        if old is None:
            if prior is None:
                return  # nothing known to put back: what runs stays
            old = Instance(service=service.spec.name, index=index, gen=prior.gen,
                           spec=prior.spec)
        running = old.pid is not None
        held = not running and not old.settled
        old.settled = old.settled or held  # reconcile must not start it beside the new one
        # The old one goes back first, so that nothing (reconcile) starts the new one again.
        new.failed_run = True
        service.instances[index] = old
        service.retiring.pop(index, None)
        await self._stop_instances(service, [new])
        self._forget(new)
        spec = self._spec_of(old)
        if running:
            if old.watch is None and spec.health is not None and old.pid is not None:
                self._watch(old, spec)  # unwatched while it was retiring
            return
        record.restored = True  # not running before: back as it was, or started again
        if not held:
            return
        old.settled = False
        if service.desired is Desired.DOWN or service.instances.get(index) is not old:
            return
        if old.state is ServiceState.BACKOFF:
            self.feed(old, Event.START, "the rollout failed: starting the old version again")
        else:
            self.reconcile()
        ok, again = await self._wait_healthy(old, spec.rollout_timeout, "the old version")
        if not ok:
            step.detail += f"; {again}"

    def _new_lines(self, service: Service, new: Instance, since: float,
                   old: Instance | None = None) -> list[str]:
        """The last lines ``new`` wrote since ``since`` (its processes', its hooks'), without
        those of the other instances (``old``, the one it replaces, included); redacted."""
        others: set[int] = set()
        for inst in (*service.instances.values(), *service.retiring.values(), old):
            if inst is not None and inst is not new:
                others.update(p for p in (inst.pid, (inst.last_exit or {}).get("pid"))
                              if isinstance(p, int))
        log = paths.logs_dir(self.state_dir) / f"{service.spec.name}.log"
        stamp = rfc3339(since)
        count = 200
        while True:
            lines = tail(log, count, service.spec.logs.keep)
            mine = rollout.own_lines(lines, stamp, others)
            # A busy old instance can bury the new one's lines: look further back, within
            # reason, until the lines reach back to the new one's start.
            if len(mine) >= 5 or len(lines) < count or count >= 51200 or lines[0] < stamp:
                return self.redact(mine[-5:])
            count *= 4

    async def _await_new(self, service: Service, step: Step, record: Rollout) -> None:
        """Wait until every instance of a newly added process is healthy (or ready)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + service.spec.rollout_timeout
        for index in range(service.spec.instances):
            while (inst := service.instances.get(index)) is None:
                if loop.time() >= deadline or self.services.get(service.spec.name) is not service:
                    step.phase, step.detail = Phase.FAILED, f"instance {index} never started"
                    return
                waiter: asyncio.Future[None] = loop.create_future()
                self._state_waiters.append(waiter)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(waiter, deadline - loop.time())
            ok, why = await self._wait_healthy(inst, max(0.0, deadline - loop.time()))
            if not ok:
                step.phase, step.detail = Phase.FAILED, f"instance {index}: {why}"
                step.last_lines = self._new_lines(service, inst, record.started_at)
                self.events.emit(service.spec.name, "rollout", f"not up: {step.detail}",
                                 last_lines=step.last_lines)
                return
            step.replaced += 1
            step.detail = f"{step.replaced}/{service.spec.instances} up"
        step.phase = Phase.DONE

    async def _wait_healthy(self, inst: Instance, timeout: float,
                            what: str = "the new version",
                            beside: Instance | None = None) -> tuple[bool, str]:
        """Wait until ``inst`` is up and, if it has a health check, passing it.  With
        ``beside`` (the old instance it starts beside), a check on a fixed port that only
        the old one holds reaches the old one: it does not count."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        spec = self._spec_of(inst)
        port = _probed_port(spec) if beside is not None else None
        while True:
            # Healthy means ok: a new version that only reaches warning is not trusted
            # with the old one's place.
            healthy = spec.health is None or inst.health is HealthState.OK
            elsewhere = None
            if inst.state is ServiceState.UP and healthy:
                other = beside.pid if beside is not None else None
                if (port is None or inst.pid is None or other is None or not await
                        asyncio.to_thread(owner.reaches_other, port, inst.pid, other)):
                    return True, ""
                elsewhere = (f"its check on port {port} reaches pid {other}, the old "
                             "instance, which holds the port: replace it stop-first")
            if inst.state is ServiceState.FAILED or (inst.state is ServiceState.DOWN
                                                     and inst.settled):
                return False, f"{what} {inst.state.value}: {inst.reason}"
            service = self.services.get(inst.service)
            if service is None or service.desired is Desired.DOWN:
                return False, "the service was stopped during the rollout"
            remaining = deadline - loop.time()
            if remaining <= 0:
                kind = "healthy" if spec.health is not None else "ready"
                state = elsewhere or f"{inst.state.value}: {inst.reason}"
                return False, f"{what} was not {kind} within {timeout:g}s ({state})"
            waiter: asyncio.Future[None] = loop.create_future()
            self._state_waiters.append(waiter)
            with contextlib.suppress(TimeoutError):
                # Who holds the port changes without an event: look again each interval.
                await asyncio.wait_for(waiter, remaining if elsewhere is None or
                                       spec.health is None
                                       else min(remaining, spec.health.interval))

    async def wait_rollout(self) -> Rollout | None:
        """Wait for the running rollout (if any) to end; the last rollout's record."""
        if self._rollout_task is not None:
            await asyncio.shield(self._rollout_task)
        return self.rollout

    # --- stores (secrets, resources) ---
    # The stores themselves are self.secrets and self.resources (built in __init__).
    def secret_users(self, name: str) -> list[str]:
        """The processes whose spec refers to secret ``name`` (``${NAME}`` in command, env,
        cwd or before), sorted; stopped ones included, since starting them needs it."""
        return sorted(n for n, s in self.services.items()
                      if name in subst.references(s.spec))

    def resource_users(self, resource_id: str) -> list[str]:
        """The processes whose spec lists resource ``resource_id``, sorted; during a
        rollout of a secret, under its old value too (old instances still run with it)."""
        previous = self.secrets.previous()
        return sorted(n for n, s in self.services.items()
                      if any(ref.id == resource_id for ref in self._resource_refs(s.spec))
                      or (previous and any(ref.id == resource_id for ref in
                                           self._resource_refs(s.spec, previous))))

    def _resource_refs(self, spec: ProcessSpec,
                       instead: dict[str, str | None] | None = None) -> list[ResourceRef]:
        """``spec.resources`` with ids held in secrets resolved (as written if unresolved);
        ``instead``: values to use in place of the stored ones (None: not set)."""
        if not any("${" in ref.id for ref in spec.resources):
            return spec.resources
        values = self.secrets.values()
        for key, value in (instead or {}).items():
            if value is None:
                values.pop(key, None)
            else:
                values[key] = value
        refs = []
        for ref in spec.resources:
            try:
                refs.append(ref.model_copy(update={"id": subst.expand(ref.id, values)}))
            except (KeyError, ValueError):
                refs.append(ref)
        return refs

    async def secrets_changed(self, names: list[str]) -> Rollout | None:
        """Secrets ``names`` were set to new values by their source (``--secrets-dir``: the
        files are the truth, so a failed rollout keeps the old instances running but does
        not put an old value back): replace the processes that use them with the
        health-gated rollout of a target change, after the rollout under way, if any.

        Returns:
            The new rollout's record, or None when no process uses them.
        """
        if self.rollout_running():
            await self.wait_rollout()
        users = [self.services[n] for n in sorted({u for name in names
                                                   for u in self.secret_users(name)})]
        if not users:
            return None
        replace: list[tuple[Service, ProcessSpec | None, int]] = []
        for service in users:
            replace.append((service, service.spec, service.gen))
            service.gen += 1
        which = ", ".join(sorted(names))
        previous = self.rollout
        try:
            record = self._begin_rollout(
                f"secret{'s' if len(names) > 1 else ''} {which} changed", [], replace)
            self.save()
        except StateWriteFailed:
            self._abandon_rollout(previous, replace)
            raise
        self.events.emit("", "rollout", f"{record.cause}: replacing "
                         + ", ".join(s.spec.name for s in users))
        self._rollout_task = asyncio.ensure_future(self._run_rollout(record, replace))
        return record

    async def set_secret(self, name: str, value: str) -> tuple[bool, Rollout | None]:
        """Store secret ``name``; when the value changed and processes use it, replace them
        with the health-gated rollout of a target change (after the rollout under way, if
        any, so that its verdict never undoes this value).  The value it replaces is kept
        until this rollout's verdict, and put back if it fails.

        Returns:
            Whether the value changed, and the rollout's record (None when no process uses
            the secret, or nothing changed).

        Raises:
            SpecError: a bad name or value; nothing changed.
        """
        check_value(check_name(name), value)
        if self.rollout_running():
            await self.wait_rollout()
        users = [self.services[n] for n in self.secret_users(name)]
        if not users or (name in self.secrets and self.secrets.get(name).reveal() == value):
            return self.secrets.set(name, value), None
        replace: list[tuple[Service, ProcessSpec | None, int]] = []
        for service in users:
            replace.append((service, service.spec, service.gen))
            service.gen += 1
        # The record first: a supervisor killed after it knows which value to put back.
        previous = self.rollout
        try:
            record = self._begin_rollout(f"secret {name} changed", [], replace,
                                         secrets=[name])
        except StateWriteFailed:
            self._abandon_rollout(previous, replace)
            raise
        try:
            self.secrets.set(name, value, keep_previous=True)
        except CorralError:
            for service, _, gen in replace:
                service.gen = gen
                self._pin(service, {})
            record.finish(time.time())
            record.phase, record.reason = Phase.FAILED, f"secret {name} could not be stored"
            self._save_rollout()
            raise
        try:
            self.save()
        except StateWriteFailed:
            # Refused: the old value is back and nothing is replaced.
            try:
                self._settle_secrets(record, revert=True)
            except CorralError as exc:
                self.events.emit("", "state_write", f"secret {name} keeps its new value: {exc}")
            self._abandon_rollout(previous, replace)
            raise
        self.events.emit("", "rollout", f"{record.cause}: replacing "
                         + ", ".join(s.spec.name for s in users))
        self._rollout_task = asyncio.ensure_future(self._run_rollout(record, replace))
        return True, record

    def _settle_secrets(self, record: Rollout, revert: bool) -> None:
        """The verdict on the secrets ``record`` changed: keep the new values, or put the
        old ones back (before any old instance can start again with the new ones)."""
        if record.secrets:
            self.secrets.settle(record.secrets, revert)
    # --- end of stores ---


def _port_range(text: str) -> tuple[int, int]:
    """``CORRAL_PORT_RANGE`` (``LOW-HIGH``) for SERVICE_PORT_* allocation; the default
    30000-39999 when unset or unreadable."""
    low, _, high = text.partition("-")
    if low.strip().isdigit() and high.strip().isdigit() and 0 < int(low) <= int(high) < 65536:
        return int(low), int(high)
    return 30000, 39999


def _probed_port(spec: ProcessSpec) -> int | None:
    """The fixed port a tcp or http health check of ``spec`` connects to (None: an exec
    check, a check on the instance's own service port, or none)."""
    health = spec.health
    if health is None:
        return None
    if health.tcp is not None:
        return health.tcp.port
    if health.http is not None and health.http.service is None:
        return health.http.port
    return None


def _field_loc(path: str) -> tuple[str | int, ...]:
    """``"env.DB_URL"`` -> ``("env", "DB_URL")``; ``"command[1]"`` -> ``("command", 1)``."""
    head, _, rest = path.partition(".")
    name, _, index = head.partition("[")
    loc: tuple[str | int, ...] = (name, int(index.rstrip("]"))) if index else (name,)
    return (*loc, rest) if rest else loc


def _exit_record(message: Message, stop: str | None) -> dict[str, Any]:
    return {"exit_code": message.get("exit_code"), "signal": message.get("signal"),
            "at": rfc3339(float(message.get("at", time.time()))), "stop": stop,
            "pid": message.get("pid")}
