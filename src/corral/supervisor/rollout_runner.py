"""The rollout runner: brings changed processes to their new version, health-gated, and
puts everything back when one fails (also after a supervisor crash: its record is saved
in ``rollout.json`` before anything changes).  :mod:`.rollout` holds the record and the
diff; this module runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import TYPE_CHECKING

from corral.errors import CorralError, StateWriteFailed
from corral.health import owner
from corral.logs.reader import tail
from corral.protocol import paths
from corral.spec import ProcessSpec
from corral.states import Desired, HealthState, ServiceState

from . import graph, rollout
from .events import rfc3339
from .instance import Instance, Service
from .machine import Trigger
from .rollout import Change, Phase, Prior, Rollout, Step

if TYPE_CHECKING:
    from .loop import Supervisor

#: What a rollout replaces: each process, the spec it ran (None: not known) and its
#: generation.
Replacing = list[tuple[Service, ProcessSpec | None, int]]


class RolloutRunner:
    """Runs the supervisor's rollouts, one at a time; :attr:`record` is the last one's.

    Args:
        core: the supervisor whose processes it replaces (it feeds their machines,
            reconciles, stops instances and saves the desired state through it).
    """

    def __init__(self, core: Supervisor) -> None:
        self._core = core
        self.record: Rollout | None = None
        self.task: asyncio.Future[None] | None = None

    def start(self, record: Rollout, replace: Replacing,
              added: list[Service] | None = None) -> None:
        """Run ``record`` in the background."""
        self.task = asyncio.ensure_future(self.run(record, replace, added))

    def resume(self) -> None:
        """After attach: go on with the rollout the last supervisor left running; with no
        record, instances of an older generation mean one was under way: finish it,
        forward."""
        if self.record is not None and self.record.phase is Phase.RUNNING:
            self.resume_record(self.record)
            return
        stale = [s for s in self._core.services.values()
                 if any(i.gen != s.gen for i in s.instances.values())]
        if stale:
            self.record = record = Rollout(
                id=self.record.id + 1 if self.record else 1,
                cause="resumed after a supervisor restart", started_at=self._core.clock.time(), changes=[])
            for service in stale:
                record.steps[service.spec.name] = Step(service.spec.name,
                                                       service.spec.instances)
            self.start(record, [(s, None, s.gen) for s in stale])

    def load(self, replaced_target: bool) -> None:
        """The last rollout's record (``target status`` shows it after a restart).  One
        still running is resumed by :meth:`resume` (at attach), unless ``sup run --target`` replaced
        the target it was applying: then it ends here, failed, and the secrets it changed
        get their old values back."""
        try:
            doc = self._core.files.rollout()
            record = Rollout.from_state(doc) if doc is not None else None
        except (ValueError, KeyError, TypeError, AttributeError, CorralError):
            self._core.events.emit("", "rollout", f"{self._core.files.rollout_path} is damaged; the last "
                             "rollout is forgotten")
            record = None
        self.record = record
        try:
            if record is None or record.phase is not Phase.RUNNING:
                # Values kept for a rollout that never got its record: it never began.
                self._core.secrets.settle(list(self._core.secrets.previous()), revert=True)
            elif replaced_target:
                record.finish(self._core.clock.time())
                record.phase = Phase.FAILED
                record.reason = "the target was replaced by sup run --target"
                self._core.secrets.settle(record.secrets, revert=True)
                self.save()
        except CorralError as exc:  # an unreadable secrets file: the request that needs it says
            self._core.events.emit("", "rollout", f"cannot settle the secrets of the last rollout: "
                             f"{exc}")

    def save(self) -> None:
        """Persist the rollout's record: written before a rollout changes anything, at its
        verdict and at its end (a new supervisor resumes it, or shows it)."""
        if self.record is not None:
            self._core.files.save_rollout(self.record.to_state())

    def pinned_spec(self, name: str, gen: int) -> ProcessSpec | None:
        """The spec an instance of generation ``gen`` runs when that is not its service's
        current one: the previous spec of a rollout this supervisor resumes, else None."""
        record, service = self.record, self._core.services.get(name)
        prior = record.prior.get(name) if record is not None else None
        if (record is None or record.phase is not Phase.RUNNING or prior is None
                or service is None or gen == service.gen or gen != prior.gen):
            return None
        return prior.spec

    def resume_record(self, record: Rollout) -> None:
        """Go on with the rollout the last supervisor left running, as if nothing had
        happened: each replaced process is brought to its new version health-gated, and a
        failure puts the previous one back (``record.prior``).  A process whose generation
        was never bumped (killed between the record and the target's save) is back on its
        previous spec: nothing of it changed."""
        replace: Replacing = []
        for name, prior in record.prior.items():
            service = self._core.services.get(name)
            if service is None:
                continue
            if service.gen == prior.gen:
                service.spec = prior.spec
                self._core.specs_changed()
            replace.append((service, prior.spec, prior.gen))
        if replace and not record.reverting and all(s.gen == g for s, _, g in replace):
            # Killed before the generations were saved: nothing was replaced.
            self._core.secrets.settle(record.secrets, revert=True)
            self._core.save()
            record.finish(self._core.clock.time())
            record.phase = Phase.FAILED
            record.reason = "the supervisor stopped before the rollout began; nothing changed"
            self.save()
            return
        for step in record.steps.values():
            if step.phase is Phase.RUNNING:
                step.detail = "resumed after a supervisor restart"
        self._core.events.emit("", "rollout", f"rollout {record.id} ({record.cause}) resumed after "
                         "a supervisor restart")
        added = [self._core.services[n] for n in record.added if n in self._core.services]
        self.start(record, replace, added)

    def begin(self, cause: str, changes: list[Change],
                       replace: Replacing,
                       added: Iterable[Service] = (), secrets: Iterable[str] = ()) -> Rollout:
        """A new rollout's record, saved before anything changes: it holds what each
        replaced process ran (its spec, also pinned on the instances still running it, and
        its generation), so that a failure, here or in the next supervisor, puts that back."""
        record = Rollout(id=(self.record.id + 1 if self.record else 1), cause=cause,
                         started_at=self._core.clock.time(), changes=changes, secrets=list(secrets))
        for service, old_spec, old_gen in replace:
            name = service.spec.name
            record.steps[name] = Step(name, service.spec.instances)
            if old_spec is not None:
                record.prior[name] = Prior(old_spec, old_gen)
                self.pin(service, {old_gen: old_spec})
        for service in added:
            record.added.append(service.spec.name)
            if service.spec.instances:
                record.steps[service.spec.name] = Step(service.spec.name,
                                                       service.spec.instances, detail="starting")
        self.record = record
        self.save()
        return record

    def abandon(self, previous: Rollout | None, replace: Replacing) -> None:
        """Undo :meth:`begin` when it, or the save after it, was refused: ``previous`` is
        the record again (on disk too, when the new one got there and the old one can be
        written back), and each replaced service is back at its old generation, its
        instances unpinned."""
        self.record = previous
        for service, _, old_gen in replace:
            service.gen = old_gen
            self.pin(service, {})
        try:
            on_disk = self._core.files.rollout()
        except (OSError, ValueError):
            on_disk = None
        kept = previous.id if previous is not None else None
        if not isinstance(on_disk, dict) or on_disk.get("id") == kept:
            return  # the refused write was the new record's own: the file is as it was
        try:
            if previous is not None:
                self.save()
            else:
                self._core.files.rollout_path.unlink(missing_ok=True)
        except (StateWriteFailed, OSError) as exc:
            self._core.events.emit("", "state_write",
                                   f"the refused rollout's record stays: {exc}")

    def pin(self, service: Service, specs: dict[int, ProcessSpec]) -> None:
        """Every instance runs its own generation's spec: none is pinned on those of the
        service's current generation, ``specs[gen]`` on those of another (older, or after
        a revert newer) one, so that a crash restarts them as what they were."""
        for inst in (*service.instances.values(), *service.retiring.values()):
            if inst.gen == service.gen:
                inst.spec = None
            elif inst.gen in specs:
                inst.spec = specs[inst.gen]

    async def run(self, record: Rollout,
                           replace: Replacing,
                           added: list[Service] | None = None) -> None:
        """Replace each changed process, dependencies first, every instance healthy (or
        ready) before the next; added processes are waited for too, so that the caller
        learns whether the whole target came up.  When a replacement fails, everything
        the rollout replaced is put back (:meth:`_revert`), secrets included."""
        order = {s.spec.name: i
                 for i, s in enumerate(reversed(graph.stop_order(self._core.services)))}
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
                self._core.events.emit(name, "rollout", f"rollout failed: {step.detail}; putting "
                                 "the old version back", last_lines=step.last_lines)
                failed = True
                break
            if failed:
                await self._revert(record, replace)
            else:
                self.settle_secrets(record, revert=False)
            record.finish(self._core.clock.time())
            self.save()
            what = ("done" if record.phase is Phase.DONE
                    else f"failed: {record.reason}" + (f"; {record.outcome()}"
                                                       if record.outcome() else ""))
            self._core.events.emit("", "rollout", f"rollout {record.id} ({record.cause}) {what}")
        except asyncio.CancelledError:
            record.finish(self._core.clock.time())  # here only: the saved record is resumed next time
            raise
        finally:
            self._core.waiters.wake()

    async def _revert(self, record: Rollout,
                      replace: Replacing) -> None:
        """Put back what a failed rollout changed: the secrets' old values first (so that
        no old instance starts again with a new one), then each replaced process's spec
        and generation, its instances brought back the same way, health-gated.  Saved as
        it goes: a supervisor killed meanwhile finishes the revert."""
        record.reverting = True
        self.settle_secrets(record, revert=True)
        self.save()
        for service, old_spec, old_gen in replace:
            name = service.spec.name
            step = record.steps[name]
            if old_spec is None or self._core.services.get(name) is not service:
                continue
            newer = {service.gen: service.spec}
            service.spec, service.gen = old_spec, old_gen
            self._core.specs_changed()
            self.pin(service, newer)
            try:
                self._core.save()
            except StateWriteFailed as exc:  # the old version comes back all the same
                self._core.events.emit(name, "rollout", "the old version is back, but not "
                                       f"saved: {exc}")
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
            if self._core.services.get(name) is not service:
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
                    await self._core.stop_instances(service, [old])
                    self._core.effects.cancel(old)
                    self._core.liveness.unwatch(old)
                    replacement = service.new_instance(index)
                    replacement.stays_down = old.stays_down
                    service.instances[index] = replacement
                    self._core.forget(old)
                    step.replaced += 1
                continue
            since = self._core.clock.time()
            new = service.new_instance(index)
            beside = old is not None and old.pid is not None \
                and service.spec.replace_order == "start-first"
            if beside:
                assert old is not None
                self._core.liveness.unwatch(old)  # its checks belong to its spec; it is leaving anyway
                service.retiring[index] = old
                self._core.effects.orders.cancel(old)  # a crash must not bring it back
                service.instances[index] = new
                step.detail = f"instance {index}: starting the new version beside pid {old.pid}"
                self._core.events.emit(name, "rollout", step.detail, instance=index)
                self._core.feed(new, Trigger.START, f"replacing pid {old.pid}")
            else:
                if old is not None and old.pid is not None:
                    step.detail = f"instance {index}: stopping pid {old.pid}, then starting " \
                                  "the new version"
                    self._core.events.emit(name, "rollout", step.detail, instance=index,
                                     pid=old.pid)
                    new.stays_down = True  # held: reconcile must not start it beside the old one
                    new.reason = f"waiting for pid {old.pid} to stop"
                    service.retiring[index] = old
                    self._core.effects.orders.cancel(old)  # a crash must not bring it back
                    service.instances[index] = new
                    await self._core.traffic.drain(old)
                    await self._core.stop_instances(service, [old])
                    service.retiring.pop(index, None)
                    new.stays_down = False
                elif old is not None:
                    self._core.effects.cancel(old)
                    self._core.liveness.unwatch(old)
                    step.detail = f"instance {index}: starting the new version (the old " \
                                  f"one was {old.state.value})"
                    self._core.events.emit(name, "rollout", step.detail, instance=index)
                    service.instances[index] = new
                else:
                    service.instances[index] = new
                self._core.reconcile()  # starts it, or has it wait for its dependencies
            ok, why = await self._wait_healthy(new, timeout, beside=old if beside else None)
            if not ok:
                await self._put_back(service, step, record, prior, index, old, new, why,
                                     since, reverting)
                return False
            if beside:
                assert old is not None
                step.detail = f"instance {index}: new pid {new.pid} is ready; stopping " \
                              f"pid {old.pid}"
                self._core.events.emit(name, "rollout", step.detail, instance=index, pid=new.pid)
                await self._core.traffic.drain(old)
                await self._core.stop_instances(service, [old])
                service.retiring.pop(index, None)
            if old is not None:
                self._core.forget(old)
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
                await self._core.stop_instances(service, [old])
                service.retiring.pop(index, None)
                self._core.forget(old)
            return
        self.settle_secrets(record, revert=True)
        if old is None:
            if prior is None:
                return  # nothing known to put back: what runs stays
            old = Instance(service=service.spec.name, index=index, gen=prior.gen,
                           spec=prior.spec)
        running = old.pid is not None
        held = not running and not old.stays_down
        old.stays_down = old.stays_down or held  # reconcile must not start it beside the new one
        # The old one goes back first, so that nothing (reconcile) starts the new one again.
        new.failed_run = True
        service.instances[index] = old
        service.retiring.pop(index, None)
        await self._core.stop_instances(service, [new])
        self._core.forget(new)
        spec = self._core.spec_of(old)
        if running:
            if old.watch is None and spec.health is not None and old.pid is not None:
                self._core.liveness.watch(old, spec)  # unwatched while it was retiring
            return
        record.restored = True  # not running before: back as it was, or started again
        if not held:
            return
        old.stays_down = False
        if service.desired is Desired.DOWN or service.instances.get(index) is not old:
            return
        if old.state is ServiceState.BACKOFF:
            self._core.feed(old, Trigger.START, "the rollout failed: starting the old version again")
        else:
            self._core.reconcile()
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
        log = paths.service_log(self._core.state_dir, service.spec.name)
        stamp = rfc3339(since)
        count = 200
        while True:
            lines = tail(log, count, service.spec.logs.keep)
            mine = rollout.own_lines(lines, stamp, others)
            # A busy old instance can bury the new one's lines: look further back, within
            # reason, until the lines reach back to the new one's start.
            if len(mine) >= 5 or len(lines) < count or count >= 51200 or lines[0] < stamp:
                return self._core.redact(mine[-5:])
            count *= 4

    async def _await_new(self, service: Service, step: Step, record: Rollout) -> None:
        """Wait until every instance of a newly added process is healthy (or ready)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + service.spec.rollout_timeout
        for index in range(service.spec.instances):
            while (inst := service.instances.get(index)) is None:
                if loop.time() >= deadline or self._core.services.get(service.spec.name) is not service:
                    step.phase, step.detail = Phase.FAILED, f"instance {index} never started"
                    return
                await self._core.waiters.wait(deadline - loop.time())
            ok, why = await self._wait_healthy(inst, max(0.0, deadline - loop.time()))
            if not ok:
                step.phase, step.detail = Phase.FAILED, f"instance {index}: {why}"
                step.last_lines = self._new_lines(service, inst, record.started_at)
                self._core.events.emit(service.spec.name, "rollout", f"not up: {step.detail}",
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
        spec = self._core.spec_of(inst)
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
                                                     and inst.stays_down):
                return False, f"{what} {inst.state.value}: {inst.reason}"
            service = self._core.services.get(inst.service)
            if service is None or service.desired is Desired.DOWN:
                return False, "the service was stopped during the rollout"
            remaining = deadline - loop.time()
            if remaining <= 0:
                kind = "healthy" if spec.health is not None else "ready"
                state = elsewhere or f"{inst.state.value}: {inst.reason}"
                return False, f"{what} was not {kind} within {timeout:g}s ({state})"
            # Who holds the port changes without an event: look again each interval.
            await self._core.waiters.wait(remaining if elsewhere is None or spec.health is None
                                    else min(remaining, spec.health.interval))

    async def wait(self) -> Rollout | None:
        """Wait for the running rollout (if any) to end; the last rollout's record."""
        if self.task is not None:
            await asyncio.shield(self.task)
        return self.record

    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    def settle_secrets(self, record: Rollout, revert: bool) -> None:
        """The verdict on the secrets ``record`` changed: keep the new values, or put the
        old ones back (before any old instance can start again with the new ones)."""
        if record.secrets:
            self._core.secrets.settle(record.secrets, revert)


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
