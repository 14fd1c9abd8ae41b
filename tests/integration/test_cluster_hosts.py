"""Three corral hosts, each a network namespace with its own address and host name, running
a real ``corral sup run --cluster`` against one etcd on the bridge between them: every host's
census shows every member at its advertised address; a host that dies (every process of its
namespace killed) leaves the others' census once its lease runs out; ``--advertise`` defaults
to the default route's interface address; losing etcd stops nothing and its return restarts
nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .conftest import pid_alive, wait_for
from .netns import Network
from .netns_fixtures import TTL, ClusterHosts, HostCorral

# A deadline, not a measurement: the lease TTL plus room for a loaded CI machine
# (`python -m bench cluster` measures the real figure).
LEAVE_DEADLINE = TTL + 13


def spec(name: str, group: str = "prod") -> str:
    return (f"name: {name}\ncommand: [sleep, '3600']\nstart_seconds: 0\n"
            f"cluster: {{group: {group}}}\n")


def load(c: HostCorral, text: str) -> None:
    path = c.state_dir.parent / f"{abs(hash(text))}.yaml"
    path.write_text(text)
    c.ok("svc", "load", "-f", str(path))


def census(c: HostCorral) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(c.ok("census", "--json"))
    return data


def members(c: HostCorral, group: str) -> dict[str, dict[str, Any]]:
    return {m["member"]: m for m in census(c)["groups"].get(group, [])}


def all_up(c: HostCorral, group: str, names: set[str]) -> dict[str, dict[str, Any]] | None:
    """The group's members as ``c`` sees them, once they are exactly ``names``, all up."""
    ms = members(c, group)
    ok = set(ms) == names and all(m["state"] == "up" and m["alive"] for m in ms.values())
    return ms if ok else None


def test_three_hosts_see_each_other_and_a_dead_host_leaves(cluster_hosts: ClusterHosts
                                                           ) -> None:
    net = cluster_hosts.network
    hosts = cluster_hosts.start()
    for c in hosts:
        load(c, spec("web"))
    load(hosts[2], spec("db", "default"))
    names = {h.name for h in net.hosts}
    addresses = {h.name: h.address for h in net.hosts}

    for c in hosts:
        seen = wait_for(lambda c=c: all_up(c, "web.prod", names), 30,
                        f"{c.host.name} to see three members of web.prod up")
        assert {n: m["address"] for n, m in seen.items()} == addresses
        assert {n: m["host"] for n, m in seen.items()} == {n: n for n in names}
        assert [n for n, m in seen.items() if m["local"]] == [c.host.name]
        assert members(c, "db.default")["host3"]["address"] == addresses["host3"]
        link = c.sup_status()["cluster"]
        assert link["connected"] and link["member"] == c.host.name
        assert link["endpoints"] == [cluster_hosts.etcd.url]

    # host3 dies: every process in its namespace (launcher, supervisor, services) is
    # killed at once, nobody says goodbye.  Its lease runs out and it leaves.
    db_pid = hosts[2].status("db")["pid"]
    killed = net.hosts[2].kill_all()
    assert db_pid in killed and not pid_alive(db_pid)
    for c in hosts[:2]:
        wait_for(lambda c=c: set(members(c, "web.prod")) == {"host1", "host2"}
                 and "db.default" not in census(c)["groups"], LEAVE_DEADLINE,
                 f"host3 to leave {c.host.name}'s census")
    keys = cluster_hosts.etcd.etcdctl("get", "--prefix", "--keys-only", "/corral/default/")
    assert sorted(k for k in keys.split() if k) == ["/corral/default/members/web.prod/host1",
                                                    "/corral/default/members/web.prod/host2"]


def test_advertise_defaults_to_the_default_route_interface(
        tmp_path: Path, netns_network: Any) -> None:
    """One host's default route goes via a gateway, the other's straight onto its link;
    without ``--advertise`` each advertises its own ``eth0`` address."""
    net: Network = netns_network(2)
    hosts = ClusterHosts(tmp_path, net)
    net.hosts[0].default_route(net.gateway)
    net.hosts[1].default_route(None)
    try:
        hosts.etcd.start()
        hosts.etcd.wait_healthy()
        a, b = hosts.start(advertise=False)
        load(a, spec("web"))
        load(b, spec("web"))
        seen = wait_for(lambda: all_up(a, "web.prod", {"host1", "host2"}), 30,
                        "both members of web.prod")
        assert seen["host1"]["address"] == net.hosts[0].address
        assert seen["host2"]["address"] == net.hosts[1].address
    finally:
        try:
            hosts.stop()
        finally:
            hosts.etcd.kill()


def test_losing_etcd_stops_nothing_on_any_host(cluster_hosts: ClusterHosts) -> None:
    hosts = cluster_hosts.start()
    for c in hosts:
        load(c, spec("web"))
    names = {h.name for h in cluster_hosts.network.hosts}
    for c in hosts:
        wait_for(lambda c=c: all_up(c, "web.prod", names), 30, f"{c.host.name}: 3 members")
    pids = {c.host.name: (c.status("web")["pid"], c.sup_status()["supervisor_pid"])
            for c in hosts}

    cluster_hosts.etcd.kill()
    for c in hosts:
        link = wait_for(lambda c=c: (ln := c.sup_status()["cluster"]) and not ln["connected"]
                        and ln, 30, f"{c.host.name}: the link down")
        assert link["last_error"]
        assert "DOWN" in c.ok("sup", "status")
        data = wait_for(lambda c=c: (d := census(c))["stale"] and d, 30,
                        f"{c.host.name}: a stale census")
        seen = {m["member"]: m for m in data["groups"]["web.prod"]}
        assert set(seen) == names
        others = [m for n, m in seen.items() if n != c.host.name]
        assert all(m["stale"] and not m["alive"] for m in others)
        assert seen[c.host.name]["alive"] and not seen[c.host.name]["stale"]
        assert "stale" in c.ok("census")
    # Nothing was stopped or restarted while etcd was away.
    for c in hosts:
        assert c.status("web")["state"] == "up" and pid_alive(pids[c.host.name][0])

    cluster_hosts.etcd.start()
    cluster_hosts.etcd.wait_healthy()
    for c in hosts:
        wait_for(lambda c=c: c.sup_status()["cluster"]["connected"], 30,
                 f"{c.host.name}: the link back")
        wait_for(lambda c=c: not census(c)["stale"] and all_up(c, "web.prod", names), 30,
                 f"{c.host.name}: a fresh census of three")
    assert {c.host.name: (c.status("web")["pid"], c.sup_status()["supervisor_pid"])
            for c in hosts} == pids
    keys = cluster_hosts.etcd.etcdctl("get", "--prefix", "--keys-only",
                                      "/corral/default/members/")
    assert sorted(k for k in keys.split() if k) == [
        f"/corral/default/members/web.prod/{n}" for n in sorted(names)]
