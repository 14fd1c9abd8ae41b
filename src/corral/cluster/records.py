"""What a member publishes, and a group's applied configuration.  Pure.

A **member record** is the JSON value of ``members/<service group>/<member>``, bound to
its supervisor's lease, so it disappears when that supervisor stops keeping the lease
alive::

    {"service_group": "redis.default", "member": "db1-default", "host": "db1",
     "address": "10.0.0.5", "state": "up", "health": "ok",
     "instances": [{"index": 0, "state": "up", "health": "ok"}],
     "ports": {"traffic": 6379}, "spec_generation": 2, "config_version": 7,
     "exports": {"port": 6379}, "topology": "standalone", "leader": false,
     "corral": "0.1.0"}

``state`` and ``health`` sum up the instances (:meth:`MemberStatus.state`); readers
recompute them.  Unknown fields are ignored when reading, so a newer corral can add some.

A **group config** is ``{"version": 7, "values": {...}}`` under ``config/<service group>``;
a new one must carry a higher version than the current one (Habitat's incarnation).
Values hold ``${SECRET}`` references, never secret values.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from corral import __version__
from corral.errors import Conflict, SpecError
from corral.render.values import check_values, secret_references
from corral.states import RUNNING_STATES, HealthState, ServiceState

from .keys import check_member, check_service_group

#: Largest encoded group config: etcd refuses requests over 1.5 MiB by default.
MAX_CONFIG_BYTES = 1024 * 1024

# A member is as up as its best instance, and as healthy as its worst running one.
_STATE_ORDER = (ServiceState.UP, ServiceState.UNHEALTHY, ServiceState.STARTING,
                ServiceState.STOPPING, ServiceState.BACKOFF, ServiceState.FAILED,
                ServiceState.DOWN)
_HEALTH_ORDER = (HealthState.CRITICAL, HealthState.UNKNOWN, HealthState.WARNING,
                 HealthState.OK)


@dataclass(frozen=True)
class Identity:
    """Who this supervisor is in the cluster: member name, host name, advertised address."""

    member: str
    host: str
    address: str

    def __post_init__(self) -> None:
        check_member(self.member)


@dataclass(frozen=True)
class InstanceStatus:
    """One instance of the member's process."""

    index: int
    state: ServiceState
    health: HealthState = HealthState.UNKNOWN

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "state": str(self.state), "health": str(self.health)}


@dataclass(frozen=True)
class MemberStatus:
    """What the supervisor says about its copy of a service group (the changing part).

    Args:
        instances: every instance, by index.
        ports: named ports other hosts reach this member at (``{"traffic": 6379}``).
        spec_generation: the generation of the process spec the instances run.
        config_version: the group config version the member has rendered (0: none).
        exports: the producer's exported values (:func:`corral.render.compute_exports`,
            references unresolved).
        topology: ``standalone`` or ``leader``.
        leader: this member holds the group's election (leader topology only).
    """

    instances: tuple[InstanceStatus, ...] = ()
    ports: Mapping[str, int] = field(default_factory=dict)
    spec_generation: int = 0
    config_version: int = 0
    exports: Mapping[str, Any] = field(default_factory=dict)
    topology: str = "standalone"
    leader: bool = False

    @property
    def state(self) -> ServiceState:
        """``up`` when any instance is up, else the most alive state; ``down`` with none."""
        states = {i.state for i in self.instances}
        return next((s for s in _STATE_ORDER if s in states), ServiceState.DOWN)

    @property
    def health(self) -> HealthState:
        """The worst health of the running instances; ``unknown`` when none runs."""
        healths = {i.health for i in self.instances if i.state in RUNNING_STATES}
        return next((h for h in _HEALTH_ORDER if h in healths), HealthState.UNKNOWN)


