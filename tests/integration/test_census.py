"""Service groups: ``sup run --cluster`` joins a real etcd, and ``corral census`` on any
supervisor shows every member of every group (several real supervisors on loopback, each
with its own state directory and member name).  Without ``--cluster`` the census is the
host's own.  Losing etcd stops nothing; a dead supervisor leaves within the lease TTL.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import Corral, pid_alive, wait_for
from .etcd_fixtures import EtcdMember, free_port

TTL = "2"


def spec(name: str, group: str | None = None, instances: int = 1) -> str:
    cluster = f"cluster: {{group: {group}}}\n" if group else ""
    return (f"name: {name}\ncommand: [sleep, '3600']\ninstances: {instances}\n"
            f"start_seconds: 0\n{cluster}")


def census(c: Corral, group: str | None = None) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(c.ok("census", "--json", *([group] if group else [])))
    return data


def members(c: Corral, group: str) -> dict[str, dict[str, Any]]:
    return {m["member"]: m for m in census(c)["groups"].get(group, [])}


def load(c: Corral, tmp: Path, text: str) -> None:
    path = tmp / f"spec-{abs(hash(text))}.yaml"
    path.write_text(text)
    c.ok("svc", "load", "-f", str(path))


class Hosts:
    """Supervisors on loopback, each its own state directory and member name."""

    def __init__(self, root: Path, etcd: EtcdMember) -> None:
        self.root, self.etcd = root, etcd
        self.made: list[Corral] = []

    def start(self, member: str, *extra: str) -> Corral:
        state = self.root / member / "state"
        state.parent.mkdir(parents=True)
        c = Corral(state)
        self.made.append(c)
        c.start("--cluster", self.etcd.url, "--member-name", member, "--advertise",
                "127.0.0.1", "--cluster-ttl", TTL, *extra)
        return c

    def stop(self) -> None:
        for c in self.made:
            c.stop()


@pytest.fixture
def hosts(tmp_path: Path, etcd: EtcdMember) -> Iterator[Hosts]:
    made = Hosts(tmp_path, etcd)
    try:
        yield made
    finally:
        made.stop()


def test_census_without_cluster_shows_this_hosts_groups(corral: Corral, tmp_path: Path) -> None:
    load(corral, tmp_path, spec("web", "prod", instances=2))
    load(corral, tmp_path, spec("worker"))
    corral.wait_state("web", "up")
    corral.wait_state("worker", "up")
    data = wait_for(lambda: (d := census(corral))["groups"].get("web.prod")
                    and d["groups"]["web.prod"][0]["state"] == "up" and d, what="web.prod up")
    assert set(data["groups"]) == {"web.prod", "worker.default"}
    assert data["backend"] == "local" and not data["stale"]
    web = data["groups"]["web.prod"][0]
    assert web["local"] and web["alive"] and [i["state"] for i in web["instances"]] == ["up"] * 2
    link = corral.sup_status()["cluster"]
    assert link["backend"] == "local" and link["connected"]
    table = corral.ok("census")
    assert "web.prod" in table and "worker.default" in table
    # A stopped service is shown down at once; an unloaded one leaves the census.
    corral.ok("svc", "stop", "web")
    wait_for(lambda: members(corral, "web.prod")[data["member"]]["state"] == "down",
             what="web.prod down")
    corral.ok("svc", "unload", "worker")
    wait_for(lambda: "worker.default" not in census(corral)["groups"], what="worker gone")
    missing = corral.run("census", "nope.default")
    assert missing.returncode != 0 and "nope.default" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_bad_cluster_flags_are_one_line_and_start_nothing(tmp_path: Path) -> None:
    state = tmp_path / "state"
    c = Corral(state)
    cases = [("--cluster", f"127.0.0.1:{free_port()}"),
             ("--cluster", "ftp://x"),
             ("--cluster-ttl", "1"),
             ("--cluster-ca", str(tmp_path / "nope.pem"))]
    for case in cases:
        result = c.run("sup", "run", "--state-dir", str(state), *case, timeout=30)
        assert result.returncode != 0, case
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("corral: "), (case, result.stderr)
        assert not (state / "api.sock").exists()


def test_supervisors_on_loopback_see_each_other(hosts: Hosts, tmp_path: Path) -> None:
    a = hosts.start("alpha")
    b = hosts.start("beta")
    load(a, tmp_path, spec("web", "prod"))
    load(b, tmp_path, spec("web", "prod", instances=2))
    load(b, tmp_path, spec("db"))
    b.wait_state("web", "up")

    def both_up(c: Corral) -> Any:
        ms = members(c, "web.prod")
        return set(ms) == {"alpha", "beta"} and all(m["state"] == "up" for m in ms.values()) \
            and ms
    seen = wait_for(lambda: both_up(a), what="alpha to see both members up")
    wait_for(lambda: both_up(b), what="beta to see both members up")
    assert seen["beta"]["alive"] and not seen["beta"]["local"] and seen["alpha"]["local"]
    assert seen["beta"]["address"] == "127.0.0.1" and len(seen["beta"]["instances"]) == 2
    assert "db.default" in census(a)["groups"]
    assert [m["member"] for m in census(a, "web.prod")["groups"]["web.prod"]] == \
        ["alpha", "beta"]
    link = a.sup_status()["cluster"]
    assert link["backend"] == "etcd" and link["connected"] and link["member"] == "alpha"
    assert link["endpoints"] == [hosts.etcd.url] and link["lease_id"] and link["ttl"] == 2
    assert "alpha" in a.ok("sup", "status") and "connected" in a.ok("sup", "status")

    # beta's service stops: alpha shows its member down at once (no lease to wait for).
    b.ok("svc", "stop", "web")
    wait_for(lambda: members(a, "web.prod")["beta"]["state"] == "down", what="beta down")

    # beta's supervisor is killed: the launcher starts another, which takes over the
    # same member record; nothing is restarted.
    pid = b.status("db")["pid"]
    old_sup = b.sup_status()["supervisor_pid"]
    os.kill(old_sup, signal.SIGKILL)
    wait_for(lambda: b.sup_status()["supervisor_pid"] != old_sup, 30, "a new supervisor")
    wait_for(lambda: b.sup_status()["cluster"]["connected"], what="beta connected again")
    assert b.status("db")["pid"] == pid
    keys = hosts.etcd.etcdctl("get", "--prefix", "--keys-only", "/corral/default/members/")
    assert sorted(k for k in keys.split() if k) == [
        "/corral/default/members/db.default/beta", "/corral/default/members/web.prod/alpha",
        "/corral/default/members/web.prod/beta"]
    assert members(a, "db.default")["beta"]["alive"]

    # beta's whole host dies (launcher and supervisor, no goodbye): it leaves alpha's
    # census once its lease runs out.
    pids = [b.status("db")["pid"]]
    assert b.proc is not None
    os.killpg(b.proc.pid, signal.SIGKILL)
    b.proc.wait()
    for p in pids:
        if pid_alive(p):
            os.kill(p, signal.SIGKILL)
    wait_for(lambda: "db.default" not in census(a)["groups"]
             and set(members(a, "web.prod")) == {"alpha"}, 15, "beta to leave the census")


def test_losing_etcd_stops_nothing(hosts: Hosts, tmp_path: Path) -> None:
    a = hosts.start("alpha")
    b = hosts.start("beta")
    load(a, tmp_path, spec("web"))
    load(b, tmp_path, spec("web"))
    wait_for(lambda: set(members(a, "web.default")) == {"alpha", "beta"}, what="both members")
    pid = a.status("web")["pid"]

    hosts.etcd.kill()
    wait_for(lambda: not a.sup_status()["cluster"]["connected"], what="the link down")
    link = a.sup_status()["cluster"]
    assert link["last_error"]
    data = wait_for(lambda: (d := census(a))["stale"] and d, what="a stale census")
    beta = {m["member"]: m for m in data["groups"]["web.default"]}["beta"]
    assert beta["stale"] and not beta["alive"]
    assert "stale" in a.ok("census") and "DOWN" in a.ok("sup", "status")
    # Local commands keep working; the service keeps running.
    a.ok("svc", "restart", "web")
    new_pid = a.wait_state("web", "up")["pid"]
    assert new_pid != pid and pid_alive(new_pid)
    b_pid = b.status("web")["pid"]

    hosts.etcd.start()
    hosts.etcd.wait_healthy()
    wait_for(lambda: a.sup_status()["cluster"]["connected"], 20, "the link back")
    fresh = wait_for(lambda: not (d := census(a))["stale"] and d, 20, "a fresh census")
    assert {m["member"] for m in fresh["groups"]["web.default"]} == {"alpha", "beta"}
    assert all(m["alive"] for m in fresh["groups"]["web.default"])
    assert a.status("web")["pid"] == new_pid and b.status("web")["pid"] == b_pid
    records = hosts.etcd.etcdctl("get", "/corral/default/members/web.default/alpha",
                                 "--print-value-only")
    assert json.loads(records)["state"] == "up"
