"""corral's desired state: processes, services, the target, and their validation.

LEAF-ish: imports the stdlib, pydantic, yaml and :mod:`corral.errors` only.

Every model is frozen and forbids unknown fields.  Durations are stored as float seconds and
sizes as int bytes; both dump in human form ("8s", "10MiB"), so ``to_dict()`` and
``Target.to_yaml()`` give a canonical text that loads back to an equal object.

Read user input through :func:`load_target`, :func:`load_process`, :func:`validate_target` or
:func:`validate_process`.  They raise :class:`~corral.errors.SpecError` whose ``problems`` are
one line each, ``<source>:<line>: <field path>: <message>``::

    target.yaml:7: processes[1].restart.policy: must be one of always, on-failure, never

YAML is read with only ``true``/``false`` as booleans, so ``on:`` (a service's address) stays
a key and ``yes``/``on`` reach pydantic as strings (which still accepts them for bool fields).
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
from decimal import Decimal, InvalidOperation
from signal import Signals
from typing import Annotated, Any, Literal, NoReturn, Self, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, InitErrorDetails, PydanticCustomError

from corral.errors import SpecError

Loc = tuple[str | int, ...]
Problem = tuple[Loc, str]

# --- durations, sizes, percentages -----------------------------------------------------------

_DURATION_UNITS = {"ms": Decimal("0.001"), "s": Decimal(1), "m": Decimal(60), "h": Decimal(3600)}
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h))+|\d+(?:\.\d+)?")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_MICRO = Decimal("0.000001")
_MAX_DURATION = Decimal(10**9)  # about 31 years: beyond it, a typo
MAX_BACKOFF = 24 * 3600.0


def parse_duration(v: object) -> float:
    """Seconds in ``v``: a number of seconds, or text like "250ms", "5s", "1h30m", "1.5s", "0".

    The result is rounded to the microsecond.  Raises ValueError for a negative, infinite or
    unreadable value.
    """
    if isinstance(v, bool) or not isinstance(v, int | float | str):
        raise ValueError(f"must be a duration like 5s, 250ms or 1h30m, not {type(v).__name__}")
    text = str(v).strip()
    if text.startswith("-"):
        raise ValueError(f"must not be negative, got {v!r}")
    if isinstance(v, float) and v == v and v not in (float("inf"), float("-inf")):
        total = Decimal(repr(v))
    elif not _DURATION.fullmatch(text):
        raise ValueError(f"invalid duration {v!r}: use a number and ms, s, m or h (250ms, 1h30m)")
    elif text[-1].isdigit():
        total = Decimal(text)
    else:
        total = sum(
            (Decimal(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(text)), Decimal(0)
        )
    if total > _MAX_DURATION:
        raise ValueError(f"duration {v!r} is too long")
    return float(total.quantize(_MICRO))


def format_duration(seconds: float) -> str:
    """The shortest text :func:`parse_duration` reads back as ``seconds`` (8.0 -> "8s", 90 -> "1m30s")."""
    us = round(seconds * 1_000_000)
    if us < 0:
        raise ValueError(f"negative duration {seconds!r}")
    if us == 0:
        return "0s"
    if us < 1_000_000:
        return _decimal(us, 1000) + "ms"
    hours, rest = divmod(us, 3_600_000_000)
    minutes, rest = divmod(rest, 60_000_000)
    parts = [f"{hours}h" if hours else "", f"{minutes}m" if minutes else ""]
    return "".join([*parts, _decimal(rest, 1_000_000) + "s" if rest else ""])


def _decimal(n: int, unit: int) -> str:
    whole, frac = divmod(n, unit)
    return f"{whole}.{frac:0{len(str(unit)) - 1}d}".rstrip("0") if frac else str(whole)


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([A-Za-z]*)")
_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_SIZE_UNITS |= {p: 1024**i for i, p in enumerate("kmgt", 1)}
_SIZE_UNITS |= {p + "ib": 1024**i for i, p in enumerate("kmgt", 1)}
_BINARY = (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024))


def parse_size(v: object) -> int:
    """Bytes in ``v``: an int, or text like "512MiB", "64KiB", "100MB" (decimal), "1G" (= 1GiB).

    Units are case-insensitive; bare K/M/G/T are binary, as in systemd.  Raises ValueError for a
    negative or unreadable value.
    """
    if isinstance(v, int) and not isinstance(v, bool):
        n = v
    elif isinstance(v, str) and (m := _SIZE.fullmatch(v.strip())) and m[2].lower() in _SIZE_UNITS:
        n = round(Decimal(m[1]) * _SIZE_UNITS[m[2].lower()])
    else:
        raise ValueError(f"invalid size {v!r}: use bytes or a unit, e.g. 64KiB, 10MiB, 1GiB, 100MB")
    if n < 0:
        raise ValueError(f"must not be negative, got {v!r}")
    return n


def format_size(n: int) -> str:
    """Text for ``n`` bytes in the largest binary unit that divides it (10485760 -> "10MiB")."""
    for suffix, unit in _BINARY:
        if n and n % unit == 0:
            return f"{n // unit}{suffix}"
    return f"{n}B"


def _parse_percent(v: object) -> float:
    text = v.strip().removesuffix("%") if isinstance(v, str) else v
    try:
        if isinstance(text, bool) or not isinstance(text, int | float | str):
            raise ValueError
        value = float(Decimal(str(text)))
    except (ValueError, InvalidOperation):
        raise ValueError(f"invalid percentage {v!r}: use a number like 150 or '150%'") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"invalid percentage {v!r}")
    return value


def _format_percent(v: float) -> str:
    return f"{int(v) if v.is_integer() else v}%"


def parse_signal(v: object) -> str:
    """The signal's name without "SIG" for "TERM", "SIGTERM", "sigterm", "15" or 15.

    Raises ValueError for a name or number the host does not know.
    """
    text = str(v).strip().upper() if isinstance(v, int | str) and not isinstance(v, bool) else ""
    try:
        sig = Signals(int(text)) if text.isdigit() else Signals["SIG" + text.removeprefix("SIG")]
    except (KeyError, ValueError):
        raise ValueError(f"unknown signal {v!r} (e.g. TERM, INT, HUP, QUIT, KILL)") from None
    return sig.name.removeprefix("SIG")


Duration = Annotated[
    float, BeforeValidator(parse_duration), PlainSerializer(format_duration, return_type=str)
]
Size = Annotated[int, BeforeValidator(parse_size), PlainSerializer(format_size, return_type=str)]
Percent = Annotated[
    float, BeforeValidator(_parse_percent), PlainSerializer(_format_percent, return_type=str)
]

# --- small field types -------------------------------------------------------------------------

_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]*")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
RlimitName = Literal["nofile", "nproc", "core", "as", "fsize", "stack", "memlock", "cpu"]


def _check_name(v: str) -> str:
    if not _NAME.fullmatch(v) or len(v) > 64:
        raise ValueError(
            f"invalid name {v!r}: use at most 64 of a-z 0-9 _ . - starting with a letter or digit"
        )
    return v


def _check_env_name(v: str) -> str:
    if not _ENV_NAME.fullmatch(v):
        raise ValueError(
            f"invalid variable name {v!r}: use A-Z a-z 0-9 _, not starting with a digit"
        )
    return v


def _number_to_str(v: object) -> object:
    return str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v


def _parse_umask(v: object) -> str:
    if not isinstance(v, str):
        raise ValueError('must be a quoted octal string like "022" (YAML reads 022 as a number)')
    m = re.fullmatch(r"(?:0o)?([0-7]{1,4})", v.strip())
    if not m or int(m[1], 8) > 0o777:
        raise ValueError(f'invalid umask {v!r}: use octal digits like "022" or "077"')
    return f"{int(m[1], 8):03o}"


def _parse_rlimit(v: object) -> object:
    return -1 if isinstance(v, str) and v.strip().lower() in ("unlimited", "infinity") else v


def _check_service_address(v: object) -> str:
    host, sep, port = v.rpartition(":") if isinstance(v, str) else ("", "", "")
    if not sep:
        raise ValueError(f"must be host:port, e.g. 127.0.0.1:5000 or :5000, not {v!r}")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"port must be a number from 1 to 65535, not {port!r}")
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if ":" in host and bare == host:
        raise ValueError(f"write an IPv6 address in brackets, e.g. [::1]:{port}")
    if bare not in ("", "*", "localhost"):
        try:
            ipaddress.ip_address(bare)
        except ValueError:
            raise ValueError(
                f"host must be an IP address, localhost, * or empty, not {host!r}"
            ) from None
    return f"{host}:{port}"


def _fail(problems: list[Problem], kind: str = "spec") -> None:
    """Raise the problems as one ValidationError, each at its own location (if any)."""
    if problems:
        details = [
            InitErrorDetails(
                type=PydanticCustomError(kind, "{detail}", {"detail": msg}), loc=loc, input=None
            )
            for loc, msg in problems
        ]
        raise ValidationError.from_exception_data("spec", details)


Name = Annotated[str, AfterValidator(_check_name)]
EnvName = Annotated[str, AfterValidator(_check_env_name)]
EnvValue = Annotated[str, BeforeValidator(_number_to_str)]
RlimitValue = Annotated[int, BeforeValidator(_parse_rlimit), Field(ge=-1)]  # -1 = unlimited
NonEmpty = Annotated[str, Field(min_length=1)]
Port = Annotated[int, Field(ge=1, le=65535)]
Seconds = Annotated[Duration, Field(ge=0)]
Positive = Annotated[Duration, Field(gt=0)]

# --- models --------------------------------------------------------------------------------------


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def to_dict(self) -> dict[str, Any]:
        """The canonical JSON-able form without defaults; ``model_validate`` reads it back."""
        return self.model_dump(mode="json", exclude_defaults=True)


M = TypeVar("M", bound=_Spec)


class LogSpec(_Spec):
    """How the launcher writes a process's output: stamped or raw, rotated by size;
    ``stdout`` also copies it to corral's own stdout (None: ``sup run --log-stdout``)."""

    format: Literal["stamped", "raw"] = "stamped"
    max_bytes: Annotated[Size, Field(ge=4096)] = 10 * 1024**2
    keep: Annotated[int, Field(ge=0, le=100)] = 5
    stdout: bool | None = None


