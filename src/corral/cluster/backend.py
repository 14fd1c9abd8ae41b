"""The interface the supervisor uses, whichever backend holds the groups.

Two backends implement :class:`ClusterBackend`: :class:`~corral.cluster.local.LocalBackend`
(the embedded default: one host, no etcd) and :class:`~corral.cluster.remote.EtcdBackend`.
The supervisor talks to them in two directions, and never the other way round:

- it **tells** the backend about its members (:meth:`ClusterBackend.register` on every
  change of a process's instances, health, ports, config version...; :meth:`withdraw`
  when a process is removed), and applies group configs (:meth:`apply_config`);
- the backend **calls** its :class:`ClusterListener` when something the supervisor acts on
  changed: a service group's members (re-render ``svc``/``bind``, release a strict bind),
  a group config (re-render, reconfigure or roll), the link (``sup status``).

Listener calls are scheduled on the event loop (``call_soon``), never made from inside a
backend method, so the supervisor may call the backend from a listener method.  Between
calls, :meth:`census`, :meth:`group_config` and :meth:`link` answer at once from memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from .census import Census, CensusMember, LinkStatus
from .records import GroupConfig, Identity, MemberRecord, MemberStatus

#: Default lease TTL (``--cluster-ttl``): how long a dead host stays in the census.
DEFAULT_TTL = 5


class ClusterListener(Protocol):
    """What the supervisor gives a backend to hear about changes (see the module docstring)."""

    def census_changed(self, service_groups: frozenset[str]) -> None:
        """Members of these service groups came, went or changed their record."""

    def config_changed(self, service_group: str, config: GroupConfig | None) -> None:
        """The group config of ``service_group`` is now ``config`` (None: it was removed)."""

    def link_changed(self, link: LinkStatus) -> None:
        """The link to the cluster changed (connected, endpoint, lease, last error)."""


class ClusterBackend(Protocol):
    """Service groups for one supervisor: membership, census and group configs."""

    @property
    def identity(self) -> Identity:
        """This supervisor's member name, host and advertised address."""

    async def probe(self) -> None:
        """Check that the cluster can be used (``sup run``'s first start).

        Raises:
            ClusterError: one line saying why not (no endpoint answers, refused
                credentials, TLS mismatch).  The local backend never raises.
        """

    async def start(self, listener: ClusterListener) -> None:
        """Begin: load what is known, keep the registration and the census up to date.

        The listener is told the link's status at once, and the group configs known
        (stored ones, or the last known ones from the cache).

        Never fails because etcd is down (a supervisor restarted during an outage must
        keep its services as they are): the link status says so, and the backend keeps
        trying.
        """

    async def wait_synced(self, timeout: float) -> None:
        """Return once the census and group configs have been read from the cluster
        after :meth:`start`, or after ``timeout`` seconds (etcd away: the last known
        ones stay).  The local backend is synced at once."""

    async def close(self, *, leave: bool = False) -> None:
        """Stop.  ``leave``: drop this supervisor's members from the census now (a
        ``sup stop``); otherwise they stay until the lease runs out, so a restarted
        supervisor takes them over without a gap."""

    def link(self) -> LinkStatus: ...

    def census(self) -> Census:
        """Every known member of every service group (stale ones marked)."""

    def register(self, service_group: str, status: MemberStatus) -> None:
        """Publish (or update) this supervisor's member of ``service_group``.

        Cheap and idempotent: an unchanged status costs nothing; a changed one is
        written as soon as the link allows, and again after etcd comes back.
        """

    def withdraw(self, service_group: str) -> None:
        """This supervisor no longer has a member of ``service_group``."""

    def group_config(self, service_group: str) -> GroupConfig | None:
        """The applied config of ``service_group`` as last known (None: none applied)."""

    async def apply_config(self, service_group: str, version: int,
                           values: Mapping[str, Any]) -> GroupConfig:
        """Store ``values`` as version ``version`` of the group's config.

        Re-applying the current version with the same values changes nothing and
        returns it (so a retried apply is safe).

        Raises:
            SpecError: bad name, version or values (see ``records.check_config``).
            Conflict: ``version`` is not higher than the current one; the message names
                the current version.
            ClusterError: the cluster cannot be reached or refused the write.
        """


class BaseBackend:
    """What both backends share: this supervisor's records, the census, the listener."""

    def __init__(self, identity: Identity) -> None:
        self._identity = identity
        self._desired: dict[str, MemberRecord] = {}
        self._listener: ClusterListener | None = None
        self._notified: dict[str, tuple[MemberRecord, ...]] = {}

    @property
    def identity(self) -> Identity:
        return self._identity

    # ----------------------------------------------------------- for the subclasses
    def _known_records(self) -> Iterable[MemberRecord]:
        """Records of other members (and our own as last seen in the cluster)."""
        return ()

    def _stale(self) -> bool:
        return False

    def _desired_changed(self) -> None:
        """A record of ours was registered, changed or withdrawn."""

    # ------------------------------------------------------------------- members
    def register(self, service_group: str, status: MemberStatus) -> None:
        record = MemberRecord.build(self._identity, service_group, status)
        if self._desired.get(service_group) == record:
            return
        self._desired[service_group] = record
        self._desired_changed()
        self._emit_groups({service_group})

    def withdraw(self, service_group: str) -> None:
        if self._desired.pop(service_group, None) is None:
            return
        self._desired_changed()
        self._emit_groups({service_group})

    def census(self) -> Census:
        return Census(tuple(sorted(self._members().values(), key=_order)), stale=self._stale())

    def _members(self) -> dict[tuple[str, str], CensusMember]:
        stale = self._stale()
        me = self._identity.member
        out = {(r.service_group, r.member): CensusMember(r, local=r.member == me, stale=stale)
               for r in self._known_records()}
        for group, record in self._desired.items():
            out[(group, me)] = CensusMember(record, local=True)
        return out

    def _group_records(self, service_group: str) -> tuple[MemberRecord, ...]:
        """One group's records by member name (ours as registered): what
        :meth:`_emit_groups` compares, without building the whole census."""
        records = {r.member: r for r in self._known_records()
                   if r.service_group == service_group}
        mine = self._desired.get(service_group)
        if mine is not None:
            records[self._identity.member] = mine
        return tuple(records[m] for m in sorted(records))

    # ------------------------------------------------------------------ listener
    def _emit_groups(self, groups: Iterable[str]) -> None:
        """Tell the listener about the groups whose records really changed since last told."""
        if self._listener is None:  # not started, or closed: nothing told, nothing to remember
            return
        changed = set()
        for group in groups:
            now = self._group_records(group)
            if self._notified.get(group, ()) != now:
                self._notified[group] = now
                changed.add(group)
        if changed:
            asyncio.get_running_loop().call_soon(self._listener.census_changed,
                                                 frozenset(changed))

    def _emit_config(self, service_group: str, config: GroupConfig | None) -> None:
        if self._listener is not None:
            asyncio.get_running_loop().call_soon(self._listener.config_changed,
                                                 service_group, config)

    def _emit_link(self, link: LinkStatus) -> None:
        if self._listener is not None:
            asyncio.get_running_loop().call_soon(self._listener.link_changed, link)


def _order(member: CensusMember) -> tuple[str, str]:
    return member.record.service_group, member.record.member
