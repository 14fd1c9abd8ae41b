"""The only door the API may use into the supervisor.

Read models are plain JSON-able dicts (see ``docs/api.md``); commands are coroutines
that return once their effect is visible (a stopped service is down, a started one has
its pid).  Process-level requests (restart or stop the supervisor) are callbacks given
by the composition root, :mod:`corral.daemon`.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from pathlib import Path
from typing import Any

from corral import __version__
from corral.errors import Conflict, NotFound, SpecError, Unavailable
from corral.logs import reader
from corral.protocol import messages as m
from corral.protocol import paths
from corral.spec import ProcessSpec, Target, load_process, load_target, validate_process

from . import overall
from .drops import OutputDrops
from .events import Event, Resumed, rfc3339
from .loop import Supervisor
from .membership import Membership


class Facade:
    """What the API can see and do.

    Args:
        supervisor: the running supervisor.
        request_exit: ``request_exit(code)`` ends the supervisor process with ``code``
            after the current response is sent (0: restart me; 84: stop everything).
        drops: what the launcher reported it could not write (None: nothing known).
        membership: the supervisor's members in the service groups (None: no census).
    """

    def __init__(self, supervisor: Supervisor, request_exit: Callable[[int], None],
                 drops: OutputDrops | None = None,
                 membership: Membership | None = None) -> None:
        self._sup = supervisor
        self._request_exit = request_exit
        self._drops = drops
        self._membership = membership

    # reads
    def status(self) -> dict[str, Any]:
        launcher = self._sup.launcher
        counts: dict[str, int] = {"total": len(self._sup.services)}
        for entry in self._sup.status():
            counts[entry["state"]] = counts.get(entry["state"], 0) + 1
        return {"version": __version__,
                "launcher_pid": launcher.launcher_pid if launcher else None,
                "supervisor_pid": os.getpid(), "state_dir": str(self._sup.state_dir),
                "started_at": rfc3339(self._sup.started_at),
                "uptime_s": round(self._sup.clock.time() - self._sup.started_at, 3),
                "services": counts, "balancer": self._sup.traffic.balancer.status(),
                "versions": self.versions(),
                "cluster": self._membership.link() if self._membership else None}

    def census(self, service_group: str | None = None) -> dict[str, Any]:
        """Every member of every service group (``GET /v1/census``); NotFound for a
        ``service_group`` with no known member."""
        if self._membership is None:
            raise NotFound("this supervisor keeps no census")
        return self._membership.census(service_group)

    # group configuration
    def config_show(self, service_group: str) -> dict[str, Any]:
        """``config show``: the group's config version and merged values with their
        sources (NotFound: no config applied and no process of that group here)."""
        return self._sup.groupconfig.show(service_group)

    async def config_apply(self, service_group: str, version: int, text: str, fmt: str,
                           source: str) -> dict[str, Any]:
        """``config apply``: store a new version of the group's config (see
        :meth:`corral.supervisor.groupconfig.GroupConfigs.apply`)."""
        self._sup.conflict_if_stopping()
        return await self._sup.groupconfig.apply(service_group, version, text, fmt, source)

    def host_config_set(self, name: str, text: str, fmt: str, source: str) -> dict[str, Any]:
        """``svc config set``: the host's own values for process ``name``."""
        self._sup.conflict_if_stopping()
        return self._sup.groupconfig.set_host_file(name, text, fmt, source)

    def versions(self) -> dict[str, Any]:
        """Each part's corral release (None where it is not known: no balancer running,
        or one too old to say) and the launcher protocol each side speaks."""
        launcher = self._sup.launcher
        return {"launcher": (launcher.launcher_version or None) if launcher else None,
                "supervisor": __version__,
                "balancer": self._sup.traffic.balancer.stats().get("version"),
                "protocol": {"launcher": launcher.launcher_protocol or None if launcher
                             else None, "supervisor": m.PROTOCOL_VERSION}}

    def health(self) -> dict[str, Any]:
        """Whether every service that should be up is ready (``GET /v1/health``; see
        :func:`corral.supervisor.overall.health`)."""
        return overall.health(self._sup.services.values())

    def balancer_stats(self) -> dict[str, dict[str, float]]:
        """Per proxy service, the balancer's last figures (for ``/metrics``): connections
        open now, accepted in all, and failed; empty while no balancer reports."""
        out: dict[str, dict[str, float]] = {}
        for svc in self._sup.traffic.balancer.stats().get("services", []):
            out[str(svc.get("name"))] = {"connections": svc.get("active", 0),
                                         "connections_total": svc.get("total", 0),
                                         "errors_total": sum((svc.get("errors") or {})
                                                             .values())}
        return out

    def output_drops(self) -> dict[str, dict[str, tuple[int, int]]]:
        """For ``/metrics``: ``{"logs": {service: (bytes, records)}, "streams": {"stdout":
        (bytes, records)}}``, output the launcher dropped since it started (only what it
        reported: a log that never dropped anything is absent)."""
        if self._drops is None:
            return {"logs": {}, "streams": {}}
        return {"logs": dict(self._drops.logs), "streams": dict(self._drops.streams)}

    def services(self) -> list[dict[str, Any]]:
        return [self._with_traffic(entry) for entry in self._sup.status()]

    def service(self, name: str) -> dict[str, Any]:
        return self._with_traffic(self._sup.get(name).as_dict(self._sup.clock.time()))

    def _with_traffic(self, entry: dict[str, Any]) -> dict[str, Any]:
        """Add ``traffic``: for each service this process receives, the balancer's figures
        with only this process's backends (``{}`` when it receives none)."""
        spec = self._sup.services[entry["name"]].spec
        config = self._sup.groupconfig.status(spec)
        if config is not None:
            entry["config"] = config
        receives = spec.receives
        if not receives:
            return entry
        mine = f"{entry['name']}/"
        traffic = {}
        for svc in self._sup.traffic.balancer.stats().get("services", []):
            if svc.get("name") in receives:
                traffic[svc["name"]] = {**svc, "backends": [
                    b for b in svc.get("backends", []) if str(b.get("id")).startswith(mine)]}
        return {**entry, "traffic": traffic}

    def history(self, name: str) -> dict[str, Any]:
        """CPU and RSS points of the last hour, per instance (for charts)."""
        service = self._sup.get(name)
        return {"name": name, "instances": [
            {"index": i.index, "points": [{"at": rfc3339(t), "cpu": c, "rss": r}
                                          for t, c, r in i.history]}
            for i in sorted(service.instances.values(), key=lambda i: i.index)]}

    def events(self, n: int, service: str | None) -> list[Event]:
        if service is not None:
            self._sup.get(service)
        return self._sup.events.recent(n, service)

    def events_since(self, after: int, service: str | None) -> Resumed:
        """The kept events after ``seq`` ``after``, and how many after it are not kept
        (``None``: unknown), and why; see :meth:`EventLog.since`."""
        if service is not None:
            self._sup.get(service)
        return self._sup.events.since(after, service)

    def last_event_seq(self) -> int:
        """The ``seq`` of the last event recorded (or the last number before ours)."""
        return self._sup.events.last_seq

    def event_count(self) -> int:
        """Events recorded since this supervisor started."""
        return self._sup.events.count

    def own_processes(self) -> list[dict[str, Any]]:
        """CPU seconds, RSS and uptime of the supervisor and the launcher themselves
        (for ``/metrics``); a process that cannot be read is left out."""
        launcher = self._sup.launcher
        pids = [("supervisor", os.getpid())]
        if launcher is not None and launcher.launcher_pid:
            pids.append(("launcher", launcher.launcher_pid))
        import psutil  # only /metrics asks: an import the supervisor's start can skip

        figures = []
        for role, pid in pids:
            try:
                proc = psutil.Process(pid)
                with proc.oneshot():
                    times = proc.cpu_times()
                    figures.append({"process": role, "pid": pid,
                                    "cpu_seconds": times.user + times.system,
                                    "rss_bytes": proc.memory_info().rss,
                                    "uptime_s": max(0.0, self._sup.clock.time() - proc.create_time())})
            except psutil.Error:
                continue
        return figures

    def subscribe(self) -> asyncio.Queue[Event | None]:
        return self._sup.events.subscribe()

    def unsubscribe(self, queue: asyncio.Queue[Event | None]) -> None:
        self._sup.events.unsubscribe(queue)

    def log_path(self, name: str) -> Path:
        self._sup.get(name)
        return paths.service_log(self._sup.state_dir, name)

    def log_tail(self, name: str, n: int) -> list[str]:
        keep = self._sup.get(name).spec.logs.keep
        return reader.tail(self.log_path(name), n, keep)

    def log_follow(self, name: str, n: int,
                   cursor: reader.Cursor | None = None) -> AsyncGenerator[reader.Batch, None]:
        """Batches of ``name``'s log records: the last ``n`` then new ones, or from
        ``cursor`` on (see :func:`corral.logs.reader.follow`)."""
        keep = self._sup.get(name).spec.logs.keep
        return reader.follow(self.log_path(name), n, keep, cursor)

    # commands
    def parse_spec(self, spec: dict[str, Any] | None, text: str | None,
                   source: str) -> ProcessSpec:
        """Validate a process entry given as a dict or as YAML text."""
        if text is not None:
            return load_process(text, source)
        if spec is None:
            raise SpecError("give either 'spec' (an object) or 'yaml' (text)")
        return validate_process(spec, source)

    async def load(self, spec: ProcessSpec) -> str:
        self._sup.conflict_if_stopping()
        return await self._sup.commands.load(spec)

    async def unload(self, name: str) -> None:
        self._sup.conflict_if_stopping()
        await self._sup.commands.unload(name)

    async def start(self, name: str) -> None:
        self._sup.conflict_if_stopping()
        await self._sup.commands.start(name)

    async def stop(self, name: str) -> None:
        self._sup.conflict_if_stopping()
        await self._sup.commands.stop(name)

    async def restart(self, name: str) -> None:
        self._sup.conflict_if_stopping()
        await self._sup.commands.restart(name)

    async def reload(self, name: str) -> None:
        self._sup.conflict_if_stopping()
        await self._sup.commands.reload(name)

    async def scale(self, name: str, instances: int) -> None:
        self._sup.conflict_if_stopping()
        await self._sup.commands.scale(name, instances)

    async def wait_ready(self, name: str, timeout: float | None) -> None:
        if timeout is not None:
            await self._sup.commands.wait_ready(name, timeout)

    def restart_supervisor(self) -> None:
        self._request_exit(0)

    async def upgrade(self) -> dict[str, Any]:
        """Upgrade the launcher in place to the installed corral (it checks that code
        first; a refusal raises :class:`LauncherError` and changes nothing), then exit so
        that the upgraded launcher starts a supervisor of that code, which replaces the
        balancer too.  Returns the versions before and the installed one."""
        self._sup.conflict_if_stopping()
        launcher = self._sup.launcher
        if launcher is None:
            raise Unavailable("no launcher is connected")
        before = self.versions()
        installed = await launcher.upgrade()
        self._request_exit(0)
        return {"result": "upgrading", "launcher_pid": launcher.launcher_pid,
                "supervisor_pid": os.getpid(), "from": before,
                "to": {"corral": installed["corral_version"],
                       "protocol": installed["version"]}}

    def stop_supervisor(self) -> None:
        self._request_exit(84)

    # target
    def target_get(self) -> dict[str, Any]:
        """The whole desired state as canonical YAML, however it got there."""
        target = self._sup.target()
        return {"yaml": target.to_yaml(), "processes": len(target.processes),
                "services": len(target.services)}

    def _parse_target(self, text: str, source: str) -> Target:
        target = load_target(text, source)
        self._sup.targets.check(target, text, source)
        return target

    async def target_plan(self, text: str, source: str) -> dict[str, Any]:
        """What ``target set`` would do with this YAML (SpecError if it would refuse it)."""
        target = self._parse_target(text, source)
        await self._sup.traffic.check_binds(target, text, source, hold=False)
        return {"changes": [c.as_dict() for c in self._sup.targets.plan(target)]}

    async def target_set(self, text: str, source: str) -> dict[str, Any]:
        """Apply a target; replacements go on in the background (see target_status)."""
        self._sup.conflict_if_stopping()
        target = self._parse_target(text, source)
        record = await self._sup.targets.apply(target, text, source)
        if record is None:
            return {"result": "unchanged", "changes": [], "rollout": None}
        return {"result": "applying" if record.steps else "applied",
                "changes": [c.as_dict() for c in record.changes],
                "rollout": record.as_dict()}

    def target_status(self) -> dict[str, Any]:
        """The running rollout, or the last one (None before the first)."""
        record = self._sup.rollouts.record
        return {"running": self._sup.rollouts.running(),
                "rollout": record.as_dict() if record is not None else None}

    # --- stores (secrets, resources) ---
    # Values of secrets leave the facade only through secret_values(); every other answer
    # and every message names secrets, never their values.
    def secrets(self) -> list[dict[str, Any]]:
        """``[{name, used_by}]`` for every secret, sorted by name."""
        return [{"name": name, "used_by": self._sup.targets.secret_users(name)}
                for name in self._sup.secrets.names()]

    def secret_values(self, names: list[str]) -> dict[str, str]:
        """The values of ``names`` (all or nothing: NotFound naming every unknown one)."""
        store = self._sup.secrets
        store.require(names)
        return {name: store.get(name).reveal() for name in names}

    async def set_secret(self, name: str, value: str) -> dict[str, Any]:
        """Store a secret; when its value changed, the processes using it are rolled out
        and a failed rollout puts the old value back (``Targets.set_secret``).
        ``result``: added, updated or unchanged."""
        self._sup.conflict_if_stopping()
        existed = name in self._sup.secrets
        changed, record = await self._sup.targets.set_secret(name, value)
        if changed:  # config values may refer to it: their files render again
            self._sup.groupconfig.refresh(list(self._sup.services.values()),
                                          f"secret {name} changed")
        result = "unchanged" if not changed else "updated" if existed else "added"
        return {"name": name, "result": result, "used_by": self._sup.targets.secret_users(name),
                "rollout": record.as_dict() if record is not None else None}

    def remove_secrets(self, names: list[str]) -> list[str]:
        """Remove secrets, all or nothing: NotFound for an unknown name, Conflict naming
        the processes for one in use."""
        store = self._sup.secrets
        return self._remove_unused("secret", store.require, store.remove, names,
                                   self._sup.targets.secret_users, repr)

    def resources(self) -> list[dict[str, Any]]:
        """``[{id, name, size, created, used_by}]``, oldest first."""
        return [{**entry, "used_by": self._sup.targets.resource_users(entry["id"])}
                for entry in self._sup.resources.list()]

    async def add_resource(self, name: str, chunks: AsyncIterator[bytes]) -> dict[str, Any]:
        """Stream ``chunks`` into the resource store; ``{id, name, size, created, used_by}``
        (the first upload's name and time when the content was there already)."""
        store = self._sup.resources
        resource_id = await store.add(name, chunks)
        return {**store.info(resource_id), "used_by": self._sup.targets.resource_users(resource_id)}

    def resource_file(self, resource_id: str) -> tuple[Path, str]:
        """The blob of a resource and its original name (for a download)."""
        store = self._sup.resources
        return store.path(resource_id), str(store.info(resource_id)["name"])

    def remove_resources(self, ids: list[str]) -> list[str]:
        """Remove resources, all or nothing: NotFound for an unknown id, Conflict naming the
        processes for one that a process lists."""
        store = self._sup.resources
        return self._remove_unused("resource", store.require, store.remove, ids,
                                   self._sup.targets.resource_users, str)

    def _remove_unused(self, kind: str, require: Callable[[list[str]], object],
                       remove: Callable[[list[str]], list[str]], keys: list[str],
                       users_of: Callable[[str], list[str]],
                       show: Callable[[str], str]) -> list[str]:
        """All or nothing: NotFound (from ``require``) for an unknown key, Conflict naming
        the processes for one in use; else remove them all."""
        self._sup.conflict_if_stopping()
        require(keys)
        in_use = [f"{show(key)} is used by {', '.join(users)}" for key in sorted(set(keys))
                  if (users := users_of(key))]
        if in_use:
            raise Conflict(f"cannot remove: {kind} {f'; {kind} '.join(in_use)}; change or "
                           "unload those processes first")
        return remove(keys)
    # --- end of stores ---