class RestartSpec(_Spec):
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
            _fail([(("backoff_max",), "must be at most 24h")])
        if self.backoff_max < self.backoff_min:
            limit = format_duration(self.backoff_min)
            _fail([(("backoff_max",), f"must be at least backoff_min ({limit})")])
        return self


class StopSpec(_Spec):
    """How a process is stopped: ``signal`` to its group, KILL after ``timeout``."""

    signal: Annotated[str, BeforeValidator(parse_signal)] = "TERM"
    timeout: Seconds = 8.0


class HooksSpec(_Spec):
    """Shell commands around an instance's life (after Habitat's hooks), each bounded by
    ``timeout``: ``init`` before a start that a user or the target asked for (a failure
    backs off like a crash), ``post_run`` once ready, ``post_stop`` after a stop,
    ``reload`` for ``svc reload`` (or ``reload_signal``, sent to the main process)."""

    init: NonEmpty | None = None
    post_run: NonEmpty | None = None
    post_stop: NonEmpty | None = None
    reload: NonEmpty | None = None
    reload_signal: Annotated[str, BeforeValidator(parse_signal)] | None = None
    timeout: Positive = 30.0

    @model_validator(mode="after")
    def _one_reload(self) -> Self:
        if self.reload is not None and self.reload_signal is not None:
            _fail([((), "give reload or reload_signal, not both")])
        return self


