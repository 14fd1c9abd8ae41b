"""Service groups on etcd: this supervisor's session (lease, records) and the census.

One lease per supervisor (TTL ``--cluster-ttl``, 5 s by default) carries every member
record it publishes, so a dead supervisor or host drops out of the census when the lease
runs out.  A session task keeps the lease alive (every third of its TTL) and writes the
records that changed; one watch on ``/corral/<org>/`` keeps a mirror of every member and
group config (:class:`~corral.cluster.census.KeyspaceView`), one connection in all.

Losing etcd: the session and the watch keep trying (backing off to one try a second);
the census is the last known one, marked stale; records registered meanwhile are kept
and written when etcd answers again.  If the lease survived (etcd does not expire leases
while it has no leader, and a new leader extends them) nothing else happens; if it is
gone, a new one is granted and every record written again.  The mirror is also kept in
``<state>/cluster/cache.json`` (at most once a second), so a supervisor restarted while
etcd is away still knows the last census and group configs, and renders what it rendered
before.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from corral import atomic
from corral.errors import ClusterError, Conflict, SpecError
from corral.protocol.backoff import doubled

from .backend import DEFAULT_TTL, BaseBackend, ClusterListener
from .census import Census, KeyspaceView, LinkStatus
from .etcd import (
    ConnState,
    EtcdClient,
    EtcdSettings,
    Lease,
    LeaseNotFound,
    Watch,
    WatchBatch,
    prefix_end,
    read_endpoints_file,
)
from .keys import DEFAULT_ORG, Keyspace
from .records import GroupConfig, Identity, MemberRecord, check_config, refuse_unless_newer

_CACHE_DELAY = 1.0


class EtcdBackend(BaseBackend):
    """:class:`~corral.cluster.backend.ClusterBackend` on etcd.

    Args:
        settings: endpoints, TLS, user and password (:class:`~corral.cluster.etcd.EtcdSettings`).
        identity: this supervisor's member name, host and advertised address.
        org: the keyspace (``/corral/<org>/``).
        ttl: the lease TTL in seconds (at least 2: etcd's minimum).
        cache_dir: where ``cache.json`` (the last known census and configs) is kept.
        endpoints_file: re-read when it changes (a mounted ConfigMap): its endpoints
            replace the current ones.
    """

    def __init__(self, settings: EtcdSettings, identity: Identity, *, org: str = DEFAULT_ORG,
                 ttl: int = DEFAULT_TTL, cache_dir: Path | None = None,
                 endpoints_file: Path | None = None) -> None:
        super().__init__(identity)
        if not isinstance(ttl, int) or ttl < 2:
            raise SpecError(f"cluster TTL {ttl!r}: give a whole number of seconds, 2 or more "
                            "(etcd's shortest lease)")
        self.keys = Keyspace(org)
        self._settings = settings
        self._client = EtcdClient(settings, on_state=self._client_changed)
        self._view = KeyspaceView(self.keys)
        self._ttl = ttl
        self._lease: Lease | None = None
        self._written: dict[str, MemberRecord] = {}
        self._wake: asyncio.Event | None = None
        self._session: asyncio.Task[None] | None = None
        self._watch: Watch | None = None
        self._cache = cache_dir / "cache.json" if cache_dir is not None else None
        self._save_handle: asyncio.TimerHandle | None = None
        self._endpoints_file = endpoints_file
        self._endpoints_stamp: tuple[int, int] | None = _stamp(endpoints_file)
        self._synced: asyncio.Event | None = None

    # ---------------------------------------------------------------- life cycle
    async def probe(self) -> None:
        await self._client.range(self.keys.root, prefix_end(self.keys.root), limit=1,
                                 keys_only=True)

    async def start(self, listener: ClusterListener) -> None:
        self._listener = listener
        self._wake = asyncio.Event()
        self._synced = asyncio.Event()
        self._emit_link(self.link())
        self._load_cache()
        self._watch = self._client.watch_prefix(self.keys.root, self._on_batch)
        self._session = asyncio.get_running_loop().create_task(self._run(), name="etcd session")

    async def close(self, *, leave: bool = False) -> None:
        if self._session is not None:
            self._session.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._session
        if self._watch is not None:
            await self._watch.stop()
        if leave and self._lease is not None:
            # Best effort, briefly: without etcd the lease simply runs out.
            with contextlib.suppress(ClusterError, TimeoutError):
                async with asyncio.timeout(2 * self._settings.timeout):
                    await self._client.lease_revoke(self._lease.id)
            self._lease = None
        if self._save_handle is not None:
            self._save_handle.cancel()
            self._save_cache()
        self._listener = None
        await self._client.aclose()

    async def wait_synced(self, timeout: float) -> None:
        # With a cache, the last known configs are there already: no wait (etcd may be
        # away, and a supervisor restarted then must adopt its services at once).
        if self._synced is not None and not self._view.revision:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._synced.wait(), timeout)

    # ------------------------------------------------------------------- reading
    def link(self) -> LinkStatus:
        state = self._client.state
        return LinkStatus(
            "etcd", state.connected, self._identity.member, self._client.endpoints,
            state.endpoint, self._lease.id if self._lease else 0,
            self._lease.ttl if self._lease else self._ttl, state.last_error, state.since)

    def census(self) -> Census:
        census = super().census()
        return Census(census.members, census.stale, self._view.revision,
                      tuple(self._view.problems.values()))

    def group_config(self, service_group: str) -> GroupConfig | None:
        return self._view.configs.get(service_group)

    def _known_records(self) -> Iterable[MemberRecord]:
        return self._view.records()

    def _stale(self) -> bool:
        return not (self._client.state.connected and self._view.synced)

    # ------------------------------------------------------------------- writing
    def _desired_changed(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def apply_config(self, service_group: str, version: int,
                           values: Mapping[str, Any]) -> GroupConfig:
        new = check_config(service_group, version, values)
        key = self.keys.config(service_group)
        for _ in range(3):
            kv = await self._client.get(key)
            current = None
            if kv is not None:
                with contextlib.suppress(ValueError):  # a damaged one is simply replaced
                    current = GroupConfig.decode(kv.value, kv.mod_revision)
            if current is not None and current.version == version \
                    and current.values == new.values:
                return current  # this very apply, retried (or its answer was lost)
            refuse_unless_newer(service_group, current, version)
            stored, revision = await self._client.put_if(
                key, new.encode(), kv.mod_revision if kv is not None else 0)
            if stored:
                applied = GroupConfig(version, new.values, revision)
                if self._view.put_config(service_group, applied):
                    self._emit_config(service_group, applied)
                    self._schedule_save()
                return applied
        raise Conflict(f"{service_group}: its config kept changing while version {version} was "
                       "being applied; apply it again")

    # ------------------------------------------------------------------- session
    async def _run(self) -> None:
        """Keep the lease and the records (see the module docstring); never returns."""
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        keepalive_at = 0.0
        delay = 0.0
        while True:
            try:
                self._reread_endpoints()
                self._wake.clear()
                if self._lease is None:
                    self._lease = await self._client.lease_grant(self._ttl)
                    self._written.clear()
                    keepalive_at = loop.time() + self._lease.ttl / 3
                    self._emit_link(self.link())
                await self._flush(self._lease)
                if loop.time() >= keepalive_at:
                    if await self._client.lease_keepalive(self._lease.id) <= 0:
                        raise LeaseNotFound("the lease expired")
                    keepalive_at = loop.time() + self._lease.ttl / 3
                delay = 0.0
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, keepalive_at - loop.time())):
                        await self._wake.wait()
            except LeaseNotFound:
                self._lease = None  # its records are gone with it: grant another, write again
                self._emit_link(self.link())
            except ClusterError:  # the client's state has it; etcd may be back in a moment
                delay = doubled(delay, 0.1, 1.0)
                await asyncio.sleep(delay)
            except Exception as exc:  # a bug must not stop the keepalives: say it, go on
                self._client.report(f"the etcd session failed: {type(exc).__name__}: {exc}")
                delay = doubled(delay, 0.1, 1.0)
                await asyncio.sleep(delay)

    async def _flush(self, lease: Lease) -> None:
        me = self._identity.member
        for group, record in list(self._desired.items()):
            if self._written.get(group) != record:
                await self._client.put(self.keys.member(group, me), record.encode(), lease.id)
                self._written[group] = record
        for group in [g for g in self._written if g not in self._desired]:
            await self._client.delete(self.keys.member(group, me))
            del self._written[group]

    def _reread_endpoints(self) -> None:
        path = self._endpoints_file
        if path is None or (stamp := _stamp(path)) == self._endpoints_stamp:
            return
        self._endpoints_stamp = stamp
        tls = self._settings.ca is not None or self._settings.cert is not None
        try:
            endpoints = read_endpoints_file(path, tls=tls)
        except SpecError as exc:  # keep the endpoints we have; say why the file is ignored
            self._client.report(f"{exc} (keeping {', '.join(self._client.endpoints)})")
            return
        self._client.set_endpoints(endpoints)
        self._emit_link(self.link())

    # -------------------------------------------------------------------- mirror
    def _on_batch(self, batch: WatchBatch) -> None:
        changes = self._view.apply(batch)
        if self._view.synced and self._synced is not None:
            self._synced.set()
        if changes.groups:
            self._emit_groups(changes.groups)
        for group in sorted(changes.configs):
            self._emit_config(group, self._view.configs.get(group))
        if changes:
            self._schedule_save()

    def _client_changed(self, state: ConnState) -> None:
        self._emit_link(self.link())

    # --------------------------------------------------------------------- cache
    def _load_cache(self) -> None:
        if self._cache is None:
            return
        try:
            data = json.loads(self._cache.read_bytes())
        except (OSError, ValueError):
            return  # no cache, or a damaged one: only the last known census is lost
        if isinstance(data, dict):
            self._view.load(data)
        self._emit_groups({r.service_group for r in self._view.records()})
        for group, config in self._view.configs.items():
            self._emit_config(group, config)

    def _schedule_save(self) -> None:
        if self._cache is not None and self._save_handle is None:
            self._save_handle = asyncio.get_running_loop().call_later(_CACHE_DELAY,
                                                                      self._save_cache)

    def _save_cache(self) -> None:
        self._save_handle = None
        if self._cache is None:
            return
        data = json.dumps(self._view.snapshot(), sort_keys=True).encode()
        # A cache that cannot be written is only a lost hint.
        with contextlib.suppress(OSError):
            os.makedirs(self._cache.parent, mode=0o700, exist_ok=True)
            atomic.write(self._cache, data)


def _stamp(path: Path | None) -> tuple[int, int] | None:
    if path is None:
        return None
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size
