"""The spec's models: a process, a service, the target, and the parts of a process.

LEAF: imports the stdlib, pydantic, yaml and the modules of :mod:`corral.spec` only.

Every model is frozen and forbids unknown fields; ``to_dict()`` leaves defaults out.
"""

from __future__ import annotations

import math
import posixpath
import re
from typing import Annotated, Any, Literal, Self

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from corral.protocol import defaults

from .checks import cross_problems
from .fields import (
    EnvName,
    EnvValue,
    Name,
    NonEmpty,
    Port,
    Positive,
    RlimitName,
    RlimitValue,
    Seconds,
    ServiceAddress,
    Umask,
)
from .problems import Problem, fail
from .units import Percent, Size, format_duration, parse_signal

MAX_BACKOFF = 24 * 3600.0


class SpecModel(BaseModel):
    """The base of every model: frozen, and no field it does not know."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def to_dict(self) -> dict[str, Any]:
        """The canonical JSON-able form without defaults; ``model_validate`` reads it back."""
        return self.model_dump(mode="json", exclude_defaults=True)


class LogSpec(SpecModel):
    """How the launcher writes a process's output: stamped or raw, rotated by size;
    ``stdout`` also copies it to corral's own stdout (None: ``sup run --log-stdout``)."""

    format: Literal["stamped", "raw"] = "stamped"
    max_bytes: Annotated[Size, Field(ge=4096)] = defaults.LOG_MAX_BYTES
    keep: Annotated[int, Field(ge=0, le=100)] = defaults.LOG_KEEP
    stdout: bool | None = None


class RestartSpec(SpecModel):
    """When a process that exited is started again, and how fast (backoff bounds)."""

    policy: Literal["always", "on-failure", "never"] = "always"
    exit_codes: dict[Annotated[int, Field(ge=0, le=255)], Literal["always", "never"]] = Field(
        default_factory=dict)
    cooldown: Seconds = 60.0
    backoff_min: Seconds = 0.5
    backoff_max: Seconds = 300.0
    max_restarts: Annotated[int, Field(ge=0)] | None = None

    @model_validator(mode="after")
    def _check_backoff(self) -> Self:
        if self.backoff_max > MAX_BACKOFF:
            fail([(("backoff_max",), "must be at most 24h")])
        if self.backoff_max < self.backoff_min:
            limit = format_duration(self.backoff_min)
            fail([(("backoff_max",), f"must be at least backoff_min ({limit})")])
        return self


class StopSpec(SpecModel):
    """How a process is stopped: ``signal`` to its group, KILL after ``timeout``."""

    signal: Annotated[str, BeforeValidator(parse_signal)] = defaults.STOP_SIGNAL
    timeout: Seconds = defaults.STOP_TIMEOUT


class HooksSpec(SpecModel):
    """Shell commands around an instance's life (after Habitat's hooks), each bounded by
    ``timeout``: ``init`` before a start that a user or the target asked for (a failure
    backs off like a crash), ``post_run`` once ready, ``post_stop`` after a stop,
    ``reload`` for ``svc reload`` (or ``reload_signal``, sent to the main process),
    ``reconfigure`` in each running instance after its group config or binds changed
    its rendered files (instead of a rolling restart)."""

    init: NonEmpty | None = None
    post_run: NonEmpty | None = None
    post_stop: NonEmpty | None = None
    reload: NonEmpty | None = None
    reconfigure: NonEmpty | None = None
    reload_signal: Annotated[str, BeforeValidator(parse_signal)] | None = None
    timeout: Positive = 30.0

    @model_validator(mode="after")
    def _one_reload(self) -> Self:
        if self.reload is not None and self.reload_signal is not None:
            fail([((), "give reload or reload_signal, not both")])
        return self


class HttpCheck(SpecModel):
    """GET ``path`` on a port, or on the port allocated for a service the process receives."""

    port: Port | None = None
    service: str | None = None
    path: str = "/"

    @model_validator(mode="after")
    def _check(self) -> Self:
        problems: list[Problem] = []
        if (self.port is None) == (self.service is None):
            problems.append(((), "give exactly one of port or service"))
        if not self.path.startswith("/"):
            problems.append((("path",), f"must start with '/', got {self.path!r}"))
        fail(problems)
        return self


class TcpCheck(SpecModel):
    """Connect to a local port."""

    port: Port