class HttpCheck(_Spec):
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
        _fail(problems)
        return self


class TcpCheck(_Spec):
    """Connect to a local port."""

    port: Port


class HealthSpec(_Spec):
    """One health check (http, tcp or exec) and how often it runs."""

    http: HttpCheck | None = None
    tcp: TcpCheck | None = None
    exec: Annotated[list[str], Field(min_length=1)] | None = None
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
            _fail([((), f"give exactly one of http, tcp or exec{got}")])
        return self

    @property
    def kind(self) -> Literal["http", "tcp", "exec"]:
        """Which check this is."""
        return "http" if self.http else "tcp" if self.tcp else "exec"


class LimitsSpec(_Spec):
    """Resource limits; exceeding one for longer than ``grace`` restarts the process."""

    memory: Annotated[Size, Field(gt=0)] | None = None
    cpu: Annotated[Percent, Field(gt=0)] | None = None
    grace: Seconds = 10.0


class ResourceRef(_Spec):
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


class ProcessSpec(_Spec):
    """One entry of the target's ``processes``: what to run, how many, and how to keep it up.

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
    watchdog: Positive | None = None
    restart: RestartSpec = Field(default_factory=RestartSpec)
    stop: StopSpec = Field(default_factory=StopSpec)
    logs: LogSpec = Field(default_factory=LogSpec)
    limits: LimitsSpec = Field(default_factory=LimitsSpec)
    hooks: HooksSpec = Field(default_factory=HooksSpec)
    rollout_timeout: Positive = 60.0
    depends_on: list[str] = Field(default_factory=list)
    user: NonEmpty | None = None
    group: NonEmpty | None = None
    umask: Annotated[str, BeforeValidator(_parse_umask)] | None = None
    rlimits: dict[RlimitName, RlimitValue] = Field(default_factory=dict)

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
        http = self.health.http if self.health else None
        if http and http.service is not None and http.service not in self.receives:
            msg = f"service {http.service!r} is not one this process receives"
            problems.append((("health", "http", "service"), msg))
        _fail(problems)
        return self

    @property
    def argv(self) -> list[str]:
        """The argv to exec: the list itself, or ``/bin/sh -c <command>`` for a string."""
        return (
            ["/bin/sh", "-c", self.command] if isinstance(self.command, str) else list(self.command)
        )


_WILDCARDS = ("0.0.0.0", "::")
_LOOPBACK = {"localhost": "127.0.0.1"}


class ServiceSpec(_Spec):
    """A named address that spreads connections over the processes that receive it."""

    name: Name
    on: Annotated[str, BeforeValidator(_check_service_address)]
    balance: Literal["round-robin", "least-connections"] = "round-robin"
    mode: Literal["proxy", "socket"] = "proxy"
    drain_timeout: Seconds = 30.0

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


class Target(_Spec):
    """The whole desired state of a host: processes and the services they receive."""

    processes: Annotated[list[ProcessSpec], BeforeValidator(_none_to_empty)] = Field(
        default_factory=list)
    services: Annotated[list[ServiceSpec], BeforeValidator(_none_to_empty)] = Field(
        default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> Self:
        _fail(
            _cross_problems(list(enumerate(self.processes)), list(enumerate(self.services))),
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
_OWNER: dict[str, type[_Spec]] = {"processes": ProcessSpec, "services": ServiceSpec}
_OWNER |= {"restart": RestartSpec, "stop": StopSpec, "logs": LogSpec, "limits": LimitsSpec}
_OWNER |= {"health": HealthSpec, "http": HttpCheck, "tcp": TcpCheck, "resources": ResourceRef}


def _cross_problems(
    procs: list[tuple[int, ProcessSpec]],
    svcs: list[tuple[int, ServiceSpec]],
    names: dict[str, list[tuple[int, str]]] | None = None,
) -> list[Problem]:
    """Problems between entries: ``procs`` and ``svcs`` are the valid ones with their index.

    ``names`` has the (index, name) of every entry, valid or not (default: of the valid ones).
    """
    if names is None:
        names = {"processes": [(i, p.name) for i, p in procs]}
        names["services"] = [(i, s.name) for i, s in svcs]
    problems: list[Problem] = []
    first = {section: _first_index(section, pairs, problems) for section, pairs in names.items()}
    for n, (i, s) in enumerate(svcs):
        other = next(((j, o) for j, o in svcs[:n] if o.clashes_with(s)), None)
        if other:
            j, o = other
            msg = f"address {s.on} clashes with services[{j}] ({o.name}, {o.on})"
            problems.append((("services", i, "on"), msg))
    for i, p in procs:
        for k, dep in enumerate(p.depends_on):
            if dep not in first["processes"]:
                problems.append((("processes", i, "depends_on", k), f"unknown process {dep!r}"))
        for k, svc in enumerate(p.receives):
            if svc not in first["services"]:
                problems.append((("processes", i, "receives", k), f"unknown service {svc!r}"))
    index = first["processes"]
    return problems + _cycles({p.name: p.depends_on for i, p in procs if index[p.name] == i}, index)


def _first_index(
    section: str, pairs: list[tuple[int, str]], problems: list[Problem]
) -> dict[str, int]:
    """Where each name first appears; a problem for every later duplicate."""
    first: dict[str, int] = {}
    for i, name in pairs:
        if name in first:
            msg = f"duplicate name {name!r} (also {section}[{first[name]}])"
            problems.append(((section, i, "name"), msg))
        first.setdefault(name, i)
    return first


def _cycles(deps: dict[str, list[str]], index: dict[str, int]) -> list[Problem]:
    """One problem per dependency cycle, at the ``depends_on`` of the process it starts from."""
    problems: list[Problem] = []
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    seen: set[frozenset[str]] = set()

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        path.append(name)
        for dep in deps[name]:
            if dep not in deps:
                continue
            if state.get(dep) == 1:
                cycle = [*path[path.index(dep) :], dep]
                if frozenset(cycle) not in seen:
                    seen.add(frozenset(cycle))
                    msg = "dependency cycle: " + " -> ".join(cycle)
                    problems.append((("processes", index[dep], "depends_on"), msg))
            elif dep not in state:
                visit(dep, path)
        path.pop()
        state[name] = 2

    for name in deps:
        if name not in state:
            visit(name, [])
    return problems


# --- loading, with file, line and field in every problem -------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader where only true/false are booleans (so ``on:`` stays a key)."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)

_FastBase: type = getattr(yaml, "CSafeLoader", _Loader)


class _FastLoader(_FastBase):  # type: ignore[misc]
    """libyaml's parser with the same resolvers: for the common case of a valid file."""


