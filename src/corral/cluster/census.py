"""The census (who is in which service group), the link's status, and the keyspace mirror.

Pure.  :class:`KeyspaceView` is a copy of an organisation's keys kept up to date from a
prefix range and a watch (:class:`corral.cluster.etcd.WatchBatch`); it says which service
groups and which configs each batch changed, so the backend calls its listener only for
those.  :class:`Census` is what ``corral census`` shows: every member of every group, with
``stale`` set on what is only last known because the link to etcd is down.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from corral.states import HealthState, ServiceState

from .etcd import KeyValue, WatchBatch
from .keys import Keyspace
from .records import GroupConfig, MemberRecord


@dataclass(frozen=True)
class LinkStatus:
    """The link to the cluster, for ``sup status``.

    ``backend`` is ``local`` (the embedded default: no etcd, always connected) or
    ``etcd``.  ``connected`` is whether the last request to etcd succeeded; ``endpoint``
    the one in use; ``lease_id``/``ttl`` the lease the member records are bound to (0:
    none yet); ``last_error`` the latest failure (kept after the link comes back);
    ``since`` the wall-clock time ``connected`` last changed.
    """

    backend: str
    connected: bool
    member: str
    endpoints: tuple[str, ...] = ()
    endpoint: str | None = None
    lease_id: int = 0
    ttl: int = 0
    last_error: str | None = None
    since: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"backend": self.backend, "connected": self.connected, "member": self.member,
                "endpoints": list(self.endpoints), "endpoint": self.endpoint,
                "lease_id": f"{self.lease_id:x}" if self.lease_id else None,
                "ttl": self.ttl, "last_error": self.last_error, "since": self.since}


@dataclass(frozen=True)
class CensusMember:
    """One member as this supervisor knows it.

    ``local``: it is this supervisor's own.  ``stale``: the link is down, so this is the
    last known record; ``alive`` is its opposite (a remote member is alive when its
    lease-bound record is in etcd *now*; a local one always is).
    """

    record: MemberRecord
    local: bool = False
    stale: bool = False

    @property
    def alive(self) -> bool:
        return not self.stale

    def view(self) -> dict[str, Any]:
        """The mapping a template sees for this member (``svc.members[i]``,
        ``bind.<name>.members[i]``)."""
        return {**self.record.to_json(), "alive": self.alive, "stale": self.stale,
                "local": self.local}

    def to_json(self) -> dict[str, Any]:
        return self.view()


@dataclass(frozen=True)
class Census:
    """Every known member, sorted by service group then member name."""

    members: tuple[CensusMember, ...]
    stale: bool = False
    revision: int = 0
    problems: tuple[str, ...] = ()

    def groups(self) -> dict[str, list[CensusMember]]:
        out: dict[str, list[CensusMember]] = {}
        for m in self.members:
            out.setdefault(m.record.service_group, []).append(m)
        return out

    def group(self, service_group: str) -> tuple[CensusMember, ...]:
        return tuple(m for m in self.members if m.record.service_group == service_group)

    def live(self, service_group: str) -> tuple[CensusMember, ...]:
        """The members a consumer of ``service_group`` binds to (see :attr:`CensusMember.live`).

        A stale census keeps its last known live members: losing etcd must not change
        what a consumer's templates say.
        """
        return tuple(m for m in self.group(service_group)
                     if m.record.status.state == ServiceState.UP
                     and m.record.status.health != HealthState.CRITICAL)

    def to_json(self) -> dict[str, Any]:
        return {"stale": self.stale, "revision": self.revision,
                "groups": {g: [m.to_json() for m in ms] for g, ms in self.groups().items()},
                "problems": list(self.problems)}


@dataclass(frozen=True)
class Changes:
    """What a batch changed: service groups whose members changed, and group configs."""

    groups: frozenset[str] = frozenset()
    configs: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.groups or self.configs)


@dataclass
class KeyspaceView:
    """A mirror of one organisation's member records and group configs.

    Apply every :class:`WatchBatch` of a watch on ``keys.root`` in order.  A record that
    does not parse is left out and listed in :attr:`problems` by key.  Entries carry
    their ``mod_revision``; an entry older than the one held is ignored, so a value
    written here first (:meth:`put_config`) and then seen again on the watch counts once.
    """

    keys: Keyspace
    members: dict[tuple[str, str], tuple[MemberRecord, int]] = field(default_factory=dict)
    configs: dict[str, GroupConfig] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)
    revision: int = 0
    synced: bool = False

    def apply(self, batch: WatchBatch) -> Changes:
        """Apply one batch; a ``reset`` batch replaces everything."""
        groups: set[str] = set()
        configs: set[str] = set()
        if batch.reset:
            old_members, old_configs = self.members, self.configs
            self.members, self.configs, self.problems = {}, {}, {}
            for kv in batch.kvs:
                self._put(kv, groups, configs)
            groups = {g for g in {k[0] for k in old_members} | {k[0] for k in self.members}
                      if _group_records(old_members, g) != _group_records(self.members, g)}
            configs = {g for g in old_configs.keys() | self.configs.keys()
                       if _config_key(old_configs.get(g)) != _config_key(self.configs.get(g))}
            self.synced = True
        else:
            for event in batch.events:
                if event.deleted:
                    self._delete(event.kv, groups, configs)
                else:
                    self._put(event.kv, groups, configs)
        self.revision = max(self.revision, batch.revision)
        return Changes(frozenset(groups), frozenset(configs))

    def put_config(self, service_group: str, config: GroupConfig) -> Changes:
        """Take a config this supervisor has just written (before the watch brings it)."""
        held = self.configs.get(service_group)
        if held is not None and held.mod_revision >= config.mod_revision:
            return Changes()
        self.configs[service_group] = config
        return Changes(configs=frozenset({service_group}))

    def _put(self, kv: KeyValue, groups: set[str], configs: set[str]) -> None:
        key = self.keys.parse(kv.key)
        if key is None:
            return
        try:
            if key.kind == "members" and key.member is not None:
                held = self.members.get((key.service_group, key.member))
                if held is not None and held[1] >= kv.mod_revision:
                    return
                record = MemberRecord.decode(kv.value)
                if (record.service_group, record.member) != (key.service_group, key.member):
                    raise ValueError("its service_group and member do not match its key")
                self.members[(key.service_group, key.member)] = (record, kv.mod_revision)
                groups.add(key.service_group)
            elif key.kind == "config":
                held_config = self.configs.get(key.service_group)
                if held_config is not None and held_config.mod_revision >= kv.mod_revision:
                    return
                self.configs[key.service_group] = GroupConfig.decode(kv.value, kv.mod_revision)
                configs.add(key.service_group)
            else:
                return
        except ValueError as exc:
            # What it held before is no longer true either: drop it, and say why.
            self._delete(kv, groups, configs)
            self.problems[kv.key] = f"{kv.key}: ignored: {exc}"
            return
        self.problems.pop(kv.key, None)

    def _delete(self, kv: KeyValue, groups: set[str], configs: set[str]) -> None:
        key = self.keys.parse(kv.key)
        self.problems.pop(kv.key, None)
        if key is None:
            return
        if key.kind == "members" and key.member is not None:
            if self.members.pop((key.service_group, key.member), None) is not None:
                groups.add(key.service_group)
        elif key.kind == "config" and self.configs.pop(key.service_group, None) is not None:
            configs.add(key.service_group)

    def records(self) -> Iterable[MemberRecord]:
        return (record for record, _ in self.members.values())

    # -------------------------------------------------------------- the cache file's shape
    def snapshot(self) -> dict[str, Any]:
        """What the cache file holds: enough to show the last known census after a restart."""
        return {"revision": self.revision,
                "members": [{"record": r.to_json(), "mod_revision": rev}
                            for r, rev in self.members.values()],
                "configs": {g: {**c.to_json(), "mod_revision": c.mod_revision}
                            for g, c in self.configs.items()}}

    def load(self, data: Mapping[str, Any]) -> None:
        """Fill from :meth:`snapshot`'s shape; entries that do not parse are skipped."""
        for item in data.get("members", []):
            try:
                record = MemberRecord.from_json(item["record"])
                self.members[(record.service_group, record.member)] = \
                    (record, int(item["mod_revision"]))
            except (ValueError, KeyError, TypeError):
                continue
        for group, item in dict(data.get("configs", {})).items():
            try:
                self.configs[group] = GroupConfig(int(item["version"]), dict(item["values"]),
                                                  int(item["mod_revision"]))
            except (ValueError, KeyError, TypeError):
                continue
        self.revision = int(data.get("revision", 0))


def _group_records(members: Mapping[tuple[str, str], tuple[MemberRecord, int]],
                   group: str) -> dict[str, MemberRecord]:
    return {m: rec for (g, m), (rec, _) in members.items() if g == group}


def _config_key(config: GroupConfig | None) -> tuple[int, Any] | None:
    return None if config is None else (config.version, config.values)
