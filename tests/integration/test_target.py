"""The declarative target: get, plan, set (health-gated replacement), status; validation
that changes nothing; `svc load` and the target editing the same desired state."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from .conftest import PY, Corral, pid_alive, wait_for

pytestmark = pytest.mark.slow

# A service that becomes healthy (a file `ready` in its fresh working directory) after a
# moment; its health check looks for that file.  VERSION tells the versions apart.  It
# binds no port, so its versions can run side by side: replaced start-first.
SERVICE = """\
  - name: {name}
    command: "echo {name} version $VERSION starting; sleep 0.3; touch ready; exec sleep 600"
    env: {{VERSION: "{version}"}}
    instances: {instances}
    health: {{exec: [test, -f, ready], interval: 100ms, retries: 1}}
    rollout_timeout: {timeout}
    replace: start-first
"""


def target(*services: dict[str, Any]) -> str:
    out = "processes:\n"
    for svc in services:
        out += SERVICE.format(**{"instances": 1, "timeout": "20s", **svc})
    return out


def write(tmp_path: Path, text: str, name: str = "target.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def pids(corral: Corral) -> dict[str, list[int]]:
    return {s["name"]: sorted(i["pid"] for i in s["instance_list"] if i["pid"])
            for s in corral.status()}


def events(corral: Corral, name: str | None = None) -> list[dict[str, Any]]:
    args = ["events", "--json", "-n", "2000"] + (["--service", name] if name else [])
    return [json.loads(line) for line in corral.ok(*args).splitlines()]


def all_healthy(corral: Corral, name: str, count: int) -> bool:
    svc = corral.status(name)
    live = [i for i in svc["instance_list"] if i["state"] == "up" and i["health"] == "ok"
            and not i.get("retiring")]
    return len(live) == count


def test_set_adds_then_replaces_only_what_changed_health_gated(corral: Corral,
                                                               tmp_path: Path) -> None:
    """`target set` adds processes; a second set changes one: the other keeps its PIDs, and
    each instance of the changed one is replaced new-first — its old instance is stopped
    only after the new one passed its health check."""
    v1 = write(tmp_path, target({"name": "api", "version": 1, "instances": 2},
                                {"name": "worker", "version": 1}))
    out = corral.ok("target", "set", str(v1))
    assert "+ process api" in out and "+ process worker" in out
    wait_for(lambda: all_healthy(corral, "api", 2) and all_healthy(corral, "worker", 1),
             what="everything healthy")
    before = pids(corral)

    v2 = write(tmp_path, target({"name": "api", "version": 2, "instances": 2},
                                {"name": "worker", "version": 1}), "v2.yaml")
    plan = corral.ok("target", "plan", str(v2))
    assert plan.strip() == "~ process api: env.VERSION (replaced, health-gated)"
    out = corral.ok("target", "set", str(v2))
    assert "rollout" in out and "done" in out, out

    after = pids(corral)
    assert after["worker"] == before["worker"]          # unchanged: not touched
    assert not set(after["api"]) & set(before["api"])   # both api instances replaced
    assert all(not pid_alive(p) for p in before["api"])
    assert corral.log_lines("api")[-1:] and any("api version 2 starting" in line
                                                for line in corral.log_lines("api"))
    # Order, per instance: new spawned, new healthy, then the old one stopped.
    evs = events(corral, "api")
    for old in before["api"]:
        stop = next(e for e in evs if e["kind"] == "stop" and e["pid"] == old)
        cutover = next(e for e in evs if e["kind"] == "rollout" and f"stopping pid {old}"
                       in e["reason"])
        new_pid = cutover["pid"]
        healthy = next(e for e in evs if e["kind"] == "health" and e["pid"] == new_pid
                       and "ok" in e["reason"])
        assert healthy["seq"] < cutover["seq"] < stop["seq"]
    status = json.loads(corral.ok("target", "status", "--json"))
    assert status["running"] is False and status["rollout"]["phase"] == "done"
    assert status["rollout"]["steps"][0]["replaced"] == 2
    # Applying the same file again changes nothing.
    assert corral.ok("target", "plan", str(v2)).strip() == "no changes"
    assert corral.ok("target", "set", str(v2)).strip() == "no changes"
    assert pids(corral) == after


def test_a_new_version_that_never_gets_healthy_is_rolled_back(corral: Corral,
                                                              tmp_path: Path) -> None:
    """The new instance is not healthy within rollout_timeout: it is stopped, the old one
    keeps running (same PID), the command exits 1 with the reason and the new instance's
    last log lines, and the target goes back to the old version."""
    v1 = write(tmp_path, target({"name": "api", "version": 1}))
    corral.ok("target", "set", str(v1))
    wait_for(lambda: all_healthy(corral, "api", 1), what="api healthy")
    old_pid = pids(corral)["api"]
    kept = corral.ok("target", "get")

    broken = target({"name": "api", "version": 2, "timeout": "1500ms"}).replace(
        "touch ready; ", "echo broken build; ")
    result = corral.run("target", "set", str(write(tmp_path, broken, "v2.yaml")))
    assert result.returncode == 1, result.stdout
    assert "rollout" in result.stderr and "failed" in result.stderr
    assert "not healthy within 1.5s" in result.stderr
    assert "broken build" in result.stderr              # the new instance's last lines
    assert "old version keeps running" in result.stderr
    assert pids(corral)["api"] == old_pid and pid_alive(old_pid[0])
    assert corral.ok("target", "get") == kept
    status = json.loads(corral.ok("target", "status", "--json"))["rollout"]
    assert status["phase"] == "failed" and status["steps"][0]["last_lines"]
    wait_for(lambda: all_healthy(corral, "api", 1), what="the old instance checked again")


def test_invalid_target_changes_nothing_and_names_every_problem(corral: Corral,
                                                                tmp_path: Path) -> None:
    """Unknown field, missing secret, unknown resource, dependency cycle: all reported
    together with file and line; the running processes keep their PIDs and `target get`
    is byte-identical."""
    corral.ok("target", "set", str(write(tmp_path, target({"name": "api", "version": 1}))))
    wait_for(lambda: all_healthy(corral, "api", 1), what="api healthy")
    before, kept = pids(corral), corral.ok("target", "get")

    bad = write(tmp_path, """\