_FastLoader.yaml_implicit_resolvers = _Loader.yaml_implicit_resolvers


def _fast(model: type[M], text: str) -> M | None:
    """Parse and validate with libyaml; None if anything is wrong (the slow path then
    composes the node tree to name the line of every problem)."""
    try:
        data = _plain_data(text)
        if data is _UNUSUAL:  # the slow path also finds keys given twice
            return None
        if model is Target and data is None:
            data = {}
        return model.model_validate(data) if isinstance(data, dict) else None
    except (yaml.YAMLError, ValidationError):
        return None


_UNUSUAL = object()
_STR = yaml.resolver.BaseResolver.DEFAULT_SCALAR_TAG
_EVENT = {yaml.ScalarEvent: 0, yaml.MappingStartEvent: 1, yaml.SequenceStartEvent: 2,
          yaml.MappingEndEvent: 3, yaml.SequenceEndEvent: 3, yaml.DocumentStartEvent: 4,
          yaml.StreamStartEvent: 5, yaml.DocumentEndEvent: 5, yaml.StreamEndEvent: 6}


def _plain_data(text: str) -> object:
    """What ``yaml.load(text, Loader=_FastLoader)`` returns, built straight from libyaml's
    events, or ``_UNUSUAL`` for a document this does not handle (anchors, aliases, tags,
    merge keys, several documents, a key that is a list or a mapping).

    Why: for a 1,000-process target (150 KB), PyYAML's Python composer, resolver and
    constructor take about 8x the time libyaml needs to parse; most scalars are strings
    whose first character no implicit resolver starts with, settled by one dict look-up.
    Raises yaml.YAMLError on a syntax error, as ``yaml.load`` does.
    """
    loader = _FastLoader(text)
    resolvers = _FastLoader.yaml_implicit_resolvers
    constructors = _FastLoader.yaml_constructors
    try:
        stack: list[Any] = []  # the open containers
        keys: list[Any] = []  # per open mapping: its pending key, or _UNUSUAL for none
        root: object = None
        documents = 0
        while True:
            event = loader.get_event()
            kind = _EVENT.get(type(event))
            if kind is None:  # an alias
                return _UNUSUAL
            if kind >= 4:
                if kind == 6:
                    return root
                if kind == 4:
                    documents += 1
                    if documents > 1:  # yaml.load refuses it: let it say why
                        return _UNUSUAL
                continue
            if kind == 3:
                value = stack.pop()
                if isinstance(value, dict):
                    keys.pop()
            else:
                if event.anchor is not None or event.tag not in (None, "!"):
                    return _UNUSUAL
                if kind == 0:
                    raw = event.value
                    tag = _STR
                    if event.implicit[0]:
                        for tag_, rx in (resolvers.get(raw[0] if raw else "", ())
                                         or ()):
                            if rx.match(raw):
                                tag = tag_
                                break
                        else:
                            for tag_, rx in resolvers.get(None, ()):
                                if rx.match(raw):
                                    tag = tag_
                                    break
                    if tag == _STR:
                        value = raw
                    elif tag in _PLAIN_TAGS:
                        value = constructors[tag](loader, yaml.ScalarNode(tag, raw))
                    else:  # merge keys ("<<"), "=" values
                        return _UNUSUAL
                else:
                    value = {} if kind == 1 else []
                if not stack:
                    root = value
                else:
                    parent = stack[-1]
                    if type(parent) is list:
                        parent.append(value)
                    elif keys[-1] is _UNUSUAL:
                        if kind != 0:  # a list or a mapping as a key
                            return _UNUSUAL
                        keys[-1] = value
                    else:
                        if keys[-1] in parent:  # a key given twice: the slow path says where
                            return _UNUSUAL
                        parent[keys[-1]] = value
                        keys[-1] = _UNUSUAL
                if kind != 0:
                    stack.append(value)
                    if kind == 1:
                        keys.append(_UNUSUAL)
    finally:
        loader.dispose()


