"""Group configuration, templates and binds of the supervisor's processes.

A process with ``config:``, ``templates:``, ``binds:`` or ``exports:`` is *rendered*
(:mod:`corral.render` does the pure part): its values are layered (``config:`` defaults <
the host file of ``svc config set`` < the group's applied config), ``${SECRET}``
references resolved from this host's store, and its templates rendered with ``cfg``,
``sys``, ``svc`` (its service group's members, from the census) and ``bind`` (each
producer's live members).  The result (:class:`Rendered`) is written into each
instance's working directory before it starts, and gives its ``CORRAL_BIND_*``
variables.

When something a render reads changes (a group config applied here or on another host, a
host file, a member of its own group or of a producer coming, going or changing), the
process is rendered again.  Nothing happens if the output is the same.  Otherwise the
running instances get the new files and their ``reconfigure`` hook (same pid) when the
process has one, else they are replaced one at a time, health-gated, by the rollout of a
changed spec.  A render that fails (a template error, a secret not set here) changes
nothing: the running instances keep their files, and the error is an event and shows in
the service's status.

A strict bind (``binding_mode: strict``, the default) keeps a process from starting until
every producer it binds to has a live member (:meth:`GroupConfigs.waiting_binds`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from corral.cluster import ClusterBackend, GroupConfig
from corral.cluster.records import refuse_unless_newer
from corral.errors import CorralError, NotFound, SpecError, StateWriteFailed
from corral.render import (
    Context,
    Layer,
    Layered,
    bind_env,
    bind_view,
    compute_exports,
    layer,
    parse_values,
    render_templates,
    resolve_secrets,
    secret_references,
    service_view,
)
from corral.spec import ProcessSpec
from corral.states import Desired, ServiceState

from .identity import give_workdir
from .instance import Instance, Service
from .rollout import Phase
from .statefile import atomic_write

if TYPE_CHECKING:
    from .loop import Supervisor

#: Where ``svc config set`` keeps each process's host file (``<state>/host-config/``).
HOST_DIR = "host-config"


@dataclass(frozen=True)
class Rendered:
    """One render of a process: what its instances get.

    ``files`` (output path in the working directory -> text) may hold resolved secrets:
    they are written to the instances' directories and nowhere else, and left out of the
    repr.  ``exports`` are computed before secrets are resolved (they go to the census).
    """

    spec: ProcessSpec = field(repr=False)
    version: int
    files: Mapping[str, str] = field(repr=False)
    env: Mapping[str, str]
    exports: Mapping[str, Any]
    digest: str


class GroupConfigs:
    """Renders the supervisor's processes and acts on changes (see the module docstring).

    Args:
        core: the supervisor whose processes it renders.

    ``backend`` is set by :class:`~.membership.Membership` when it starts the cluster
    backend; without one (a supervisor built without a cluster link) renders see no
    group config and no census.
    """

    def __init__(self, core: Supervisor) -> None:
        self._core = core
        self.backend: ClusterBackend | None = None
        self._rendered: dict[str, Rendered] = {}
        self._errors: dict[str, str] = {}
        self._rolling: set[str] = set()
        self._reconfiguring: dict[str, asyncio.Future[None]] = {}
        #: Registers this supervisor's members now (set by the membership), so that a
        #: process renders with itself among ``svc.members``.
        self.sync_members: Callable[[], None] = lambda: None
        #: False until the membership has started (after the attach): until then each
        #: start renders, and nothing is re-rendered.
        self.active = False
        #: Per process, the digest and version its running instances were given (kept in
        #: ``run/rendered.json``, so that a new supervisor knows what its adopted
        #: instances run, and acts on a change made while no supervisor was there).
        self._given: dict[str, dict[str, Any]] | None = None

    # ------------------------------------------------------------------ host files
    def host_path(self, name: str) -> Path:
        return self._core.state_dir / HOST_DIR / f"{name}.json"

    def _host_layer(self, name: str) -> Layer | None:
        path = self.host_path(name)
        try:
            data = json.loads(path.read_bytes())
            return Layer(f"host file {data['source']}", dict(data["values"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SpecError(f"{path}: cannot read the host file of {name}: {exc}") from None

    def set_host_file(self, name: str, text: str, fmt: str, source: str) -> dict[str, Any]:
        """``svc config set NAME FILE``: the host's own values for process ``name``.

        Checked first (it parses, its ``${SECRET}`` references are well formed, and the
        process renders with it); then stored atomically and the process re-rendered.

        Raises:
            NotFound: no process ``name``.  SpecError / TemplateError: the file, or the
            render with it, is refused; nothing was stored.
        """
        service = self._core.get(name)
        values = parse_values(text, fmt, source)
        secret_references(values, source)
        host = Layer(f"host file {source}", values)
        if service.spec.uses_groups:
            self.render(service.spec, host=host)
        path = self.host_path(name)
        data = json.dumps({"source": source, "values": values}, indent=1, sort_keys=True)
        try:
            os.makedirs(path.parent, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise StateWriteFailed(path.parent, exc) from None
        atomic_write(path, data.encode() + b"\n")
        self._core.events.emit(name, "config", f"host file set from {source}")
        self.refresh([service], f"host file {source}")
        return self.show(service.spec.service_group)

    # ------------------------------------------------------------------ layering
    def _group_config(self, spec: ProcessSpec) -> GroupConfig | None:
        return self.backend.group_config(spec.service_group) if self.backend else None

    def layered(self, spec: ProcessSpec, *, host: Layer | None = None,
                config: GroupConfig | None = None) -> tuple[Layered, int]:
        """The process's values and the group config version in them (0: none).

        ``host`` and ``config`` replace the stored host file and group config (to check
        a candidate before storing it).
        """
        host = host if host is not None else self._host_layer(spec.name)
        config = config if config is not None else self._group_config(spec)
        layers = [Layer("default", spec.config)]
        if host is not None:
            layers.append(host)
        if config is not None:
            layers.append(Layer(f"group config v{config.version}", config.values))
        return layer(layers), config.version if config is not None else 0

    def show(self, service_group: str) -> dict[str, Any]:
        """``config show``: the version, and the merged values with where each came from
        (the defaults and host file of this host's process of ``service_group``, if it has
        one).  References to secrets are shown as written, never resolved.

        Raises:
            NotFound: the group has no config applied and no process here.
        """
        local = next((s for s in self._core.services.values()
                      if s.spec.service_group == service_group), None)
        config = self.backend.group_config(service_group) if self.backend else None
        if local is None and config is None:
            raise NotFound(f"service group {service_group!r} has no config applied and no "
                           "process on this host")
        if local is not None:
            layered, version = self.layered(local.spec)
        else:
            assert config is not None
            layered, version = layer([Layer(f"group config v{config.version}",
                                            config.values)]), config.version
        out: dict[str, Any] = {
            "service_group": service_group, "version": version, "values": layered.values,
            "rows": [{"path": p, "value": v, "source": s} for p, v, s in layered.rows()]}
        if local is not None:
            out["process"] = local.spec.name
            out["error"] = self._errors.get(local.spec.name)
            rendered = self._rendered.get(local.spec.name)
            out["rendered_version"] = rendered.version if rendered is not None else None
        return out

    # ------------------------------------------------------------------ rendering
    def render(self, spec: ProcessSpec, *, host: Layer | None = None,
               config: GroupConfig | None = None) -> Rendered:
        """Render ``spec`` now (see the module docstring).

        Raises:
            SpecError: a template error (:class:`~corral.errors.TemplateError`, with its
                file and line), a secret not set on this host, a template file that
                cannot be read, a damaged host file.
        """
        self.sync_members()
        layered, version = self.layered(spec, host=host, config=config)
        exports = compute_exports(spec.exports, layered.values)
        cfg = resolve_secrets(layered.values, self._core.secrets.values(),
                              f"{spec.name}: config")
        census = self.backend.census() if self.backend is not None else None
        group = spec.service_group
        me = self.backend.identity if self.backend is not None else None
        members = [m.view() for m in census.group(group)] if census is not None else []
        binds = {name: (producer, [m.view() for m in census.live(producer)]
                        if census is not None else [])
                 for name, producer in spec.binds.items()}
        host_name = me.host if me is not None else socket.gethostname()
        sys_view = {"host": host_name, "address": me.address if me is not None else "127.0.0.1",
                    "member": me.member if me is not None else host_name}
        context = Context(cfg, sys_view, service_view(group, members,
                                                      me.member if me is not None else None),
                          bind_view(binds))
        texts = self._template_texts(spec)
        rendered = render_templates(texts, context)
        targets = spec.template_files
        files = {targets[name]: text for name, text in rendered.items()}
        env = bind_env(binds)
        digest = hashlib.sha256(json.dumps([cfg, files, env], sort_keys=True,
                                           default=str).encode()).hexdigest()
        return Rendered(spec, version, files, env, exports, digest)

    def _template_texts(self, spec: ProcessSpec) -> dict[str, str]:
        """Each template's source: from a resource placed under that name, else from the
        process's ``cwd`` (or an absolute path)."""
        effective = self._core.environment.effective(spec)
        placed = {r.file: r.id for r in effective.resources}
        texts = {}
        for name in spec.templates:
            if name in placed:
                path = self._core.resources.path(placed[name])
            elif os.path.isabs(name) or effective.cwd is not None:
                path = Path(effective.cwd or "/") / name
            else:
                raise SpecError(f"{spec.name}: template {name!r} is neither a resource placed "
                                "under that name nor in a cwd given to the process")
            try:
                texts[name] = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                why = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text"
                raise SpecError(f"{spec.name}: cannot read template {name} ({path}): "
                                f"{why}") from None
        return texts

    def current(self, spec: ProcessSpec) -> Rendered | None:
        """The render instances of ``spec`` start with: the last accepted one, or a new
        one (None for a process that renders nothing).

        Raises:
            SpecError: there is none yet and rendering fails (the spawn fails, and backs
            off like a crash).
        """
        if not spec.uses_groups:
            return None
        held = self._rendered.get(spec.name)
        if held is not None and held.spec is spec:
            return held
        try:
            rendered = self.render(spec)
        except SpecError as exc:
            self._refused(spec.name, f"cannot render: {exc}")
            raise
        if self._core.services.get(spec.name) is not None and \
                self._core.services[spec.name].spec is spec:
            self._rendered[spec.name] = rendered
            self._errors.pop(spec.name, None)
            self._give(rendered)
        return rendered

    def env(self, spec: ProcessSpec) -> dict[str, str]:
        """The ``CORRAL_BIND_<NAME>_ADDRS`` variables of a new process of ``spec``
        (rendering it first if needed: a failure raises SpecError, as :meth:`current`)."""
        rendered = self.current(spec)
        return dict(rendered.env) if rendered is not None else {}

    def last_env(self, spec: ProcessSpec) -> dict[str, str]:
        """The ``CORRAL_BIND_*`` variables of the last accepted render (for hooks); never
        raises."""
        rendered = self._rendered.get(spec.name)
        return dict(rendered.env) if rendered is not None else {}

    async def write(self, spec: ProcessSpec, workdir: Path) -> None:
        """Write the current render's files into ``workdir`` (each atomically, owned by
        the process's user), off the loop.

        Raises:
            SpecError: there is no render yet and rendering fails.  OSError /
            StateWriteFailed: a file cannot be written.
        """
        rendered = self.current(spec)
        if rendered is not None and rendered.files:
            await asyncio.to_thread(_write_files, rendered, workdir)

    def waiting_binds(self, spec: ProcessSpec) -> tuple[str, ...]:
        """``bind NAME`` for each strict bind whose producer has no live member yet."""
        if not spec.binds or spec.binding_mode != "strict":
            return ()
        census = self.backend.census() if self.backend is not None else None
        return tuple(f"bind {name}" for name, group in spec.binds.items()
                     if census is None or not census.live(group))

    def status(self, spec: ProcessSpec) -> dict[str, Any] | None:
        """What ``svc status`` shows of the process's config: the version it runs and the
        last refused render."""
        if not spec.uses_groups:
            return None
        rendered = self._rendered.get(spec.name)
        return {"version": rendered.version if rendered is not None else None,
                "error": self._errors.get(spec.name)}

    def member_fields(self, spec: ProcessSpec) -> tuple[int, Mapping[str, Any]]:
        """``config_version`` and ``exports`` for the process's member record."""
        rendered = self._rendered.get(spec.name)
        if rendered is None:
            return 0, {}
        return rendered.version, rendered.exports

    # ------------------------------------------------------------------ applying
    async def apply(self, service_group: str, version: int, text: str, fmt: str,
                    source: str) -> dict[str, Any]:
        """``config apply``: store ``version`` of the group's config, once this host's
        process of that group (if any) renders with it.

        Raises:
            SpecError / TemplateError: the file, or the render with it, is refused;
            nothing was stored.  Conflict: the version is not higher than the current
            one.  ClusterError: the cluster cannot be reached.
        """
        if self.backend is None:
            raise CorralError("this supervisor has no service groups")
        values = parse_values(text, fmt, source)
        secret_references(values, source)
        self._refuse_secret_values(values, source)
        current = self.backend.group_config(service_group)
        # A user's apply of a version already stored is refused even with the same values
        # (Habitat's rule); the backends accept that only for their own retried writes.
        refuse_unless_newer(service_group, current, version)
        candidate = GroupConfig(version, values)
        for service in self._core.services.values():
            if service.spec.service_group == service_group and service.spec.uses_groups:
                self.render(service.spec, config=candidate)
        await self.backend.apply_config(service_group, version, values)
        return {"service_group": service_group, "version": version}

    def _refuse_secret_values(self, values: Mapping[str, Any], source: str) -> None:
        """SpecError if a text value holds the value of one of this host's secrets (of 8
        characters or more): group configs are stored in the cluster in clear, so a
        secret goes there as its ``${NAME}`` reference.  The message names the secret,
        never its value."""
        secrets = {n: v for n, v in self._core.secrets.values().items() if len(v) >= 8}
        for path, text in _texts(values, ""):
            for name, value in secrets.items():
                if value in text:
                    raise SpecError(f"{source}: {path}: holds the value of secret {name!r}; "
                                    f"write ${{{name}}} instead (a group config is stored "
                                    "in the cluster in clear)")

    # ------------------------------------------------------------------ the listener
    def config_changed(self, service_group: str, config: GroupConfig | None) -> None:
        why = f"group config v{config.version}" if config is not None else \
            "group config removed"
        self.refresh([s for s in self._core.services.values()
                      if s.spec.service_group == service_group], why)

    def census_changed(self, service_groups: frozenset[str]) -> None:
        affected = [s for s in self._core.services.values()
                    if (s.spec.templates and s.spec.service_group in service_groups)
                    or any(g in service_groups for g in s.spec.binds.values())]
        if not affected:
            return
        if self.backend is not None and self.backend.census().stale:
            # The link to etcd is down: what the templates say stays as it was (every
            # other member now shows stale), so losing etcd restarts nothing.
            return
        if any(s.spec.binds for s in affected):
            self._core.reconcile()  # a strict bind may be released
        self.refresh(affected, "members of " + ", ".join(sorted(service_groups)) + " changed")

    def adopt(self) -> None:
        """After the attach: render every process that has no render yet (its instances
        were adopted from the last supervisor and run what it rendered), without acting
        on them, so that the census shows the config version they run at once."""
        self.active = True
        given = self._load_given()
        for service in list(self._core.services.values()):
            spec = service.spec
            held = self._rendered.get(spec.name)
            if not spec.uses_groups or (held is not None and held.spec is spec):
                continue
            before = given.get(spec.name)
            try:
                rendered = self.render(spec)
            except SpecError as exc:
                self._refused(spec.name, f"cannot render: {exc}")
                continue
            self._rendered[spec.name] = rendered
            if before is not None and before.get("digest") != rendered.digest:
                self._act(service, f"group config v{rendered.version} (changed while no "
                          "supervisor ran)")
            else:
                self._give(rendered)

    def refresh(self, services: Iterable[Service], why: str) -> None:
        """Render ``services`` again; act on those whose output changed."""
        if not self.active:  # not attached yet: each start renders
            return
        for service in services:
            spec = service.spec
            if not spec.uses_groups or self._core.services.get(spec.name) is not service:
                continue
            old = self._rendered.get(spec.name)
            try:
                new = self.render(spec)
            except SpecError as exc:
                self._refused(spec.name, f"{why} refused: {exc}; running instances keep "
                                         "their files")
                continue
            self._errors.pop(spec.name, None)
            self._rendered[spec.name] = new
            if old is None or old.spec is not spec or old.digest == new.digest:
                if old is None or old.version != new.version or old.exports != new.exports:
                    self._give(new)
                    self._core.events.emit(spec.name, "config", f"{why}: rendered, nothing "
                                           "changed for the running instances")
                continue
            self._act(service, why)

    def _act(self, service: Service, why: str) -> None:
        """The render of ``service`` changed: its next starts take it; running instances
        get it through their reconfigure hook, or are replaced one at a time."""
        spec = service.spec
        new = self._rendered[spec.name]
        self._give(new)
        for inst in service.instances.values():
            inst.spawn_request = None  # its environment may have changed
        live = [i for i in service.instances.values() if _running(i)]
        if not live or service.desired is Desired.DOWN:
            self._core.events.emit(spec.name, "config", f"{why}: re-rendered; the next "
                                   "start uses it")
            return
        if spec.hooks.reconfigure is not None:
            self._core.events.emit(spec.name, "config", f"{why}: re-rendered; running "
                                   "the reconfigure hook")
            self._core.background(self._reconfigure(service, new))
        elif spec.name not in self._rolling:
            self._core.events.emit(spec.name, "config", f"{why}: re-rendered; replacing "
                                   "the instances one at a time")
            self._rolling.add(spec.name)
            self._core.background(self._roll(service, why))

    def _given_path(self) -> Path:
        return self._core.state_dir / "run" / "rendered.json"

    def _load_given(self) -> dict[str, dict[str, Any]]:
        if self._given is None:
            try:
                data = json.loads(self._given_path().read_bytes())
                self._given = {str(k): dict(v) for k, v in data["processes"].items()}
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                self._given = {}  # none yet, or damaged: only a change made meanwhile is missed
        return self._given

    def _give(self, rendered: Rendered) -> None:
        """Remember (on disk) what the instances of ``rendered.spec`` are given."""
        given = self._load_given()
        entry = {"digest": rendered.digest, "version": rendered.version}
        name = rendered.spec.name
        if given.get(name) == entry:
            return
        given[name] = entry
        for gone in [n for n in given if n not in self._core.services]:
            del given[gone]
        data = {"format": 1, "processes": given}
        try:
            self._given_path().parent.mkdir(parents=True, exist_ok=True)
            # Not fsynced: it describes running instances, and a power loss ends them.
            atomic_write(self._given_path(), json.dumps(data, sort_keys=True).encode(),
                         durable=False)
        except (OSError, StateWriteFailed) as exc:  # only a change made while away is missed
            self._core.events.emit(name, "state_write", f"cannot save what was rendered: {exc}")

    def _refused(self, name: str, message: str) -> None:
        if self._errors.get(name) != message:
            self._errors[name] = message
            self._core.events.emit(name, "config", message)

    async def _reconfigure(self, service: Service, rendered: Rendered) -> None:
        """New files into every running instance's directory, then its reconfigure hook."""
        previous = self._reconfiguring.get(service.spec.name)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._reconfiguring[service.spec.name] = done
        try:
            if previous is not None:
                await previous  # one reconfigure at a time, in order
            latest = self._rendered.get(service.spec.name)
            if latest is None or latest.digest != rendered.digest:
                return  # a different render came meanwhile: its own run does it
            spec = service.spec
            hook = spec.hooks.reconfigure
            assert hook is not None
            live: list[Instance] = [i for i in service.instances.values() if _running(i)]
            for inst in live:
                workdir = Path(self._core.workdirs.cwd(inst, spec))
                try:
                    await self.write(spec, workdir)
                except (OSError, CorralError) as exc:
                    detail = exc.strerror if isinstance(exc, OSError) else str(exc)
                    self._core.events.emit(spec.name, "config", f"cannot write the rendered "
                                           f"files into {workdir}: {detail}",
                                           instance=inst.index)
                    continue
                await self._core.effects.hook(inst, spec, "reconfigure", hook)
        finally:
            done.set_result(None)
            if self._reconfiguring.get(service.spec.name) is done:
                del self._reconfiguring[service.spec.name]

    async def _roll(self, service: Service, why: str) -> None:
        """Replace the instances of ``service`` one at a time, health-gated (the rollout
        of a changed spec: a new generation, the same spec, the new render)."""
        name = service.spec.name
        try:
            rollouts = self._core.rollouts
            if rollouts.running():
                await rollouts.wait()
            if self._core.services.get(name) is not service or self._core.stopping_all:
                return
            replace: list[tuple[Service, ProcessSpec | None, int]] = [
                (service, service.spec, service.gen)]
            previous = rollouts.record
            service.gen += 1
            try:
                record = rollouts.begin(f"{name}: {why}", [], replace)
                self._core.save()
            except StateWriteFailed as exc:
                rollouts.abandon(previous, replace)
                self._core.events.emit(name, "config", f"cannot replace the instances: {exc}")
                return
            self._rolling.discard(name)  # a change from now on needs a replacement of its own
            rollouts.start(record, replace)
            await rollouts.wait()
            if record.phase is Phase.FAILED:
                self._core.events.emit(name, "config", f"replacement failed: {record.reason}")
        finally:
            self._rolling.discard(name)


def _running(inst: Instance) -> bool:
    """Running, or starting: a process spawned may have read its files already."""
    return inst.pid is not None or inst.state is ServiceState.STARTING


def _write_files(rendered: Rendered, workdir: Path) -> None:
    for name, text in rendered.files.items():
        path = workdir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        # Not fsynced: after a power loss the instance starts again, and its start
        # renders its files again.
        atomic_write(path, text.encode(), 0o600, durable=False)
        give_workdir(path, rendered.spec)


def _texts(value: Any, path: str) -> Iterable[tuple[str, str]]:
    """``(dotted path, text)`` for every text value inside ``value``."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _texts(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _texts(item, f"{path}[{i}]")
