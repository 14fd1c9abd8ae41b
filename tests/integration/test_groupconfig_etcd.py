"""Group configuration and binds across supervisors joined to a real etcd (loopback): a
config applied on one host renders on the member of another, secrets stay references in
etcd, a member whose template fails refuses the config and keeps its files, and a
consumer binds to a producer on another host."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from .conftest import wait_for
from .etcd_fixtures import EtcdMember, dump_keys
from .groups import ClusterHosts, GroupProcess, events, member, pid, values_file, wait_file
from .test_binds import consumer, producer

SECRET = "s3cr3t-Value-91"
TEMPLATE = ("greeting={{ cfg.greeting }}\npassword={{ cfg.password }}\n"
            "{% if cfg.strict %}needs={{ cfg.required }}\n{% endif %}")


@pytest.fixture
def hosts(tmp_path: Path, etcd: EtcdMember) -> Iterator[ClusterHosts]:
    made = ClusterHosts(tmp_path, etcd.url)
    try:
        yield made
    finally:
        made.stop()


def test_config_applied_elsewhere_renders_here_without_secrets_in_etcd(
        hosts: ClusterHosts, etcd: EtcdMember, tmp_path: Path) -> None:
    """beta applies; alpha's member renders it (secret from alpha's own store) and runs
    its reconfigure hook in the same process.  No key in etcd holds the secret.  A later
    version alpha's template cannot render is refused on alpha: status and event say
    where, and its files and process stay."""
    alpha = hosts.start("alpha")
    beta = hosts.start("beta")
    alpha.ok("secret", "set", "DB_PASS", SECRET)
    app = GroupProcess("app", tmp_path, templates={"app.conf.j2": TEMPLATE},
                       config={"greeting": "hello", "password": "none", "strict": False},
                       reconfigure="echo reconfigured $CORRAL_PID >> hook.log")
    app.load(alpha)
    alpha.wait_state("app", "up")
    wait_file(app, "app.conf", "greeting=hello")
    before = pid(alpha, "app")

    beta.ok("config", "apply", "app.default", "1", str(values_file(
        tmp_path, "v1.yaml", {"greeting": "bonjour", "password": "${DB_PASS}"})))
    text = wait_file(app, "app.conf", "greeting=bonjour")
    assert f"password={SECRET}" in text
    wait_for(lambda: f"reconfigured {before}" in (app.file("hook.log") or ""),
             what="the reconfigure hook")
    assert pid(alpha, "app") == before
    wait_for(lambda: (m := member(beta, "app.default", "alpha")) is not None
             and m["config_version"] == 1, what="beta to see alpha at config version 1")
    keys = dump_keys(etcd)
    assert json.loads(keys["/corral/default/config/app.default"])["values"]["password"] == \
        "${DB_PASS}"
    assert not [k for k, v in keys.items() if SECRET in v or SECRET in k]
    assert json.loads(alpha.ok("config", "show", "app.default", "--json"))["version"] == 1

    clear = alpha.run("config", "apply", "app.default", "2", str(values_file(
        tmp_path, "clear.yaml", {"password": f"prefix-{SECRET}"})))
    assert clear.returncode == 1 and SECRET not in clear.stderr
    assert "password: holds the value of secret 'DB_PASS'; write ${DB_PASS} instead" in \
        clear.stderr

    refused = alpha.run("config", "apply", "app.default", "1",
                        str(values_file(tmp_path, "again.yaml", {"greeting": "x"})))
    assert refused.returncode == 1
    assert "app.default is at config version 1" in refused.stderr

    beta.ok("config", "apply", "app.default", "2",
            str(values_file(tmp_path, "v2.yaml", {"strict": True})))
    error = wait_for(lambda: alpha.status("app")["config"]["error"], what="alpha to refuse v2")
    assert "group config v2 refused: app.conf.j2:3: cfg has no key 'required'" in error
    assert "keep their files" in error and SECRET not in error
    assert any("app.conf.j2:3" in e["reason"] for e in events(alpha, "app", "config"))
    assert app.file("app.conf") == text and pid(alpha, "app") == before
    assert alpha.status("app")["config"]["version"] == 1
    assert SECRET not in alpha.ok("events", "--json", "-n", "1000")


def test_bind_to_a_producer_on_another_host(hosts: ClusterHosts, tmp_path: Path) -> None:
    """alpha's strict consumer waits for beta's producer, starts with its advertised
    address and exported port, and is re-rendered when it stops."""
    alpha = hosts.start("alpha")
    beta = hosts.start("beta")
    web = consumer(tmp_path)
    web.load(alpha)
    wait_for(lambda: "waiting for bind db" in alpha.status("web")["reason"],
             what="web to wait for its bind")
    producer(tmp_path).load(beta)
    alpha.wait_state("web", "up", timeout=20)
    assert wait_for(web.env, what="web's environment") == {
        "CORRAL_BIND_DB_ADDRS": "127.0.0.1:5432"}
    assert web.file("db.conf") == "db=127.0.0.1:5432\n"
    before = pid(alpha, "web")
    beta.ok("svc", "stop", "db")
    wait_file(web, "db.conf", "db=none")
    assert pid(alpha, "web") == before




def test_first_boot_renders_the_groups_config_and_secrets_re_render(
        hosts: ClusterHosts, tmp_path: Path) -> None:
    """A supervisor that boots with a target renders the group config already in etcd
    from its first start (no restart to pick it up); a secret the values refer to
    changing renders the files again."""
    beta = hosts.start("beta")
    beta.ok("config", "apply", "app.default", "3", str(values_file(
        tmp_path, "v3.yaml", {"greeting": "from-the-group", "password": "${DB_PASS}"})))
    app = GroupProcess("app", tmp_path / "gamma", templates={"app.conf.j2": TEMPLATE},
                       config={"greeting": "hello", "password": "none", "strict": False},
                       reconfigure="echo reconfigured $CORRAL_PID >> hook.log")
    target = tmp_path / "target.yaml"
    target.write_text(yaml.safe_dump({"processes": [app.spec()]}))
    app.write()
    secrets = tmp_path / "secrets.env"
    secrets.write_text(f"DB_PASS={SECRET}\n")
    gamma = hosts.start("gamma", "--target", str(target), "--secrets-file", str(secrets))
    status = gamma.wait_state("app", "up")
    assert status["restarts"] == 0 and status["config"] == {"version": 3, "error": None}
    assert app.file("app.conf") == f"greeting=from-the-group\npassword={SECRET}\n"
    gamma.ok("secret", "set", "DB_PASS", "another-value")
    wait_file(app, "app.conf", "password=another-value")
    wait_for(lambda: f"reconfigured {status['pid']}" in (app.file("hook.log") or ""),
             what="the reconfigure hook")
    assert pid(gamma, "app") == status["pid"]


def test_a_config_applied_around_a_supervisor_kill_is_not_lost(
        hosts: ClusterHosts, tmp_path: Path) -> None:
    """alpha's supervisor is killed and beta applies at once: whichever comes first, the
    new supervisor ends with the new files in the same process (reconfigured, not
    restarted), and the census shows the version it runs."""
    alpha = hosts.start("alpha")
    beta = hosts.start("beta")
    app = GroupProcess("app", tmp_path, templates={"app.conf.j2": TEMPLATE},
                       config={"greeting": "hello", "password": "none", "strict": False},
                       reconfigure="echo reconfigured $CORRAL_PID >> hook.log")
    app.load(alpha)
    alpha.wait_state("app", "up")
    wait_file(app, "app.conf", "greeting=hello")
    before = pid(alpha, "app")
    old_sup = alpha.sup_status()["supervisor_pid"]
    os.kill(old_sup, signal.SIGKILL)
    beta.ok("config", "apply", "app.default", "5",
            str(values_file(tmp_path, "v5.yaml", {"greeting": "while-away"})))
    wait_for(lambda: alpha.answers() and alpha.sup_status()["supervisor_pid"] != old_sup,
             30, "a new supervisor")
    wait_file(app, "app.conf", "greeting=while-away")
    wait_for(lambda: f"reconfigured {before}" in (app.file("hook.log") or ""),
             what="the reconfigure hook")
    assert pid(alpha, "app") == before
    wait_for(lambda: (m := member(beta, "app.default", "alpha")) is not None
             and m["config_version"] == 5, what="alpha at config version 5")


def test_losing_etcd_re_renders_nothing(hosts: ClusterHosts, etcd: EtcdMember,
                                        tmp_path: Path) -> None:
    """With etcd gone every other member shows stale: a running instance whose template
    lists who is alive keeps what it said, and is neither reconfigured nor restarted."""
    alpha = hosts.start("alpha")
    beta = hosts.start("beta")
    source = tmp_path / "peers.j2"
    source.write_text("{% for m in svc.members %}{{ m.member }}={{ m.alive }}\n{% endfor %}")
    blob = alpha.ok("resource", "up", str(source)).strip()
    flag = tmp_path / "healthy"
    flag.touch()
    app = GroupProcess("app", tmp_path, reconfigure="echo reconfigured >> hook.log",
                       extra={"templates": ["peers.j2"],
                              "resources": [{"id": blob, "file": "peers.j2"}],
                              "health": {"exec": ["test", "-e", str(flag)], "interval": 0.2,
                                         "retries": 1, "restart_on_unhealthy": False}})
    spec = app.spec()
    del spec["cwd"]
    (tmp_path / "app.json").write_text(json.dumps(spec))
    alpha.ok("svc", "load", "-f", str(tmp_path / "app.json"))
    GroupProcess("app", tmp_path / "b").load(beta)
    workdir = alpha.state_dir / "run" / "app" / "0"
    text = wait_for(lambda: (t := (workdir / "peers").read_text()) == "alpha=True\nbeta=True\n"
                    and t, what="alpha to list beta")
    # The hook runs once the new file is in place: wait for it too, not only the file.
    hooks = wait_for(lambda: (workdir / "hook.log").exists()
                     and (workdir / "hook.log").read_text(), what="the reconfigure hook")
    before = pid(alpha, "app")
    etcd.kill()
    wait_for(lambda: not alpha.sup_status()["cluster"]["connected"], what="the link down")
    seen = len(events(alpha, "app"))
    flag.unlink()  # alpha's own member changes (its health) while the census is stale
    wait_for(lambda: (m := member(alpha, "app.default", "alpha")) is not None
             and m["health"] != "ok", what="alpha's member unhealthy")
    assert not [e for e in events(alpha, "app", "config")[seen:] if "re-rendered" in
                e["reason"]]
    assert (workdir / "peers").read_text() == text
    assert (workdir / "hook.log").read_text() == hooks
    assert pid(alpha, "app") == before
