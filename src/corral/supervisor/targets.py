"""Changes to the desired state as a whole: checking, planning and applying a target,
and secrets that change under running processes (each a health-gated rollout)."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from corral.errors import Conflict, CorralError, StateWriteFailed
from corral.spec import Problem, ProcessSpec, ResourceRef, Target, refuse
from corral.states import Desired
from corral.store import subst
from corral.store.secrets import check_name, check_value

from . import graph, rollout
from .identity import identity_problems
from .instance import Service
from .rollout import Change, Phase, Rollout
from .rollout_runner import Replacing

if TYPE_CHECKING:
    from .loop import Supervisor


class Targets:
    """``target check/plan/set`` and secret changes, run on ``core``'s processes."""

    def __init__(self, core: Supervisor) -> None:
        self._core = core

    def check(self, target: Target, text: str | None, source: str) -> None:
        """Refuse what the target's own validation cannot see: secrets that are not set,
        resources that were never uploaded, users, groups and rlimits that the user corral
        runs as cannot give a process.

        Raises:
            SpecError: one line per problem, naming ``source``, the line (when ``text``,
                the YAML, is given) and the field.
        """
        problems: list[Problem] = []
        names = self._core.secrets.names()
        values: dict[str, str] | None = None
        proxied = [s.name for s in target.services if s.mode == "proxy"]
        for i, spec in enumerate(target.processes):
            problems += identity_problems(i, spec)
            lacking = subst.missing(spec, names, subst.own_names(spec, proxied))
            for line in lacking:
                where, _, msg = line.partition(": ")
                problems.append((("processes", i, *_field_loc(where.split(".", 1)[1])), msg))
            values = self._core.secrets.values() if values is None else values
            for k, ref in enumerate(spec.resources):
                try:
                    resolved = subst.expand(ref.id, values)
                except (KeyError, ValueError):
                    continue  # the missing secret (or bad reference) is reported above
                if resolved not in self._core.resources:
                    what = (f"the resource that {ref.id} names" if "${" in ref.id
                            else f"resource {ref.id[:12]}…")  # a secret's value stays unsaid
                    problems.append((("processes", i, "resources", k, "id"),
                                     f"{what} is not in the store; upload it with: "
                                     "corral resource up FILE"))
        if problems:
            refuse(text, source, problems)

    def plan(self, target: Target) -> list[Change]:
        """What ``apply_target(target)`` would change."""
        return rollout.diff(self._core.target(), target)

    async def apply(self, target: Target, text: str | None, source: str,
                           cause: str = "target set") -> Rollout | None:
        """Make ``target`` the desired state: validate, save, then add, scale, replace
        (health-gated, in the background: see :attr:`.RolloutRunner.record`) and remove.

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
        self._core.conflict_if_stopping()
        self.check(target, text, source)
        if self._core.rollouts.running():
            raise Conflict("a rollout is still running (see: corral target status); "
                           "wait for it to finish")
        await self._core.traffic.check_binds(target, text, source, hold=True)
        changes = self.plan(target)
        if not changes:
            return None
        # What a refused save must put back (nothing is spawned or stopped before it).
        undo = (self._core.services, self._core.traffic.target_services,
                self._core.rollouts.record,
                [(s, s.spec, s.gen, s.desired) for s in self._core.services.values()])
        replace: Replacing = []
        removed = [self._core.services[c.name] for c in changes
                   if c.kind == "process" and c.action is rollout.Edit.REMOVE]
        ordered: dict[str, Service] = {}
        added: list[Service] = []
        for spec in target.processes:
            service = self._core.services.get(spec.name)
            if service is None:
                service = Service(spec=spec)
                added.append(service)
                self._core.events.emit(spec.name, "load", f"loaded ({cause})")
            elif service.spec != spec:
                old, old_gen = service.spec, service.gen
                service.spec = spec
                only_scale = old.model_copy(update={"instances": spec.instances}) == spec
                if not only_scale:
                    service.gen += 1
                    replace.append((service, old, old_gen))
                elif spec.instances > old.instances:
                    added.append(service)  # its new instances are waited for, as added ones
                self._core.events.emit(spec.name, "update", f"scaled to {spec.instances}"
                                 if only_scale else "spec changed; replacing its instances")
            ordered[spec.name] = service
        for service in removed:
            ordered[service.spec.name] = service  # until stopped, below
        self._core.services = ordered
        self._core.traffic.target_services = list(target.services)
        self._core.specs_changed()
        for service in removed:
            service.desired = Desired.DOWN
        try:
            record = self._core.rollouts.begin(cause, changes, replace, added)
            self._core.save(without={s.spec.name for s in removed})
        except StateWriteFailed:
            self._core.services, self._core.traffic.target_services, previous, was = undo
            for service, spec, gen, desired in was:
                service.spec, service.gen, service.desired = spec, gen, desired
            self._core.specs_changed()
            self._core.rollouts.abandon(previous, replace)
            raise
        for service in sorted(removed, key=graph.stop_order(self._core.services).index):
            await self._core.stop_instances(service, [*service.instances.values(),
                                                 *service.retiring.values()])
            for inst in [*service.instances.values(), *service.retiring.values()]:
                self._core.forget(inst)
            self._core.services.pop(service.spec.name, None)
            self._core.events.emit(service.spec.name, "unload", f"unloaded ({cause})")
        gone = [c.name for c in changes if c.kind == "service" and
                (c.action is rollout.Edit.REMOVE or "mode" in c.fields or "on" in c.fields)]
        kept = {s.name for s in self._core.traffic.target_services if s.mode == "socket"}
        for name in gone:
            if name not in kept and self._core.launcher is not None:
                with contextlib.suppress(CorralError):
                    await self._core.launcher.unlisten(name)
        self._core.specs_changed()
        self._core.reconcile()
        self._core.traffic.dirty()
        self._core.rollouts.start(record, replace, added)
        return record

    def secret_users(self, name: str) -> list[str]:
        """The processes whose spec refers to secret ``name`` (``${NAME}`` in command, env,
        cwd or before), sorted; stopped ones included, since starting them needs it."""
        return sorted(n for n, s in self._core.services.items()
                      if name in subst.references(s.spec))

    def resource_users(self, resource_id: str) -> list[str]:
        """The processes whose spec lists resource ``resource_id``, sorted; during a
        rollout of a secret, under its old value too (old instances still run with it)."""
        previous = self._core.secrets.previous()
        return sorted(n for n, s in self._core.services.items()
                      if any(ref.id == resource_id for ref in self._resource_refs(s.spec))
                      or (previous and any(ref.id == resource_id for ref in
                                           self._resource_refs(s.spec, previous))))

    def _resource_refs(self, spec: ProcessSpec,
                       instead: dict[str, str | None] | None = None) -> list[ResourceRef]:
        """``spec.resources`` with ids held in secrets resolved (as written if unresolved);
        ``instead``: values to use in place of the stored ones (None: not set)."""
        if not any("${" in ref.id for ref in spec.resources):
            return spec.resources
        values = self._core.secrets.values()
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
        if self._core.rollouts.running():
            await self._core.rollouts.wait()
        users = [self._core.services[n] for n in sorted({u for name in names
                                                   for u in self.secret_users(name)})]
        if not users:
            return None
        replace: Replacing = []
        for service in users:
            replace.append((service, service.spec, service.gen))
            service.gen += 1
        which = ", ".join(sorted(names))
        previous = self._core.rollouts.record
        try:
            record = self._core.rollouts.begin(
                f"secret{'s' if len(names) > 1 else ''} {which} changed", [], replace)
            self._core.save()
        except StateWriteFailed:
            self._core.rollouts.abandon(previous, replace)
            raise
        self._core.events.emit("", "rollout", f"{record.cause}: replacing "
                         + ", ".join(s.spec.name for s in users))
        self._core.rollouts.start(record, replace)
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
        if self._core.rollouts.running():
            await self._core.rollouts.wait()
        users = [self._core.services[n] for n in self.secret_users(name)]
        if not users or (name in self._core.secrets and self._core.secrets.get(name).reveal() == value):
            return self._core.secrets.set(name, value), None
        replace: Replacing = []
        for service in users:
            replace.append((service, service.spec, service.gen))
            service.gen += 1
        # The record first: a supervisor killed after it knows which value to put back.
        previous = self._core.rollouts.record
        try:
            record = self._core.rollouts.begin(f"secret {name} changed", [], replace,
                                               secrets=[name])
        except StateWriteFailed:
            self._core.rollouts.abandon(previous, replace)
            raise
        try:
            self._core.secrets.set(name, value, keep_previous=True)
        except CorralError:
            for service, _, gen in replace:
                service.gen = gen
                self._core.rollouts.pin(service, {})
            record.finish(self._core.clock.time())
            record.phase, record.reason = Phase.FAILED, f"secret {name} could not be stored"
            self._core.rollouts.save()
            raise
        try:
            self._core.save()
        except StateWriteFailed:
            # Refused: the old value is back and nothing is replaced.
            try:
                self._core.rollouts.settle_secrets(record, revert=True)
            except CorralError as exc:
                self._core.events.emit("", "state_write",
                                       f"secret {name} keeps its new value: {exc}")
            self._core.rollouts.abandon(previous, replace)
            raise
        self._core.events.emit("", "rollout", f"{record.cause}: replacing "
                         + ", ".join(s.spec.name for s in users))
        self._core.rollouts.start(record, replace)
        return True, record


def _field_loc(path: str) -> tuple[str | int, ...]:
    """``"env.DB_URL"`` -> ``("env", "DB_URL")``; ``"command[1]"`` -> ``("command", 1)``."""
    head, _, rest = path.partition(".")
    name, _, index = head.partition("[")
    loc: tuple[str | int, ...] = (name, int(index.rstrip("]"))) if index else (name,)
    return (*loc, rest) if rest else loc