_PLAIN_TAGS = frozenset(f"tag:yaml.org,2002:{t}"
                        for t in ("null", "bool", "int", "float", "timestamp"))


_TYPES = {"int": "an integer", "float": "a number", "bool": "true or false", "string": "a string"}
_TYPES |= {"list": "a list", "dict": "a mapping", "model": "a mapping"}
_PLAIN = {"missing": "required field is missing", "int_from_float": "must be a whole number"}
_PLAIN |= dict.fromkeys(("too_short", "string_too_short"), "must not be empty")
_PLAIN |= {
    "greater_than": "must be greater than {gt}",
    "greater_than_equal": "must be at least {ge}",
}
_PLAIN |= {"less_than": "must be less than {lt}", "less_than_equal": "must be at most {le}"}


def load_target(text: str, source: str) -> Target:
    """The target in YAML ``text``; an empty document is an empty target.

    Raises SpecError naming ``source``, the line and the field of every problem.
    """
    fast = _fast(Target, text)
    if fast is not None:
        return fast
    data, node = _compose(text, source)
    if twice := _keys_twice(node):
        _raise(source, node, twice)
    return _validate(Target, {} if data is None else data, source, node)


def load_process(text: str, source: str) -> ProcessSpec:
    """The process spec in YAML ``text`` (the form of ``svc load -f``).

    Raises SpecError naming ``source``, the line and the field of every problem.
    """
    fast = _fast(ProcessSpec, text)
    if fast is not None:
        return fast
    data, node = _compose(text, source)
    if twice := _keys_twice(node):
        _raise(source, node, twice)
    return _validate(ProcessSpec, data, source, node)