class HealthSpec(SpecModel):
    """One health check (http, tcp or exec) and how often it runs.

    ``exec_codes`` says how an exec check's exit status reads: ``standard`` (0 is ok,
    anything else fails, as systemd, Docker and Kubernetes read a command) or ``habitat``
    (0 ok, 1 warning, 2 critical, anything else unknown)."""

    http: HttpCheck | None = None
    tcp: TcpCheck | None = None
    exec: Annotated[list[str], Field(min_length=1)] | None = None
    exec_codes: Literal["standard", "habitat"] = "standard"
    interval: Positive = 5.0
    timeout: Positive = 2.0
    retries: Annotated[int, Field(ge=1)] = 3
    start_period: Seconds = 0.0
    restart_on_unhealthy: bool = True

    @model_validator(mode="after")
    def _one_kind(self) -> Self:
        kinds = [k for k in ("http", "tcp", "exec") if getattr(self, k) is not None]
        if len(kinds) != 1:
            got = f" (got {', '.join(kinds)})" if kinds else ""
            fail([((), f"give exactly one of http, tcp or exec{got}")])
        return self

    @property
    def kind(self) -> Literal["http", "tcp", "exec"]:
        """Which check this is."""
        return "http" if self.http else "tcp" if self.tcp else "exec"


class LimitsSpec(SpecModel):
    """Resource limits; exceeding one for longer than ``grace`` restarts the process."""

    memory: Annotated[Size, Field(gt=0)] | None = None
    cpu: Annotated[Percent, Field(gt=0)] | None = None
    grace: Seconds = 10.0


class ResourceRef(SpecModel):
    """A blob of the resource store, placed as ``file`` in the process's working directory."""

    id: str
    file: str

    @field_validator("id")
    @classmethod
    def _check_id(cls, v: str) -> str:
        if not re.fullmatch(r"[0-9a-f]{64}|\$\{[A-Za-z_][A-Za-z0-9_]*\}", v):
            raise ValueError("must be a sha256 (64 lower-case hex digits, as printed by "
                             "corral resource up) or a secret holding one: ${NAME}")
        return v

    @field_validator("file")
    @classmethod
    def _check_file(cls, v: str) -> str:
        norm = posixpath.normpath(v) if v else ""
        if not v or "\0" in v or norm == "." or v.startswith("/"):
            raise ValueError(f"must be a relative file path, got {v!r}")
        if norm == ".." or norm.startswith("../"):
            raise ValueError(f"must stay inside the working directory, got {v!r}")
        return norm


class ClusterSpec(SpecModel):
    """How a process takes part in service groups: its cluster ``group`` (its service
    group is ``<process>.<group>``, e.g. ``redis.default``)."""

    group: str = "default"

    @field_validator("group")
    @classmethod
    def _check_group(cls, v: str) -> str:
        # The same rule as corral.cluster.keys.GROUP_PATTERN (a key segment without '.').
        # 63 at most: with a 64-character process name, the service group fits in 128.
        if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", v) or len(v) > 63:
            raise ValueError(f"invalid cluster group {v!r}: use at most 63 of a-z 0-9 _ -, "
                             "starting with a letter or digit (no '.')")
        return v


#: Suffixes that mark a template; the rendered file is named without it.
TEMPLATE_SUFFIXES = (".j2", ".jinja", ".jinja2", ".tmpl")
_SERVICE_GROUP = re.compile(r"[a-z0-9][a-z0-9_.-]*\.[a-z0-9][a-z0-9_-]*")
_BIND_NAME = re.compile(r"[a-z][a-z0-9_]*")


def _values_problems(value: Any, path: tuple[str | int, ...]) -> list[Problem]:
    """What JSON (and so etcd) cannot carry in a ``config:`` mapping, with its path."""
    if isinstance(value, dict):
        out: list[Problem] = []
        for key, item in value.items():
            if not isinstance(key, str):
                out.append((path, f"key {key!r} is not text"))
            else:
                out += _values_problems(item, (*path, key))
        return out
    if isinstance(value, list):
        return [p for i, item in enumerate(value) for p in _values_problems(item, (*path, i))]
    if isinstance(value, float) and not math.isfinite(value):
        return [(path, "infinities and NaN cannot be stored")]
    if value is None or isinstance(value, str | int | float | bool):
        return []
    return [(path, f"a {type(value).__name__} cannot be stored; use text, a number, "
             "true/false, a list or a mapping")]