processes:
  - name: api
    command: [sleep, "600"]
    colour: red
  - name: a
    command: [sleep, "600"]
    depends_on: [b]
  - name: b
    command: [sleep, "600"]
    depends_on: [a]
""", "bad.yaml")
    result = corral.run("target", "set", str(bad))
    assert result.returncode == 1
    assert f"{bad}:4: processes[0].colour: unknown field 'colour'" in result.stderr
    assert "dependency cycle" in result.stderr
    assert result.stderr.startswith("corral: ") and "Traceback" not in result.stderr

    missing = write(tmp_path, """\
processes:
  - name: api
    command: [sleep, "600"]
    env: {DATABASE_URL: "postgres://app:${DB_PASS}@db/app"}
    resources: [{id: "%s", file: bundle.tar}]
""" % ("ab" * 32), "missing.yaml")
    result = corral.run("target", "plan", str(missing))
    assert result.returncode == 1
    assert (f"{missing}:4: processes[0].env.DATABASE_URL: secret 'DB_PASS' is not set"
            in result.stderr)
    assert f"{missing}:5: processes[0].resources[0].id: resource abababababab" \
        in result.stderr
    assert corral.run("target", "set", str(missing)).returncode == 1
    assert pids(corral) == before
    assert corral.ok("target", "get") == kept


def test_svc_load_and_target_edit_the_same_desired_state(corral: Corral,
                                                         tmp_path: Path) -> None:
    """Whatever loaded it, `target get` shows it; `target set` removes what it no longer
    lists (a service loaded by hand included); `target get > f; target set f` is a no-op."""
    corral.ok("target", "set", str(write(tmp_path, target({"name": "api", "version": 1}))))
    corral.ok("svc", "load", "extra", "--", "sleep", "600")
    got = corral.ok("target", "get")
    assert "name: api" in got and "name: extra" in got
    roundtrip = write(tmp_path, got, "roundtrip.yaml")
    assert corral.ok("target", "plan", str(roundtrip)).strip() == "no changes"

    extra_pid = corral.wait_state("extra", "up")["pid"]
    only_api = write(tmp_path, target({"name": "api", "version": 1}), "only.yaml")
    assert corral.ok("target", "plan", str(only_api)).strip() == "- process extra"
    corral.ok("target", "set", str(only_api))
    assert [s["name"] for s in corral.status()] == ["api"]
    wait_for(lambda: not pid_alive(extra_pid), what="extra stopped")
    corral.ok("svc", "unload", "api")
    assert corral.ok("target", "get").strip() == "{}"


def test_no_wait_returns_at_once_and_status_shows_the_rollout(corral: Corral,
                                                              tmp_path: Path) -> None:
    corral.ok("target", "set", str(write(tmp_path, target({"name": "api", "version": 1}))))
    wait_for(lambda: all_healthy(corral, "api", 1), what="api healthy")
    slow = target({"name": "api", "version": 2}).replace("sleep 0.3", "sleep 2")
    out = corral.ok("target", "set", "--no-wait", str(write(tmp_path, slow, "v2.yaml")))
    assert "running (see: corral target status)" in out
    status = json.loads(corral.ok("target", "status", "--json"))
    assert status["running"] is True and status["rollout"]["phase"] == "running"
    assert "api: 0/1 replaced, running" in corral.ok("target", "status")
    wait_for(lambda: json.loads(corral.ok("target", "status", "--json"))["rollout"]["phase"]
             == "done", 30, "the rollout to finish")


def test_a_rollout_cut_by_a_supervisor_crash_is_finished_by_the_next(corral: Corral,
                                                                     tmp_path: Path) -> None:
    """kill -9 of the supervisor in the middle of a replacement: the next supervisor adopts
    both versions, and finishes the replacement (one api instance left, the new one)."""
    corral.ok("target", "set", str(write(tmp_path, target({"name": "api", "version": 1}))))
    wait_for(lambda: all_healthy(corral, "api", 1), what="api healthy")
    old = pids(corral)["api"]
    slow = target({"name": "api", "version": 2}).replace("sleep 0.3", "sleep 1")
    corral.ok("target", "set", "--no-wait", str(write(tmp_path, slow, "v2.yaml")))
    supervisor = corral.sup_status()["supervisor_pid"]
    os.kill(supervisor, signal.SIGKILL)
    wait_for(lambda: corral.answers() and corral.sup_status()["supervisor_pid"] != supervisor,
             30, "a new supervisor")
    wait_for(lambda: all_healthy(corral, "api", 1) and not pid_alive(old[0]), 30,
             "the replacement to finish")
    svc = corral.status("api")
    assert len([i for i in svc["instance_list"] if i["pid"]]) == 1
    assert any("api version 2 starting" in line for line in corral.log_lines("api"))
    assert "VERSION: '2'" in corral.ok("target", "get")


def test_target_commands_help_and_usage(corral: Corral) -> None:
    result = subprocess.run([PY, "-m", "corral", "target", "set", "--help"],
                            capture_output=True, text=True, env=corral.env)
    assert result.returncode == 0 and "corral target set target.yaml" in result.stdout
    missing = corral.run("target", "set", "/nonexistent.yaml")
    assert missing.returncode == 1
    assert missing.stderr.strip() == \
        "corral: cannot read /nonexistent.yaml: No such file or directory"