def validate_target(data: object, source: str) -> Target:
    """``data`` (e.g. parsed JSON; None is empty) as a Target, or SpecError without line numbers."""
    return _validate(Target, {} if data is None else data, source, None)


def validate_process(data: object, source: str) -> ProcessSpec:
    """``data`` as a ProcessSpec, or SpecError naming ``source`` and each field (no lines)."""
    return _validate(ProcessSpec, data, source, None)


def refuse(text: str | None, source: str, problems: list[Problem]) -> NoReturn:
    """Raise SpecError for ``problems`` found outside this module (missing secrets, unknown
    resources, addresses that cannot be bound), naming the line of each in ``text``."""
    node = _compose(text, source)[1] if text is not None else None
    _raise(source, node, problems)


def _keys_twice(node: yaml.Node | None, loc: Loc = ()) -> list[Problem]:
    """A problem for every key given twice in one mapping: YAML loaders keep the last one
    silently, so a second ``hooks:`` would drop the first without a word."""
    problems: list[Problem] = []
    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode):
                continue
            line = key.start_mark.line + 1
            if key.value in first:
                problems.append(((*loc, key.value), f"given twice (also on line "
                                 f"{first[key.value]}); merge the two"))
            else:
                first[key.value] = line
            problems += _keys_twice(value, (*loc, key.value))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            problems += _keys_twice(item, (*loc, i))
    return problems