class ProcessSpec(SpecModel):
    """One entry of the target's ``processes``: what to run, how many, and how to keep it up.

    Under ``readiness: started`` an instance is ready once it has run ``start_seconds``;
    an instance not ready, or (with a health check) not passing it, ``start_timeout``
    after its spawn is restarted through the restart policy.

    Mutable defaults are ``default_factory`` on purpose: pydantic deep-copies a plain
    ``{}``/``[]``/model default for every instance, 18 % of validating a 1,000-process
    target."""

    name: Name
    command: list[str] | str
    env: dict[EnvName, EnvValue] = Field(default_factory=dict)
    cwd: NonEmpty | None = None
    resources: list[ResourceRef] = Field(default_factory=list)
    before: NonEmpty | None = None
    instances: Annotated[int, Field(ge=0, le=1000)] = 1
    receives: list[str] = Field(default_factory=list)
    health: HealthSpec | None = None
    readiness: Literal["started", "health", "notify"] = "started"
    start_seconds: Seconds = 1.0
    start_timeout: Positive = 60.0
    watchdog: Positive | None = None
    restart: RestartSpec = Field(default_factory=RestartSpec)
    stop: StopSpec = Field(default_factory=StopSpec)
    logs: LogSpec = Field(default_factory=LogSpec)
    limits: LimitsSpec = Field(default_factory=LimitsSpec)
    hooks: HooksSpec = Field(default_factory=HooksSpec)
    rollout_timeout: Positive = 60.0
    replace: Literal["stop-first", "start-first"] | None = None
    depends_on: list[str] = Field(default_factory=list)
    user: NonEmpty | None = None
    group: NonEmpty | None = None
    umask: Umask | None = None
    rlimits: dict[RlimitName, RlimitValue] = Field(default_factory=dict)
    cluster: ClusterSpec = Field(default_factory=ClusterSpec)
    config: dict[str, Any] = Field(default_factory=dict)
    templates: list[NonEmpty] = Field(default_factory=list)
    binds: dict[str, str] = Field(default_factory=dict)
    binding_mode: Literal["strict", "relaxed"] = "strict"
    exports: dict[str, NonEmpty] = Field(default_factory=dict)

    @field_validator("command", mode="before")
    @classmethod
    def _check_command(cls, v: object) -> object:
        if isinstance(v, str) and v.strip():
            return v
        if isinstance(v, list) and v:
            for k, arg in enumerate(v):
                if not isinstance(arg, str):
                    raise ValueError(f"item {k} must be a string, not {type(arg).__name__}")
            if not v[0]:
                raise ValueError("the program (item 0) must not be empty")
            return v
        raise ValueError(
            "must be a non-empty list of strings, or a non-empty string for /bin/sh -c"
        )

    @model_validator(mode="after")
    def _check(self) -> Self:
        problems: list[Problem] = [
            (("depends_on", k), "a process cannot depend on itself")
            for k, dep in enumerate(self.depends_on)
            if dep == self.name
        ]
        files = [r.file for r in self.resources]
        problems += [
            (("resources", k, "file"), f"file {f!r} is placed twice")
            for k, f in enumerate(files)
            if f in files[:k]
        ]
        if self.readiness == "health" and self.health is None:
            problems.append((("readiness",), "readiness 'health' needs a health check"))
        problems += self._group_problems()
        http = self.health.http if self.health else None
        if http and http.service is not None and http.service not in self.receives:
            msg = f"service {http.service!r} is not one this process receives"
            problems.append((("health", "http", "service"), msg))
        fail(problems)
        return self

    def _group_problems(self) -> list[Problem]:
        """``config``, ``templates``, ``binds`` and ``exports``."""
        problems = _values_problems(self.config, ("config",))
        placed = {r.file for r in self.resources}
        for k, name in enumerate(self.templates):
            norm = posixpath.normpath(name)
            if norm == ".." or norm.startswith("../") or "\0" in name:
                problems.append((("templates", k), f"must stay inside the working directory, "
                                 f"got {name!r}"))
            elif name in self.templates[:k]:
                problems.append((("templates", k), f"template {name!r} is listed twice"))
            elif (self.cwd is not None and name not in placed
                  and not name.endswith(TEMPLATE_SUFFIXES)):
                problems.append((("templates", k), f"{name!r} is read from cwd and would be "
                                 "overwritten by its own output: name it "
                                 f"{posixpath.basename(name)}.j2"))
        for bind, group in self.binds.items():
            if not _BIND_NAME.fullmatch(bind):
                problems.append((("binds", bind), "a bind name is a-z 0-9 _, starting with "
                                 "a letter"))
            elif not _SERVICE_GROUP.fullmatch(group):
                problems.append((("binds", bind), f"{group!r} is not a service group "
                                 "(<process>.<cluster group>, e.g. postgres.default)"))
        for key in self.exports:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                problems.append((("exports", key), "an export name is letters, digits and _"))
        return problems

    @property
    def template_files(self) -> dict[str, str]:
        """Each template and the file it renders to (in the instance's working directory):
        its name less a template suffix (``redis.conf.j2`` -> ``redis.conf``)."""
        out = {}
        for name in self.templates:
            norm = posixpath.normpath(name)
            target = next((norm[:-len(s)] for s in TEMPLATE_SUFFIXES if norm.endswith(s)), norm)
            out[name] = target
        return out

    @property
    def uses_groups(self) -> bool:
        """Whether the process renders anything from group config or binds."""
        return bool(self.templates or self.binds or self.exports or self.config)

    @property
    def replace_order(self) -> str:
        """How a rollout replaces an instance: ``replace`` when given, else start-first for
        a process that receives a corral service (each instance has ports of its own) and
        stop-first for any other (its ports, files or locks are the ones the new instance
        needs)."""
        if self.replace is not None:
            return self.replace
        return "start-first" if self.receives else "stop-first"

    @property
    def service_group(self) -> str:
        """``<name>.<cluster group>``: the service group this process is a member of."""
        return f"{self.name}.{self.cluster.group}"

    @property
    def argv(self) -> list[str]:
        """The argv to exec: the list itself, or ``/bin/sh -c <command>`` for a string."""
        return (
            ["/bin/sh", "-c", self.command] if isinstance(self.command, str) else list(self.command)
        )


