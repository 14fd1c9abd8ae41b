"""Service groups on a real etcd (corral.cluster.EtcdBackend): members and the census,
lease expiry, a supervisor killed and replaced, etcd lost and back, group configs by
compare-and-swap, no secret in etcd, the endpoints file, a dying etcd member."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.cluster import (
    Census,
    EtcdBackend,
    EtcdSettings,
    GroupConfig,
    Identity,
    InstanceStatus,
    LinkStatus,
    MemberStatus,
    default_address,
)
from corral.errors import ClusterUnavailable, Conflict, SpecError
from corral.render import Context, Layer, compute_exports, layer, render_templates, resolve_secrets
from corral.states import HealthState, ServiceState

from .etcd_fixtures import EtcdCluster, EtcdMember, dump_keys, free_port, until

pytestmark = pytest.mark.slow

MEMBER_SCRIPT = Path(__file__).with_name("etcd_member.py")
TTL = 2


class Listener:
    """Records what a backend tells the supervisor."""

    def __init__(self, backend: EtcdBackend | None = None) -> None:
        self.backend = backend
        self.census: list[frozenset[str]] = []
        self.configs: list[tuple[str, int | None]] = []
        self.links: list[LinkStatus] = []
        self.snapshots: list[Census] = []

    def census_changed(self, service_groups: frozenset[str]) -> None:
        self.census.append(service_groups)
        if self.backend is not None:
            self.snapshots.append(self.backend.census())

    def config_changed(self, service_group: str, config: GroupConfig | None) -> None:
        self.configs.append((service_group, config.version if config else None))

    def link_changed(self, link: LinkStatus) -> None:
        self.links.append(link)


def up(generation: int = 1, **fields: Any) -> MemberStatus:
    return MemberStatus(instances=(InstanceStatus(0, ServiceState.UP, HealthState.OK),),
                        ports={"traffic": 7000}, spec_generation=generation, **fields)


def leases(etcd: EtcdMember) -> set[int]:
    """The leases etcd holds ("found 2 leases" then one hex id a line)."""
    return {int(line, 16) for line in etcd.etcdctl("lease", "list").splitlines()[1:]}


def members(census: Census, group: str) -> dict[str, Any]:
    return {m.record.member: m for m in census.group(group)}


async def started(urls: list[str] | str, member: str, *, ttl: int = TTL,
                  **options: Any) -> tuple[EtcdBackend, Listener]:
    endpoints = (urls,) if isinstance(urls, str) else tuple(urls)
    backend = EtcdBackend(EtcdSettings(endpoints), Identity(member, f"host-{member}", "10.0.0.1"),
                          ttl=ttl, **options)
    listener = Listener(backend)
    await backend.start(listener)
    return backend, listener


@pytest.fixture
def spawn() -> Iterator[Any]:
    """Start etcd_member.py processes; each returns (process, lease hex).  Killed after."""
    procs: list[subprocess.Popen[str]] = []

    def start(endpoints: str, member: str, group: str, generation: int, ttl: int = TTL
              ) -> tuple[subprocess.Popen[str], str]:
        proc = subprocess.Popen([sys.executable, str(MEMBER_SCRIPT), endpoints, member, group,
                                 str(generation), str(ttl)], stdout=subprocess.PIPE, text=True,
                                start_new_session=True)
        procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, f"the member process exited {proc.wait()}"
        return proc, json.loads(line)["lease"]

    yield start
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def test_members_see_each_other_and_every_change(etcd: EtcdMember) -> None:
    """1. Two supervisors register members: each census has every member of every group,
    with host, address, health and config version; 2. an instance going down shows at
    once on the other host; 3. a withdrawn member leaves; 4. the link says connected,
    with the lease."""
    async def scenario() -> None:
        a, heard_a = await started(etcd.url, "a")
        b, _ = await started(etcd.url, "b")
        try:
            a.register("web.default", up(config_version=3))
            b.register("web.default", up())
            b.register("db.default", up(exports={"port": 5432}))
            census = await until(lambda: len((c := a.census()).members) == 3 and c,
                                 what="three members")
            web = members(census, "web.default")
            assert set(web) == {"a", "b"} and web["a"].local and not web["b"].local
            assert web["b"].record.host == "host-b" and web["b"].record.address == "10.0.0.1"
            assert web["a"].record.status.config_version == 3
            assert web["b"].alive and not census.stale
            assert members(census, "db.default")["b"].record.status.exports == {"port": 5432}
            await until(lambda: {"web.default", "db.default"} <= set().union(*heard_a.census),
                        what="census callbacks")

            down = MemberStatus(instances=(InstanceStatus(0, ServiceState.DOWN),),
                                ports={"traffic": 7000}, spec_generation=1)
            b.register("web.default", down)
            await until(lambda: members(a.census(), "web.default")["b"].record.status.state
                        == ServiceState.DOWN, what="b shown down")
            assert a.census().live("web.default")[0].record.member == "a"

            b.withdraw("db.default")
            await until(lambda: not a.census().group("db.default"), what="db to leave")

            link = a.link()
            assert link.backend == "etcd" and link.connected and link.member == "a"
            assert link.endpoint == etcd.url and link.lease_id and link.ttl == TTL
            shown = link.to_json()
            assert shown["lease_id"] == f"{link.lease_id:x}" and shown["endpoints"] == [etcd.url]
            assert json.dumps(a.census().to_json())  # the census API's shape is JSON
        finally:
            await a.close(leave=True)
            await b.close(leave=True)
    asyncio.run(scenario())


def test_a_killed_supervisor_leaves_the_census_within_its_ttl(etcd: EtcdMember,
                                                              spawn: Any) -> None:
    """A member whose supervisor is SIGKILLed drops out within the lease TTL + 1 s."""
    async def scenario() -> None:
        observer, _ = await started(etcd.url, "observer")
        try:
            proc, _ = spawn(etcd.url, "doomed", "web.default", 1)
            await until(lambda: members(observer.census(), "web.default").get("doomed"),
                        what="the member")
            os.killpg(proc.pid, signal.SIGKILL)
            await until(lambda: "doomed" not in members(observer.census(), "web.default"),
                        timeout=TTL + 1, what="the dead member to leave")
        finally:
            await observer.close()
    asyncio.run(scenario())


def test_a_new_supervisor_takes_over_the_same_member_record(etcd: EtcdMember,
                                                            spawn: Any) -> None:
    """1. A supervisor is SIGKILLed and a new one starts with the same member name; 2. the
    record becomes the new one's and stays after the old lease has run out; the member
    never leaves the census on the way."""
    async def scenario() -> None:
        observer, heard = await started(etcd.url, "observer")
        try:
            old, old_lease = spawn(etcd.url, "m1", "web.default", 1, ttl=5)
            await until(lambda: "m1" in members(observer.census(), "web.default"),
                        what="the first supervisor's member")
            os.killpg(old.pid, signal.SIGKILL)
            _, new_lease = spawn(etcd.url, "m1", "web.default", 2, ttl=5)
            assert new_lease != old_lease
            await until(lambda: members(observer.census(), "web.default")["m1"]
                        .record.status.spec_generation == 2, what="the new record")
            assert int(old_lease, 16) in leases(etcd)
            await until(lambda: int(old_lease, 16) not in leases(etcd), timeout=10,
                        what="the old lease to expire")
            assert dump_keys(etcd, "/corral/default/members/web.default/m1")
            assert members(observer.census(), "web.default")["m1"].record.status \
                .spec_generation == 2
            assert all("m1" in members(c, "web.default") for c in heard.snapshots
                       if "web.default" in {m.record.service_group for m in c.members})
        finally:
            await observer.close()
    asyncio.run(scenario())


def test_losing_etcd_keeps_the_last_census_and_rejoins(etcd: EtcdMember) -> None:
    """1. etcd is killed: the link goes down with the reason, the census keeps the last
    known members marked stale (our own are not stale); 2. a change registered meanwhile
    is kept; 3. etcd comes back: the change reaches the other host, the watch resumes
    (a member that joins afterwards is seen), the census is fresh again."""
    async def scenario() -> None:
        a, heard_a = await started(etcd.url, "a")
        b, _ = await started(etcd.url, "b")
        try:
            a.register("web.default", up(1))
            b.register("web.default", up(1))
            await until(lambda: len(a.census().group("web.default")) == 2, what="both")

            etcd.kill()
            await until(lambda: not a.link().connected, timeout=10, what="the link down")
            assert a.link().last_error is not None
            assert a.link().last_error.startswith("no etcd endpoint answers: ")
            assert any(not link.connected for link in heard_a.links)
            census = a.census()
            web = members(census, "web.default")
            assert census.stale and set(web) == {"a", "b"}
            assert web["b"].stale and not web["b"].alive and not web["a"].stale

            a.register("web.default", up(5))
            assert members(a.census(), "web.default")["a"].record.status.spec_generation == 5

            etcd.start()
            etcd.wait_healthy()
            await until(lambda: a.link().connected and b.link().connected, timeout=15,
                        what="both links back")
            # a's record may be missing from b's census for a moment (its lease ran out
            # while etcd was down, and it registers again): absent is not yet.
            await until(lambda: (m := members(b.census(), "web.default").get("a")) is not None
                        and m.record.status.spec_generation == 5, timeout=10,
                        what="a's change on b")
            c, _ = await started(etcd.url, "c")
            try:
                c.register("web.default", up(1))
                await until(lambda: "c" in members(a.census(), "web.default"),
                            what="a member that joined after the outage")
            finally:
                await c.close(leave=True)
            await until(lambda: not a.census().stale, what="a fresh census")
        finally:
            await a.close(leave=True)
            await b.close(leave=True)
    asyncio.run(scenario())


def test_a_lost_lease_is_replaced_and_the_records_written_again(etcd: EtcdMember) -> None:
    """etcd forgets the lease (revoked behind our back): the member is gone for a
    moment, then the supervisor gets a new lease and writes its records again."""
    async def scenario() -> None:
        a, _ = await started(etcd.url, "a")
        observer, _ = await started(etcd.url, "observer")
        try:
            a.register("web.default", up(1))
            a.register("db.default", up(1))
            await until(lambda: len(observer.census().members) == 2, what="a's members")
            old = a.link().lease_id
            etcd.etcdctl("lease", "revoke", f"{old:x}")
            await until(lambda: a.link().lease_id not in (0, old), timeout=TTL + 2,
                        what="a new lease")
            await until(lambda: len(observer.census().members) == 2, what="a's members back")
            keys = dump_keys(etcd, "/corral/default/members/")
            assert set(keys) == {"/corral/default/members/web.default/a",
                                 "/corral/default/members/db.default/a"}
        finally:
            await a.close(leave=True)
            await observer.close(leave=True)
    asyncio.run(scenario())


def test_group_config_is_compare_and_swap_and_reaches_every_member(etcd: EtcdMember) -> None:
    """1. A config applied on one host reaches the other (callback + group_config);
    2. the same version with the same values again is a no-op; 3. a version not higher
    than the current one is refused naming it; 4. a bad version is a SpecError; 5. two
    hosts racing for the next version: one wins, the other is refused."""
    async def scenario() -> None:
        a, heard_a = await started(etcd.url, "a")
        b, heard_b = await started(etcd.url, "b")
        try:
            applied = await a.apply_config("web.default", 1, {"port": 80, "db": {"host": "x"}})
            assert applied.version == 1 and applied.mod_revision > 0
            await until(lambda: ("web.default", 1) in heard_b.configs, what="b told")
            got = b.group_config("web.default")
            assert got is not None and got.values == {"port": 80, "db": {"host": "x"}}
            await until(lambda: ("web.default", 1) in heard_a.configs, what="a told")

            again = await b.apply_config("web.default", 1, {"port": 80, "db": {"host": "x"}})
            assert again.mod_revision == applied.mod_revision
            with pytest.raises(Conflict) as refused:
                await b.apply_config("web.default", 1, {"port": 81})
            assert str(refused.value) == ("web.default is at config version 1: apply a version "
                                          "higher than 1 (got 1)")
            with pytest.raises(SpecError):
                await a.apply_config("web.default", 0, {"port": 1})
            with pytest.raises(SpecError):
                await a.apply_config("web", 2, {"port": 1})

            results = await asyncio.gather(a.apply_config("web.default", 2, {"port": 1}),
                                           b.apply_config("web.default", 2, {"port": 2}),
                                           return_exceptions=True)
            assert sorted(type(r).__name__ for r in results) == ["Conflict", "GroupConfig"]
            winner = next(r for r in results if isinstance(r, GroupConfig))
            await until(lambda: (c := a.group_config("web.default")) is not None
                        and c.version == 2 and c.values == winner.values, what="v2 on a")
            assert heard_a.configs.count(("web.default", 2)) == 1
        finally:
            await a.close(leave=True)
            await b.close(leave=True)
    asyncio.run(scenario())


SECRET = "pa55-Wörd-7f3e9c1b"


def test_no_secret_value_is_written_to_etcd(etcd: EtcdMember, tmp_path: Path) -> None:
    """A config and exports that refer to a secret: the template on the host gets the
    value, and no key or value in etcd (nor the census cache) holds it."""
    async def scenario() -> None:
        a, _ = await started(etcd.url, "a", cache_dir=tmp_path / "cache")
        try:
            group_values = {"db": {"password": "${DB_PASS}", "port": 5432}}
            applied = await a.apply_config("pg.default", 1, group_values)
            cfg = layer([Layer("default", {"db": {"user": "app"}}),
                         Layer(f"group config v{applied.version}", applied.values)])
            exports = compute_exports({"password": "cfg.db.password", "port": "cfg.db.port"},
                                      cfg.values)
            assert exports == {"password": "${DB_PASS}", "port": 5432}
            a.register("pg.default", up(exports=exports, config_version=applied.version))
            resolved = resolve_secrets(cfg.values, {"DB_PASS": SECRET})
            text = render_templates({"pg.conf": "password={{ cfg.db.password }}\n"},
                                    Context(resolved, {"host": "a", "address": "10.0.0.1"}))
            assert text == {"pg.conf": f"password={SECRET}\n"}

            await until(lambda: any(k.endswith("/members/pg.default/a")
                                    for k in dump_keys(etcd, "/")), what="the record")
            everything = dump_keys(etcd, "/")
            assert everything, "etcd is empty"
            for key, value in everything.items():
                assert SECRET not in key and SECRET not in value, key
            assert "${DB_PASS}" in everything["/corral/default/config/pg.default"]
        finally:
            await a.close()
        cache = (tmp_path / "cache" / "cache.json").read_text()
        assert "pg.default" in cache and SECRET not in cache
    asyncio.run(scenario())


def test_a_restarted_supervisor_knows_the_last_census_while_etcd_is_down(
        etcd: EtcdMember, tmp_path: Path) -> None:
    """1. A supervisor sees a member and a group config, and stops; 2. etcd dies; 3. a new
    supervisor on the same state starts: it is told the last known members (stale) and
    the group config, so it renders what was rendered before."""
    async def scenario() -> None:
        b, _ = await started(etcd.url, "b")
        first, _ = await started(etcd.url, "a", cache_dir=tmp_path / "state")
        try:
            b.register("db.default", up(exports={"port": 5432}))
            await first.apply_config("web.default", 4, {"port": 8080})
            await until(lambda: first.census().group("db.default"), what="b's member")
        finally:
            await first.close()
        etcd.kill()
        second, heard = await started(etcd.url, "a", cache_dir=tmp_path / "state")
        try:
            assert ("web.default", 4) in await until(lambda: heard.configs, what="config")
            known = second.group_config("web.default")
            assert known is not None and (known.version, known.values) == (4, {"port": 8080})
            await until(lambda: heard.census, what="census callback")
            census = second.census()
            assert census.stale
            db = members(census, "db.default")
            assert db["b"].stale and db["b"].record.status.exports == {"port": 5432}
        finally:
            await second.close()
            await b.close()
    asyncio.run(scenario())


def test_the_endpoints_file_is_read_again_when_it_changes(etcd: EtcdMember,
                                                          tmp_path: Path) -> None:
    """The file names a dead endpoint: the link is down; the file is rewritten with the
    right one: the supervisor connects and registers, without a restart."""
    async def scenario() -> None:
        dead = f"http://127.0.0.1:{free_port()}"
        path = tmp_path / "endpoints"
        path.write_text(f"# written by the operator\n{dead}\n")
        a, heard = await started(dead, "a", endpoints_file=path)
        try:
            a.register("web.default", up())
            await until(lambda: a.link().last_error, what="a failure")
            assert not a.link().connected and dead in str(a.link().last_error)
            path.write_text(f"{etcd.url}\n")
            await until(lambda: a.link().connected, timeout=10, what="the link up")
            assert a.link().endpoints == (etcd.url,)
            await until(lambda: "/corral/default/members/web.default/a" in
                        dump_keys(etcd, "/corral/"), what="the record")
            path.write_text("not a url at all ://\n")
            await until(lambda: "keeping" in str(a.link().last_error), timeout=10,
                        what="the bad file reported")
            assert a.link().connected and a.link().endpoints == (etcd.url,)
        finally:
            await a.close(leave=True)
        assert any(link.connected for link in heard.links)
    asyncio.run(scenario())


def test_an_etcd_member_dying_changes_nothing_in_the_census(etcd_cluster: EtcdCluster) -> None:
    """Kill the etcd member a supervisor talks to: it moves to another one with the same
    lease, and its member never leaves the census seen from another host."""
    async def scenario() -> None:
        urls = etcd_cluster.urls
        a, _ = await started(urls, "a")
        observer, heard = await started(urls[1:] + urls[:1], "observer")
        try:
            a.register("web.default", up())
            await until(lambda: "a" in members(observer.census(), "web.default"), what="a")
            lease = a.link().lease_id
            used = next(m for m in etcd_cluster.members if m.url == a.link().endpoint)
            used.kill()
            await until(lambda: a.link().endpoint not in (None, used.url) and a.link().connected,
                        timeout=10, what="a on another member")
            a.register("web.default", up(2))
            await until(lambda: members(observer.census(), "web.default")["a"].record.status
                        .spec_generation == 2, what="a's change")
            assert a.link().lease_id == lease
            assert all("a" in members(c, "web.default") for c in heard.snapshots)
        finally:
            await a.close(leave=True)
            await observer.close(leave=True)
    asyncio.run(scenario())


def test_probe_says_why_etcd_cannot_be_used_and_start_never_fails(etcd: EtcdMember) -> None:
    """probe (sup run's first start) raises one line for a dead endpoint; start on the
    same settings does not raise (a supervisor restarted during an outage keeps going)."""
    async def scenario() -> None:
        dead = f"http://127.0.0.1:{free_port()}"
        backend = EtcdBackend(EtcdSettings((dead,)), Identity("a", "h", "10.0.0.1"))
        with pytest.raises(ClusterUnavailable) as failed:
            await backend.probe()
        assert str(failed.value) == f"no etcd endpoint answers: {dead}: connection refused"
        listener = Listener(backend)
        await backend.start(listener)
        backend.register("web.default", up())
        await until(lambda: any(not link.connected and link.last_error
                                for link in listener.links), what="the link reported down")
        await backend.close()

        good = EtcdBackend(EtcdSettings((etcd.url,)), Identity("a", "h", "10.0.0.1"))
        await good.probe()
        await good.close()
    asyncio.run(scenario())


def test_the_default_advertised_address_belongs_to_this_host() -> None:
    """default_address() is an address a socket can be bound to here (not a guess)."""
    address = default_address()
    with socket.socket() as s:
        s.bind((address, 0))