def _compose(text: str, source: str) -> tuple[object, yaml.Node | None]:
    loader: _Loader | None = None
    try:
        # Inside the try: the reader refuses some text (control characters) right here.
        loader = _Loader(text)
        node = loader.get_single_node()
        return (loader.construct_document(node) if node is not None else None), node
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        if isinstance(e, yaml.reader.ReaderError):  # a character YAML does not allow
            where = f"{source}:{text.count(chr(10), 0, e.position) + 1}"
            code = ord(e.character) if isinstance(e.character, str) else int(e.character)
            e = yaml.YAMLError(f"character #x{code:04x} is not allowed in YAML")
        problem, context = getattr(e, "problem", None) or str(e), getattr(e, "context", None)
        problem = f"{context} {problem}" if context and problem.startswith("but") else problem
        raise SpecError(f"{where}: invalid YAML: {problem}") from None
    finally:
        if loader is not None:
            loader.dispose()


def _validate(model: type[M], data: object, source: str, node: yaml.Node | None) -> M:
    if not isinstance(data, dict):
        what = "an empty document" if data is None else f"a {type(data).__name__}"
        _raise(source, node, [((), f"the top level must be a mapping, not {what}")])
    try:
        return model.model_validate(data)
    except ValidationError as e:
        errors = e.errors(include_url=False)
    problems = [(err["loc"], _message(err, model)) for err in errors]
    if model is Target and not any(err["type"] == "target" for err in errors):
        # Field errors stop pydantic before the cross checks: run them on the valid entries.
        procs, proc_names = _valid_entries(data, "processes", ProcessSpec)
        svcs, svc_names = _valid_entries(data, "services", ServiceSpec)
        names = {"processes": proc_names, "services": svc_names}
        cross = _cross_problems(procs, svcs, names)
        problems += [p for p in cross if p not in problems]
    _raise(source, node, problems)


def _valid_entries(
    data: dict[Any, Any], key: str, model: type[M]
) -> tuple[list[tuple[int, M]], list[tuple[int, str]]]:
    """The entries of ``data[key]`` that are valid alone, and the names of all entries."""
    items = data.get(key)
    items = items if isinstance(items, list) else []
    valid: list[tuple[int, M]] = []
    for i, raw in enumerate(items):
        try:
            valid.append((i, model.model_validate(raw)))
        except ValidationError:
            pass
    names = [(i, r["name"]) for i, r in enumerate(items) if isinstance(r, dict) and "name" in r]
    return valid, names


def _raise(source: str, node: yaml.Node | None, problems: list[Problem]) -> NoReturn:
    """Raise SpecError with one line per problem, in the order of the file."""
    located = sorted(
        ((_line_of(node, loc), loc, msg) for loc, msg in problems), key=lambda p: p[0] or 0
    )
    lines = []
    for line, loc, msg in located:
        where = f"{source}:{line}" if line is not None else source
        lines.append(f"{where}: {_path(loc)}: {msg}" if loc else f"{where}: {msg}")
    head = f"{len(lines)} problems in {source}:\n" if len(lines) > 1 else ""
    raise SpecError(head + "\n".join(lines), lines)


def _message(err: ErrorDetails, root: type[_Spec]) -> str:
    kind, ctx = err["type"], err.get("ctx") or {}
    if kind == "extra_forbidden":
        parents = [part for part in err["loc"][:-1] if isinstance(part, str)]
        owner = _OWNER[parents[-1]] if parents else root
        allowed = ", ".join(owner.model_fields)
        return f"unknown field {err['loc'][-1]!r} (allowed: {allowed})"
    if kind == "literal_error":
        return "must be one of " + ", ".join(re.findall(r"'([^']*)'", str(ctx.get("expected"))))
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        return str(ctx["error"])
    if kind in _PLAIN:
        return _PLAIN[kind].format(**ctx)
    if kind.endswith(("_type", "_parsing")) and kind.split("_")[0] in _TYPES:
        return "must be " + _TYPES[kind.split("_")[0]]
    return err["msg"][:1].lower() + err["msg"][1:]


def _line_of(node: yaml.Node | None, loc: Loc) -> int | None:
    """1-based line of the YAML that ``loc`` names: its key's line, or the nearest parent's."""
    if node is None:
        return None
    line = node.start_mark.line
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            keys = [(k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode)]
            match = [(k, v) for k, v in keys if k.value == str(part)]
            if not match:
                break
            line, node = match[-1][0].start_mark.line, match[-1][1]
        elif (
            isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value)
        ):
            node = node.value[part]
            line = node.start_mark.line
        else:
            break
    return line + 1


def _path(loc: Loc) -> str:
    out = ""
    for part in loc:
        if part == "[key]":
            continue
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out