_WILDCARDS = ("0.0.0.0", "::")
_LOOPBACK = {"localhost": "127.0.0.1"}


class ServiceSpec(SpecModel):
    """A named address that spreads connections over the processes that receive it."""

    name: Name
    on: ServiceAddress
    balance: Literal["round-robin", "least-connections"] = "round-robin"
    mode: Literal["proxy", "socket"] = "proxy"
    drain_timeout: Seconds = defaults.DRAIN_TIMEOUT

    @property
    def bind_host(self) -> str:
        """The host to bind: "0.0.0.0" for "" or "*", IPv6 without brackets, else as written."""
        host = self.on.rpartition(":")[0].removeprefix("[").removesuffix("]")
        return "0.0.0.0" if host in ("", "*") else host

    @property
    def port(self) -> int:
        """The port to bind."""
        return int(self.on.rpartition(":")[2])

    def clashes_with(self, other: ServiceSpec) -> bool:
        """Whether both cannot be bound at once (same port, and same or wildcard host)."""
        mine, theirs = (_LOOPBACK.get(h, h) for h in (self.bind_host, other.bind_host))
        same = mine == theirs or mine in _WILDCARDS or theirs in _WILDCARDS
        return self.port == other.port and same


def _none_to_empty(v: object) -> object:
    return [] if v is None else v


class Target(SpecModel):
    """The whole desired state of a host: processes and the services they receive."""

    processes: Annotated[list[ProcessSpec], BeforeValidator(_none_to_empty)] = Field(
        default_factory=list)
    services: Annotated[list[ServiceSpec], BeforeValidator(_none_to_empty)] = Field(
        default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> Self:
        fail(
            cross_problems(list(enumerate(self.processes)), list(enumerate(self.services))),
            "target",
        )
        return self

    def process(self, name: str) -> ProcessSpec | None:
        """The process called ``name``, or None."""
        return next((p for p in self.processes if p.name == name), None)

    def to_yaml(self) -> str:
        """Canonical, deterministic YAML (defaults and empty sections left out)."""
        doc = {"processes": [p.to_dict() for p in self.processes]}
        doc["services"] = [s.to_dict() for s in self.services]
        return yaml.safe_dump(
            {k: v for k, v in doc.items() if v}, sort_keys=False, allow_unicode=True
        )


# Which model a field's value is validated by (for "unknown field" messages).
FIELD_OWNERS: dict[str, type[SpecModel]] = {"processes": ProcessSpec, "services": ServiceSpec}
FIELD_OWNERS |= {"restart": RestartSpec, "stop": StopSpec, "logs": LogSpec, "limits": LimitsSpec}
FIELD_OWNERS |= {"health": HealthSpec, "http": HttpCheck, "tcp": TcpCheck, "resources": ResourceRef}
FIELD_OWNERS |= {"cluster": ClusterSpec}
