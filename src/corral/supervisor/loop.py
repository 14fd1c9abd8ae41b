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
import json
import os
import random
import time
from collections.abc import Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any

from corral.errors import Conflict, CorralError, NotFound, NotReady, SpawnFailed, SpecError
from corral.health.probes import Result
from corral.logs.reader import tail
from corral.monitor import sampler
from corral.protocol import messages as m
from corral.protocol import paths
from corral.spec import (
    ProcessSpec,
    Target,
    check_supported,
    format_size,
    load_target,
    validate_target,
)
from corral.states import Desired, HealthState, ServiceState
from corral.store import subst
from corral.store.resources import ResourceStore
from corral.store.secrets import SecretStore

from . import machine, notify, policy, reconcile, statefile
from .events import EventLog, rfc3339
from .hooks import HookResult, run_hook
from .instance import HISTORY_STEP, Instance, Service
from .launcher_client import LauncherClient, Message, check
from .machine import Action, Event
from .watch import HealthWatch

SAMPLE_EVERY = 2.0

_EXIT_EVENTS = {
    policy.Verdict.RESTART_NOW: Event.EXIT_RESTART,
    policy.Verdict.RESTART_LATER: Event.EXIT_BACKOFF,
    policy.Verdict.STAY_DOWN: Event.EXIT_DOWN,
    policy.Verdict.GIVE_UP: Event.EXIT_GIVE_UP,
}


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
        self.events = EventLog()
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
        self.secrets = SecretStore(state_dir / "secrets.json")
        self.resources = ResourceStore(state_dir / "resources")

    # ------------------------------------------------------------------ start up
    def load_state(self, target_file: Path | None = None) -> None:
        """Read ``target.yaml`` and ``desired.json``; ``target_file`` (``sup run --target``)
        replaces the stored target when given."""
        path = self.state_dir / "target.yaml"
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
        check_supported(target, str(target_file or path))
        down = set(statefile.read_json(self.state_dir / "desired.json", {}).get("down", []))
        for spec in target.processes:
            desired = Desired.DOWN if spec.name in down else Desired.UP
            self.services[spec.name] = Service(spec=spec, desired=desired)
        if target_file is not None:
            stored = load_target(path.read_text(), str(path)) if path.exists() else None
            if stored != target:
                self.save()

    async def attach(self, launcher: LauncherClient) -> None:
        """Adopt the launcher's children (same PIDs, no restart), then reconcile."""
        self.launcher = launcher
        children = await launcher.list_children()
        for child in children:
            self._adopt(child)
        running = {str(c.get("name")) for c in children}
        self._booting = False
        for name, exited in self._early_exits.items():
            if name not in running:
                self._replay_exit(exited)
        self._early_exits.clear()
        for inst in self._adopted_watch:
            self._watch(inst, self.services[inst.service].spec)
        self._adopted_watch.clear()
        for service in self.services.values():
            if service.spec.watchdog is None:
                continue
            for inst in service.instances.values():
                if inst.pid is not None:  # adopted: keep watching it
                    self._listen_notify(inst, service.spec)
                    self._arm_watchdog(inst, service.spec)
        self._background(self.monitor())
        self.reconcile()

    def _adopt(self, child: Message) -> None:
        name, _, index_text = str(child.get("name", "")).rpartition("/")
        service = self.services.get(name)
        pid = int(child["pid"])
        index = int(index_text) if index_text.isdigit() else -1
        if (service is None or service.desired is Desired.DOWN
                or not 0 <= index < service.spec.instances or index in service.instances):
            # Not wanted any more (unloaded or stopped while no supervisor ran): stop it.
            self._terminate_pid(pid, service.spec if service else None)
            return
        inst = Instance(service=name, index=index, state=ServiceState.UP, pid=pid,
                        started_at=float(child.get("started_at", time.time())),
                        spawns=int(child.get("spawns", 1)), reason="adopted")
        service.instances[index] = inst
        if service.spec.health is not None:
            self._adopted_watch.append(inst)
        self.events.emit(name, "adopt", f"adopted pid {pid} after a supervisor restart",
                         instance=index, pid=pid, to=inst.state.value)

    def _replay_exit(self, exited: Message) -> None:
        """An instance exited while no supervisor ran: apply its restart policy now."""
        name, _, index_text = str(exited.get("name", "")).rpartition("/")
        service = self.services.get(name)
        if service is None or not index_text.isdigit() or service.desired is Desired.DOWN:
            return
        index = int(index_text)
        if index >= service.spec.instances:
            return
        inst = service.instances.setdefault(index, Instance(service=name, index=index))
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
        if self._booting:
            self._early_exits[str(exited.get("name"))] = exited
            return
        inst = self._find(str(exited.get("name", "")), exited.get("pid"))
        if inst is None:
            return  # a replayed exit we already handled, or of a process we stopped
        service = self.services[inst.service]
        if inst.state is ServiceState.STOPPING:
            return  # the Terminate reply records it
        ran_for = time.time() - (inst.started_at or time.time())
        decision = policy.decide(service.spec.restart, exited.get("exit_code"),
                                 exited.get("signal"), ran_for, inst.streak, self.uniform)
        inst.streak = decision.streak
        inst.delay = decision.delay
        inst.last_exit = _exit_record(exited, None)
        inst.pid = None
        self._unwatch(inst)
        if decision.verdict in (policy.Verdict.STAY_DOWN, policy.Verdict.GIVE_UP):
            inst.settled = True
        self.events.emit(inst.service, "exit", decision.reason, instance=inst.index,
                         pid=exited.get("pid"), exit_code=exited.get("exit_code"),
                         signal=exited.get("signal"), delay_s=decision.delay,
                         last_lines=exited.get("last_lines") or [])
        self.feed(inst, _EXIT_EVENTS[decision.verdict], decision.reason)

    def _find(self, name: str, pid: Any) -> Instance | None:
        service_name, _, index_text = name.rpartition("/")
        service = self.services.get(service_name)
        if service is None or not index_text.isdigit():
            return None
        inst = service.instances.get(int(index_text))
        if inst is None or inst.pid != pid:
            return None
        return inst

    # ------------------------------------------------------------------- machine
    def feed(self, inst: Instance, event: Event, reason: str) -> None:
        """Step the instance's machine and run the actions it returns."""
        before = inst.state
        after, actions = machine.step(before, event)
        inst.state = after
        if event is Event.START:
            inst.init_done = False  # a start asked for (not a crash restart) runs init
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
        if after is not before:
            self.events.emit(inst.service, "state", reason, instance=inst.index,
                             from_=before.value, to=after.value, pid=inst.pid)
            for waiter in self._state_waiters:
                if not waiter.done():
                    waiter.set_result(None)
            self._state_waiters.clear()
        hooks = self.services[inst.service].spec.hooks if inst.service in self.services \
            else None
        if hooks is not None and after is not before:
            if before is ServiceState.STARTING and after is ServiceState.UP and hooks.post_run:
                self._background(self._hook_later(inst, "post_run", hooks.post_run))
            if event is Event.STOPPED and hooks.post_stop:
                self._background(self._hook_later(inst, "post_stop", hooks.post_stop))
        if after in (ServiceState.DOWN, ServiceState.FAILED):
            inst.stopped.set()
            if inst.notify is not None:
                inst.notify.close()
                inst.notify = None
            if after is not before:
                self.reconcile()
        elif after is ServiceState.UP and before is not after \
                and self.services[inst.service].spec.name in self._depended_on():
            self.reconcile()  # a dependent may be waiting for this one

    def _spawn(self, inst: Instance) -> None:
        spec = self.services[inst.service].spec
        assert self.launcher is not None
        # The encoded request is kept per instance and spec: a restart costs one frame
        # write, not an environment copy, a mkdir and a JSON encoding.
        if inst.request is None or inst.request[0] is not spec:
            inst.request = (spec, self._spawn_request(inst, spec))
        if (spec.readiness == "notify" or spec.watchdog is not None) and inst.notify is None:
            self._listen_notify(inst, spec)
        inst.stopped.clear()
        inst.next_restart_at = None
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        inst.spawned = done
        if spec.hooks.init is not None and not inst.init_done:
            self._background(self._init_then_spawn(inst, spec, spec.hooks.init, done))
            return
        future = self.launcher.send_encoded(inst.request[1])
        self._background(self._spawned(inst, future, done))

    async def _init_then_spawn(self, inst: Instance, spec: ProcessSpec, command: str,
                               done: asyncio.Future[None]) -> None:
        """The init hook runs before a start a user or the target asked for; a failure
        backs off like a crash (so a broken init does not spin)."""
        result = await self._hook(inst, spec, "init", command)
        if inst.state is not ServiceState.STARTING or self.launcher is None:
            if not done.done():
                done.set_result(None)
            if inst.state is ServiceState.STOPPING:
                self.feed(inst, Event.STOPPED, "stopped before it started")
            return
        if not result.ok:
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

    async def _hook(self, inst: Instance, spec: ProcessSpec, hook: str,
                    command: str) -> HookResult:
        env = self._instance_env(inst, spec)
        if inst.pid is not None:
            env["CORRAL_PID"] = str(inst.pid)
        result = await run_hook(hook, command, env=env, cwd=self._instance_cwd(inst, spec),
                                user=spec.user, group=spec.group, timeout=spec.hooks.timeout,
                                log=paths.logs_dir(self.state_dir) / f"{spec.name}.log")
        self.events.emit(inst.service, "hook", result.summary, instance=inst.index,
                         pid=inst.pid, last_lines=result.output)
        return result

    def _instance_env(self, inst: Instance, spec: ProcessSpec) -> dict[str, str]:
        env = dict(self._base_env)
        env.update(spec.env)
        env["CORRAL_SERVICE"] = spec.name
        env["CORRAL_INSTANCE"] = str(inst.index)
        return env

    def _instance_cwd(self, inst: Instance, spec: ProcessSpec) -> str:
        if spec.cwd is not None:
            return spec.cwd
        workdir = paths.run_dir(self.state_dir) / spec.name / str(inst.index)
        workdir.mkdir(parents=True, exist_ok=True)
        return str(workdir)

    def _spawn_request(self, inst: Instance, spec: ProcessSpec) -> bytes:
        cwd = self._instance_cwd(inst, spec)
        env = self._instance_env(inst, spec)
        if spec.readiness == "notify" or spec.watchdog is not None:
            env["NOTIFY_SOCKET"] = notify.socket_name(self.state_dir, spec.name, inst.index)
        if spec.watchdog is not None:
            env["WATCHDOG_USEC"] = str(int(spec.watchdog * 1_000_000))
        request: Message = {
            "type": m.SPAWN, "name": inst.launcher_name, "argv": spec.argv, "env": env,
            "cwd": cwd, "user": spec.user, "group": spec.group,
            "umask": int(spec.umask, 8) if spec.umask else None, "rlimits": dict(spec.rlimits),
            "memory_max": spec.limits.memory,  # launcher: cgroup memory.max (additive, h5)
            "log": {"path": str(paths.logs_dir(self.state_dir) / f"{spec.name}.log"),
                    "format": spec.logs.format, "max_bytes": spec.logs.max_bytes,
                    "keep": spec.logs.keep},
        }
        return json.dumps(request, separators=(",", ":")).encode()

    async def _spawned(self, inst: Instance, reply: asyncio.Future[Message],
                       done: asyncio.Future[None]) -> None:
        try:
            answer = check(await reply)
        except CorralError as exc:
            inst.request = None  # rebuild it (and its working directory) next time
            service = self.services.get(inst.service)
            if not done.done():
                done.set_exception(exc)
                done.exception()  # mark retrieved: a caller may not be waiting
            if inst.state is ServiceState.STOPPING:
                self.feed(inst, Event.STOPPED, "stopped before it started")
            if service is None or inst.state is not ServiceState.STARTING:
                return
            decision = policy.decide_spawn_failure(service.spec.restart, inst.streak,
                                                   str(exc), self.uniform)
            inst.streak, inst.delay = decision.streak, decision.delay
            if decision.verdict is policy.Verdict.GIVE_UP:
                inst.settled = True
            self.events.emit(inst.service, "spawn_failed", decision.reason,
                             instance=inst.index, delay_s=decision.delay)
            self.feed(inst, _EXIT_EVENTS[decision.verdict], decision.reason)
            return
        inst.pid = int(answer["pid"])
        inst.started_at = float(answer.get("started_at", time.time()))
        inst.spawns += 1
        inst.settled = False
        inst.health = HealthState.UNKNOWN
        if not done.done():
            done.set_result(None)
        self.events.emit(inst.service, "spawn", f"spawned pid {inst.pid}", instance=inst.index,
                         pid=inst.pid)
        spec = self.services[inst.service].spec
        if spec.health is not None and inst.state is ServiceState.STARTING:
            self._watch(inst, spec)
        if spec.watchdog is not None and inst.state is ServiceState.STARTING:
            self._arm_watchdog(inst, spec)
        if inst.state is ServiceState.STARTING and spec.readiness == "started":
            self.feed(inst, Event.READY, f"running as pid {inst.pid}")
        elif inst.state is ServiceState.STOPPING:
            self._terminate(inst)  # a stop came while the spawn was on its way

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
        name = notify.socket_name(self.state_dir, spec.name, inst.index)
        try:
            inst.notify = notify.NotifySocket(name, lambda f: self._on_notify(inst, f))
        except OSError as exc:
            self.events.emit(inst.service, "state", f"cannot listen on NOTIFY_SOCKET {name}: "
                             f"{exc.strerror}; readiness will never be reported",
                             instance=inst.index)

    def _on_notify(self, inst: Instance, fields: notify.Fields) -> None:
        service = self.services.get(inst.service)
        if service is None:
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
            self.feed(inst, Event.STOP, f"restarting: {why}")
        inst.dog = asyncio.get_running_loop().call_later(spec.watchdog, expired)

    def _watch(self, inst: Instance, spec: ProcessSpec) -> None:
        assert spec.health is not None and inst.pid is not None
        if inst.watch is not None:
            inst.watch.stop()
        inst.failures = 0
        inst.watch = HealthWatch(spec.health, inst.pid, self._instance_env(inst, spec),
                                 self._instance_cwd(inst, spec),
                                 lambda pid, result: self._on_health(inst, pid, result)).start()

    def _unwatch(self, inst: Instance) -> None:
        if inst.dog is not None:
            inst.dog.cancel()
            inst.dog = None
        if inst.watch is not None:
            inst.watch.stop()
            inst.watch = None

    def _on_health(self, inst: Instance, pid: int, result: Result) -> None:
        """A probe finished: update health, readiness and, past `retries`, restart."""
        if inst.pid != pid or inst.state not in (ServiceState.STARTING, ServiceState.UP,
                                                  ServiceState.UNHEALTHY):
            return
        health = self.services[inst.service].spec.health
        assert health is not None
        if result.state is not inst.health:
            self.events.emit(inst.service, "health", f"health {result.state.value}: "
                             f"{result.detail}", instance=inst.index, pid=pid)
        inst.health = result.state
        if result.state in (HealthState.OK, HealthState.WARNING):
            inst.failures = 0
            if inst.state is ServiceState.STARTING:
                self.feed(inst, Event.READY, f"ready: {result.detail}")
            elif inst.state is ServiceState.UNHEALTHY:
                self.feed(inst, Event.HEALTHY, f"healthy again: {result.detail}")
            return
        inst.failures += 1
        if inst.failures < health.retries:
            return
        why = f"unhealthy after {inst.failures} failed checks: {result.detail}"
        if inst.state is ServiceState.UP:
            self.events.emit(inst.service, "health", why, instance=inst.index, pid=pid)
            self.feed(inst, Event.UNHEALTHY, why)
        if health.restart_on_unhealthy:
            inst.failures = 0
            self.events.emit(inst.service, "restart_scheduled", f"restarting: {why}",
                             instance=inst.index, pid=pid, delay_s=0.0)
            self.feed(inst, Event.STOP, f"restarting: {why}")

    def _terminate(self, inst: Instance) -> None:
        self._unwatch(inst)
        if inst.pid is None:
            # The spawn has not answered yet; _spawned terminates once it has a pid.
            if inst.spawned is None or inst.spawned.done():
                self.feed(inst, Event.STOPPED, "stopped before it started")
            return
        spec = self.services[inst.service].spec
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
        inst.pid = None
        self.feed(inst, Event.STOPPED, f"stopped ({method.replace('_', ' ')})")

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
        inst.timer = asyncio.get_running_loop().call_later(
            inst.delay, lambda: self.feed(inst, Event.TIMER, "backoff over; restarting"))
        self.events.emit(inst.service, "restart_scheduled",
                         f"restart in {inst.delay:.2f}s", instance=inst.index,
                         delay_s=round(inst.delay, 3))

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
                inst = service.instances.setdefault(
                    step.index, Instance(service=step.service, index=step.index))
                inst.reason = "waiting for " + ", ".join(self._blocked_by(service)) + \
                    " to be ready"
            elif step.verb is reconcile.Verb.START:
                inst = service.instances.setdefault(
                    step.index, Instance(service=step.service, index=step.index))
                self.feed(inst, Event.START, "starting")
            else:
                inst = service.instances[step.index]
                if inst.state in (ServiceState.DOWN, ServiceState.FAILED):
                    if step.verb is reconcile.Verb.DROP:
                        del service.instances[step.index]
                    continue
                self.feed(inst, Event.STOP, "stopping")

    # ----------------------------------------------------------------- resources
    def sample_interval(self) -> float:
        """Every 2 s, stretched with the number of instances (a tree costs ~30 µs to read)
        so that sampling stays under ~0.5 % of a core."""
        live = sum(1 for s in self.services.values() for i in s.instances.values() if i.pid)
        return max(SAMPLE_EVERY, live * 0.06)

    async def monitor(self) -> None:
        """Sample CPU and RSS of every instance's process tree, forever; enforce limits."""
        while True:
            await asyncio.sleep(self.sample_interval())
            self.sample_once(time.monotonic())

    def sample_once(self, now: float) -> None:
        for service in list(self.services.values()):
            for inst in list(service.instances.values()):
                if inst.pid is None or inst.state not in (ServiceState.STARTING,
                                                          ServiceState.UP,
                                                          ServiceState.UNHEALTHY):
                    inst.sampled = None
                    continue
                use = sampler.usage(inst.pid)
                if use is None:
                    continue
                if inst.sampled is not None and now > inst.sampled[0]:
                    inst.cpu = max(0.0, (use.cpu_seconds - inst.sampled[1])
                                   / (now - inst.sampled[0]) * 100)
                inst.sampled = (now, use.cpu_seconds)
                inst.rss = use.rss_bytes
                wall = time.time()
                if not inst.history or wall - inst.history[-1][0] >= HISTORY_STEP:
                    inst.history.append((wall, round(inst.cpu or 0.0, 1), use.rss_bytes))
                self._check_limits(service, inst, now)

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

    def save(self) -> None:
        """Persist the desired state atomically."""
        target = Target(processes=[s.spec for s in self.services.values()])
        statefile.atomic_write(self.state_dir / "target.yaml", target.to_yaml().encode())
        statefile.write_json(self.state_dir / "desired.json", {
            "down": sorted(n for n, s in self.services.items() if s.desired is Desired.DOWN)})

    async def load(self, spec: ProcessSpec) -> str:
        """Add or update a service; returns ``added``, ``updated`` or ``unchanged``.

        Error handling: a new service whose first spawn fails (missing binary, unknown
        user) is removed again and :class:`SpawnFailed` is raised: nothing changed.
        """
        check_supported(spec, spec.name)
        self._check_dependencies(spec)
        existing = self.services.get(spec.name)
        if existing is not None:
            if existing.spec == spec:
                return "unchanged"
            only_scale = existing.spec.model_copy(update={"instances": spec.instances}) == spec
            existing.spec = spec
            self._depended = None
            self.save()
            self.events.emit(spec.name, "update", "spec changed" if not only_scale
                             else f"scaled to {spec.instances}")
            if not only_scale:
                await self._stop_instances(existing, existing.instances.values())
            self.reconcile()
            await self._wait_stopped(existing)
            await self._wait_spawned(existing)
            return "updated"
        service = Service(spec=spec)
        self.services[spec.name] = service
        self._depended = None
        self.events.emit(spec.name, "load", "loaded")
        self.reconcile()
        try:
            await self._wait_spawned(service)
        except SpawnFailed:
            await self._remove(service)
            raise
        self.save()
        return "added"

    def _check_dependencies(self, spec: ProcessSpec) -> None:
        others = [s.spec.to_dict() for n, s in self.services.items() if n != spec.name]
        # Validating the would-be target checks dependencies (unknown names, cycles).
        validate_target({"processes": [*others, spec.to_dict()]}, spec.name)

    async def unload(self, name: str) -> None:
        service = self.get(name)
        users = sorted(s.spec.name for s in self.services.values()
                       if name in s.spec.depends_on)
        if users:
            raise Conflict(f"{name} cannot be unloaded: {', '.join(users)} depend on it; "
                           "unload or change those first")
        await self._remove(service)
        self.save()
        self.events.emit(name, "unload", "unloaded")

    async def _remove(self, service: Service) -> None:
        service.desired = Desired.DOWN
        await self._stop_instances(service, list(service.instances.values()))
        self.services.pop(service.spec.name, None)
        self._depended = None

    async def start(self, name: str) -> None:
        service = self.get(name)
        service.desired = Desired.UP
        for inst in service.instances.values():
            inst.settled = False
            if inst.state is ServiceState.FAILED:
                inst.streak = policy.Streak()
        self.save()
        self.reconcile()
        await self._wait_spawned(service)

    async def stop(self, name: str) -> None:
        service = self.get(name)
        service.desired = Desired.DOWN
        self.save()
        self.reconcile()
        await self._wait_stopped(service)

    async def restart(self, name: str) -> None:
        service = self.get(name)
        service.desired = Desired.UP
        self.save()
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
        await asyncio.gather(*(inst.stopped.wait() for inst in chosen
                               if inst.state is ServiceState.STOPPING))

    async def _wait_stopped(self, service: Service) -> None:
        await asyncio.gather(*(inst.stopped.wait() for inst in list(service.instances.values())
                               if inst.state is ServiceState.STOPPING))

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
        for service in self.stop_order():
            live = [i for i in service.instances.values()
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

    # --- stores (secrets, resources) ---
    # The stores themselves are self.secrets and self.resources (built in __init__).
    def secret_users(self, name: str) -> list[str]:
        """The processes whose spec refers to secret ``name`` (``${NAME}`` in command, env,
        cwd or before), sorted; stopped ones included, since starting them needs it."""
        return sorted(n for n, s in self.services.items()
                      if name in subst.references(s.spec))

    def resource_users(self, resource_id: str) -> list[str]:
        """The processes whose spec lists resource ``resource_id``, sorted."""
        return sorted(n for n, s in self.services.items()
                      if any(ref.id == resource_id for ref in s.spec.resources))

    async def secrets_changed(self, names: list[str]) -> None:
        """Secrets ``names`` were set to new values (already stored).

        The processes that use them are to be replaced with the health-gated rollout of a
        target change; until that is wired in, a new value reaches a process at its next
        start.
        """
        return None
    # --- end of stores ---


def _exit_record(message: Message, stop: str | None) -> dict[str, Any]:
    return {"exit_code": message.get("exit_code"), "signal": message.get("signal"),
            "at": rfc3339(float(message.get("at", time.time()))), "stop": stop,
            "pid": message.get("pid")}
