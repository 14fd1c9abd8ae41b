"""Group configuration and binds across three hosts, each a network namespace with its own
address running a real ``corral sup run --cluster --advertise ADDR`` against one etcd on the
bridge: a config applied on one host re-renders the member on every host (each resolving
the secret from its own store, none of it in etcd) and runs its reconfigure hook in the
same process; a consumer on one host binds to a producer on another at its namespace
address, and loses it when that host dies.
"""

from __future__ import annotations

import json
from pathlib import Path

from .conftest import pid_alive, wait_for
from .etcd_fixtures import dump_keys
from .groups import GroupProcess, config_show, pid, sources, values_file
from .netns_fixtures import TTL, ClusterHosts, HostCorral
from .test_binds import consumer, producer

# A deadline, not a measurement: the lease TTL plus room for a loaded CI machine.
LEAVE_DEADLINE = TTL + 13
TEMPLATE = "greeting={{ cfg.greeting }}\npassword={{ cfg.password }}\n"


def load_app(c: HostCorral, root: Path) -> Path:
    """Load ``app`` (group ``default``) on ``c`` with its template as a resource placed in
    the instance's directory, so it renders into ``c``'s own state directory; return that
    directory."""
    source = root / "app.conf.j2"
    source.write_text(TEMPLATE)
    blob = c.ok("resource", "up", str(source)).strip()
    app = GroupProcess("app", root, config={"greeting": "hello", "password": "none"},
                       reconfigure="echo reconfigured $CORRAL_PID >> hook.log",
                       extra={"templates": ["app.conf.j2"],
                              "resources": [{"id": blob, "file": "app.conf.j2"}]})
    spec = app.spec()
    del spec["cwd"]  # the instance's own directory under the state directory
    path = root / "app.json"
    path.write_text(json.dumps(spec))
    c.ok("svc", "load", "-f", str(path))
    return c.state_dir / "run" / "app" / "0"


def text(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def test_config_applied_on_one_host_renders_on_every_host(cluster_hosts: ClusterHosts,
                                                          tmp_path: Path) -> None:
    hosts = cluster_hosts.start()
    secrets = {c.host.name: f"pass-of-{c.host.name}-7Qx" for c in hosts}
    workdirs: dict[str, Path] = {}
    for c in hosts:
        c.ok("secret", "set", "DB_PASS", secrets[c.host.name])
        root = tmp_path / c.host.name / "app"
        root.mkdir(parents=True)
        workdirs[c.host.name] = load_app(c, root)
    before: dict[str, int | None] = {}
    for c in hosts:
        c.wait_state("app", "up", timeout=30)
        wait_for(lambda c=c: "greeting=hello" in text(workdirs[c.host.name] / "app.conf"),
                 30, f"{c.host.name}'s first render")
        before[c.host.name] = pid(c, "app")
    names = {c.host.name for c in hosts}
    wait_for(lambda: {m["member"] for m in json.loads(hosts[0].ok("census", "--json"))
                      ["groups"].get("app.default", [])} == names, 30,
             "host1 to see app on every host")

    hosts[0].ok("config", "apply", "app.default", "1", str(values_file(
        tmp_path, "v1.yaml", {"greeting": "bonjour", "password": "${DB_PASS}"})))
    for c in hosts:
        here = workdirs[c.host.name]
        rendered = wait_for(lambda here=here: (t := text(here / "app.conf")).startswith(
            "greeting=bonjour") and t, 30, f"{c.host.name} to re-render")
        assert rendered == f"greeting=bonjour\npassword={secrets[c.host.name]}\n"
        wait_for(lambda c=c, here=here: f"reconfigured {before[c.host.name]}"
                 in text(here / "hook.log"), 30, f"{c.host.name}'s reconfigure hook")
        assert pid(c, "app") == before[c.host.name] and pid_alive(before[c.host.name] or 0)
        assert c.status("app")["config"] == {"version": 1, "error": None}

    shown = config_show(hosts[2], "app.default")
    assert shown["version"] == 1 and shown["rendered_version"] == 1
    assert sources(hosts[2], "app.default") == {
        "greeting": ("bonjour", "group config v1"),
        "password": ("${DB_PASS}", "group config v1")}
    wait_for(lambda: {m["member"]: m["config_version"] for m in json.loads(
        hosts[2].ok("census", "--json"))["groups"]["app.default"]} == dict.fromkeys(names, 1),
        30, "host3's census to show every member at config version 1")

    refused = hosts[1].run("config", "apply", "app.default", "1", str(values_file(
        tmp_path, "again.yaml", {"greeting": "stale"})))
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "app.default is at config version 1" in refused.stderr
    assert config_show(hosts[0], "app.default")["values"]["greeting"] == "bonjour"

    keys = dump_keys(cluster_hosts.etcd)
    assert json.loads(keys["/corral/default/config/app.default"]) == {
        "version": 1, "values": {"greeting": "bonjour", "password": "${DB_PASS}"}}
    assert not [k for k, v in keys.items() for s in secrets.values() if s in k or s in v]


def test_bind_across_namespaces_follows_the_producers_host(cluster_hosts: ClusterHosts,
                                                           tmp_path: Path) -> None:
    host1, host2, _ = cluster_hosts.start()
    address2 = cluster_hosts.network.hosts[1].address
    web = consumer(tmp_path / "host1")
    web.load(host1)
    waiting = wait_for(lambda: "waiting for bind db" in (s := host1.status("web"))["reason"]
                       and s, 30, "web to wait for its bind")
    assert waiting["pid"] is None and web.file("db.conf") is None

    producer(tmp_path / "host2").load(host2)
    host1.wait_state("web", "up", timeout=30)
    assert wait_for(web.env, 30, "web's environment") == {
        "CORRAL_BIND_DB_ADDRS": f"{address2}:5432"}
    assert web.file("db.conf") == f"db={address2}:5432\n"
    before = pid(host1, "web")

    # host2 loses power: every process of its namespace at once, no goodbye.  Its member
    # leaves when its lease runs out, and host1's consumer is re-rendered in place.
    cluster_hosts.network.hosts[1].kill_all()
    wait_for(lambda: web.file("db.conf") == "db=none\n", LEAVE_DEADLINE,
             "web to be re-rendered without host2")
    wait_for(lambda: "db=none" in (web.file("hook.log") or ""), 30,
             "web's reconfigure hook")
    assert pid(host1, "web") == before