@dataclass(frozen=True)
class MemberRecord:
    """A member as stored in etcd: who and where, plus its :class:`MemberStatus`."""

    service_group: str
    member: str
    host: str
    address: str
    status: MemberStatus = field(default_factory=MemberStatus)
    corral: str = __version__

    @classmethod
    def build(cls, identity: Identity, service_group: str, status: MemberStatus) -> MemberRecord:
        check_service_group(service_group)
        return cls(service_group, identity.member, identity.host, identity.address, status)

    def to_json(self) -> dict[str, Any]:
        s = self.status
        return {
            "service_group": self.service_group, "member": self.member, "host": self.host,
            "address": self.address, "state": str(s.state), "health": str(s.health),
            "instances": [i.to_json() for i in s.instances], "ports": dict(s.ports),
            "spec_generation": s.spec_generation, "config_version": s.config_version,
            "exports": dict(s.exports), "topology": s.topology, "leader": s.leader,
            "corral": self.corral,
        }

    def encode(self) -> bytes:
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> MemberRecord:
        """Parse a stored record.  Raises ValueError saying what is wrong with it."""
        try:
            raw = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"not JSON ({exc})") from None
        return cls.from_json(raw)

    @classmethod
    def from_json(cls, raw: Any) -> MemberRecord:
        """Build from parsed JSON.  Raises ValueError (only) naming the bad field."""
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
        get = _Fields(raw)
        instances = []
        for i, item in enumerate(get.items("instances")):
            if not isinstance(item, dict):
                raise ValueError(f"instances[{i}] is not an object")
            each = _Fields(item, f"instances[{i}].")
            instances.append(InstanceStatus(each.number("index"), each.enum("state", ServiceState),
                                            each.enum("health", HealthState)))
        ports = get.mapping("ports")
        if not all(isinstance(p, int) and not isinstance(p, bool) for p in ports.values()):
            raise ValueError("ports must map names to numbers")
        status = MemberStatus(
            instances=tuple(instances), ports=ports,
            spec_generation=get.number("spec_generation", 0),
            config_version=get.number("config_version", 0), exports=get.mapping("exports"),
            topology=get.text("topology", "standalone"), leader=get.flag("leader", False))
        try:
            group = check_service_group(get.text("service_group"))
            member = check_member(get.text("member"))
        except SpecError as exc:
            raise ValueError(str(exc)) from None
        return cls(group, member, get.text("host"), get.text("address"), status,
                   get.text("corral", "unknown"))


class _Fields:
    """Typed reads of a JSON object, each raising ValueError that names the field."""

    def __init__(self, raw: dict[str, Any], prefix: str = "") -> None:
        self.raw, self.prefix = raw, prefix

    def _get(self, name: str, kind: type, default: Any) -> Any:
        value = self.raw.get(name, default)
        if value is _MISSING:
            raise ValueError(f"{self.prefix}{name} is missing")
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
            raise ValueError(f"{self.prefix}{name} has the wrong type")
        return value

    def text(self, name: str, default: str | None = None) -> str:
        value: str = self._get(name, str, _MISSING if default is None else default)
        return value

    def number(self, name: str, default: int | None = None) -> int:
        value: int = self._get(name, int, _MISSING if default is None else default)
        return value

    def flag(self, name: str, default: bool) -> bool:
        value: bool = self._get(name, bool, default)
        return value

    def items(self, name: str) -> list[Any]:
        value: list[Any] = self._get(name, list, [])
        return value

    def mapping(self, name: str) -> dict[str, Any]:
        value: dict[str, Any] = self._get(name, dict, {})
        return value

    def enum(self, name: str, kind: type[ServiceState] | type[HealthState]) -> Any:
        value = self.text(name)
        try:
            return kind(value)
        except ValueError:
            raise ValueError(f"{self.prefix}{name} {value!r} is not a known value") from None


_MISSING: Any = object()


@dataclass(frozen=True)
class GroupConfig:
    """A service group's applied configuration: a version and its values.

    ``mod_revision`` is etcd's revision of the write (0 in the local backend); it is not
    part of the stored JSON.
    """

    version: int
    values: Mapping[str, Any]
    mod_revision: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "values": self.values}

    def encode(self) -> bytes:
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes, mod_revision: int = 0) -> GroupConfig:
        """Parse a stored config.  Raises ValueError saying what is wrong with it."""
        try:
            raw = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"not JSON ({exc})") from None
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
        get = _Fields(raw)
        return cls(get.number("version"), get.mapping("values"), mod_revision)


def check_config(service_group: str, version: int, values: Mapping[str, Any]) -> GroupConfig:
    """The config to store for ``config apply``, once its version and values are valid.

    Raises:
        SpecError: a bad service group name, a version that is not a positive integer,
            values that JSON cannot carry, a malformed ``${SECRET}`` reference, or values
            too large for etcd.
    """
    check_service_group(service_group)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise SpecError(f"{service_group}: config version {version!r} must be a whole number "
                        "of 1 or more")
    if not isinstance(values, Mapping):
        raise SpecError(f"{service_group}: config values must be a mapping of names to values")
    check_values(values, f"{service_group} config")
    secret_references(values, f"{service_group} config")
    config = GroupConfig(version, dict(values))
    size = len(config.encode())
    if size > MAX_CONFIG_BYTES:
        raise SpecError(f"{service_group}: config version {version} is {size} bytes; the limit "
                        f"is {MAX_CONFIG_BYTES} (keep large files in resources)")
    return config


def refuse_unless_newer(service_group: str, current: GroupConfig | None, version: int) -> None:
    """Conflict unless ``version`` is higher than ``current``'s (Habitat's rule)."""
    if current is not None and version <= current.version:
        raise Conflict(f"{service_group} is at config version {current.version}: apply a "
                       f"version higher than {current.version} (got {version})")
