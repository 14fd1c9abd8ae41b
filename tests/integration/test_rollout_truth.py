"""Rollouts and replacements that tell the truth: after each one the desired state holds,
a command exits 0 only when what should run is running and ready, and a failed rollout
puts back everything it changed (the spec, the secret, the resources) — even when the
supervisor was killed in the middle."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from .conftest import Corral, pid_alive, wait_for

pytestmark = pytest.mark.slow


def write(tmp_path: Path, text: str, name: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def rollout(corral: Corral) -> dict[str, Any]:
    return json.loads(corral.ok("target", "status", "--json"))["rollout"]  # type: ignore[no-any-return]


def running(corral: Corral, name: str) -> list[dict[str, Any]]:
    """The instances of ``name`` that are up, with a live pid (retiring ones left out)."""
    svc = corral.status(name)
    return [i for i in svc["instance_list"] if i["state"] == "up" and i["pid"]
            and pid_alive(i["pid"]) and not i.get("retiring")]


# ------------------------------------------------------------------ 1: never left down
def test_loading_a_fix_for_a_crash_looping_process_starts_it(corral: Corral) -> None:
    """`svc load` of a working command over one that backs off: it runs at once, and
    `--wait` says so."""
    corral.ok("svc", "load", "flaky", "--", "sh", "-c", "exit 1")
    wait_for(lambda: corral.status("flaky")["state"] == "backoff", what="flaky backing off")
    result = corral.run("svc", "load", "flaky", "--wait", "10", "--", "sleep", "1000")
    assert result.returncode == 0, result.stderr
    assert len(running(corral, "flaky")) == 1
    assert corral.status("flaky")["desired"] == "up"


def test_target_set_and_svc_load_fix_a_failed_process(corral: Corral, tmp_path: Path) -> None:
    """A process that gave up (`failed`) is started by the `target set` (and the
    `svc load -f --wait`) that fixes it; both exit 0 once it is up."""
    broken = ("processes:\n  - name: job\n    command: \"exit 3\"\n"
              "    restart: {max_restarts: 1, backoff_min: 10ms, backoff_max: 20ms}\n")
    corral.run("target", "set", str(write(tmp_path, broken, "broken.yaml")))  # job fails
    corral.wait_state("job", "failed")
    fixed = broken.replace('"exit 3"', '"exec sleep 1000"')
    result = corral.run("target", "set", str(write(tmp_path, fixed, "fixed.yaml")))
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(running(corral, "job")) == 1

    spec = ("name: other\ncommand: \"exit 3\"\n"
            "restart: {max_restarts: 1, backoff_min: 10ms, backoff_max: 20ms}\n")
    corral.ok("svc", "load", "-f", str(write(tmp_path, spec, "other.yaml")))
    corral.wait_state("other", "failed")
    good = write(tmp_path, spec.replace('"exit 3"', '"exec sleep 1000"'), "other2.yaml")
    result = corral.run("svc", "load", "-f", str(good), "--wait", "10")
    assert result.returncode == 0, result.stderr
    assert len(running(corral, "other")) == 1


def test_a_secret_that_fixes_crash_looping_processes_starts_them(corral: Corral,
                                                                 tmp_path: Path) -> None:
    """Four processes that need the right password (three wait on the first): with the
    wrong one they crash or wait; `secret set` of the right one brings all four up before
    it exits 0."""
    corral.ok("secret", "set", "PASS", "wrong")
    entry = ("  - name: {name}\n"
             "    command: 'test \"$PASS\" = right || exit 1; touch up; exec sleep 1000'\n"
             "    health: {{exec: [test, -f, up], interval: 100ms, retries: 1}}\n"
             "    readiness: health\n"
             "    env: {{PASS: \"${{PASS}}\"}}\n"
             "    restart: {{backoff_min: 100ms, backoff_max: 300ms}}\n"
             "    rollout_timeout: 3s\n")
    text = "processes:\n" + entry.format(name="db") + "".join(
        entry.format(name=n) + "    depends_on: [db]\n" for n in ("api", "worker", "cron"))
    result = corral.run("target", "set", str(write(tmp_path, text, "t.yaml")))
    assert result.returncode == 1 and "db" in result.stderr, result.stderr
    result = corral.run("secret", "set", "PASS", "right")
    assert result.returncode == 0, result.stdout + result.stderr
    for name in ("db", "api", "worker", "cron"):
        assert len(running(corral, name)) == 1, corral.status(name)
    assert rollout(corral)["phase"] == "done"


# A service that is healthy (a file `ready` in its working directory) after a moment, or
# never (healthy=False); VERSION tells the versions apart.
API = """\
processes:
  - name: api
    command: "echo api version $VERSION starting; {before}sleep 0.2; {ready}exec sleep 600"
    env: {{VERSION: "{version}"}}
    health: {{exec: [test, -f, ready], interval: 100ms, retries: 1}}
    rollout_timeout: {timeout}
{extra}"""


def api(version: int, *, healthy: bool = True, timeout: str = "3s", before: str = "",
        extra: str = "") -> str:
    return API.format(version=version, ready="touch ready; " if healthy else "",
                      timeout=timeout, before=before, extra=extra)


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().partition("=")[::2] for item in raw if item)


def api_version(corral: Corral) -> str | None:
    """The VERSION of the one healthy, up api instance (None while there is not exactly
    one)."""
    live = [i for i in running(corral, "api") if i["health"] == "ok"]
    return environ(live[0]["pid"]).get("VERSION") if len(live) == 1 else None


# ------------------------------------------------- 2: a resumed rollout reverts like any other
@pytest.mark.parametrize("order", ["stop-first", "start-first"])
def test_a_rollout_resumed_after_a_supervisor_kill_reverts(corral: Corral, tmp_path: Path,
                                                           order: str) -> None:
    """v3 never becomes healthy and the supervisor is killed while it starts: the next
    supervisor ends the rollout as failed, `target get` holds v1 again, v1 runs, and a
    crash of that instance restarts v1 (not v3)."""
    extra = f"    replace: {order}\n"
    corral.ok("target", "set", str(write(tmp_path, api(1, extra=extra), "v1.yaml")))
    wait_for(lambda: api_version(corral) == "1", what="v1 healthy")
    kept = corral.ok("target", "get")
    corral.ok("target", "set", "--no-wait",
              str(write(tmp_path, api(3, healthy=False, extra=extra), "v3.yaml")))
    wait_for(lambda: any("api version 3 starting" in ln for ln in corral.log_lines("api")),
             what="v3 started")
    supervisor = corral.sup_status()["supervisor_pid"]
    os.kill(supervisor, signal.SIGKILL)
    wait_for(lambda: corral.answers() and corral.sup_status()["supervisor_pid"] != supervisor,
             30, "a new supervisor")
    wait_for(lambda: rollout(corral)["phase"] != "running", 30, "the rollout's verdict")
    record = rollout(corral)
    assert record["phase"] == "failed", record
    assert corral.ok("target", "get") == kept
    wait_for(lambda: api_version(corral) == "1", 30, "v1 running again")
    pid = running(corral, "api")[0]["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: api_version(corral) == "1" and running(corral, "api")[0]["pid"] != pid,
             30, "v1 restarted after its crash")
    assert corral.ok("target", "get") == kept


def test_an_old_instance_that_crashes_during_a_rollout_comes_back_as_the_old_version(
        corral: Corral, tmp_path: Path) -> None:
    """While instance 0 is being replaced, instance 1 (still the old version) is killed:
    it restarts as the old version, and is then replaced like the other one."""
    extra = "    instances: 2\n    replace: start-first\n"
    corral.ok("target", "set", str(write(tmp_path, api(1, extra=extra), "v1.yaml")))
    slow = api(2, extra=extra, timeout="20s", before="sleep 2; ")
    corral.ok("target", "set", "--no-wait", str(write(tmp_path, slow, "v2.yaml")))
    wait_for(lambda: any("api version 2 starting" in ln for ln in corral.log_lines("api")),
             what="the first new instance started")
    old = next(i for i in corral.status("api")["instance_list"] if i["index"] == 1)
    assert environ(old["pid"])["VERSION"] == "1"
    os.kill(old["pid"], signal.SIGKILL)
    again = wait_for(lambda: [i for i in running(corral, "api")
                              if i["index"] == 1 and i["pid"] != old["pid"]], 15,
                     "instance 1 restarted")[0]
    assert environ(again["pid"])["VERSION"] == "1"
    wait_for(lambda: rollout(corral)["phase"] != "running", 60, "the rollout to end")
    assert rollout(corral)["phase"] == "done"
    assert sorted(environ(i["pid"])["VERSION"] for i in running(corral, "api")) == ["2", "2"]


# ------------------------------------------------------------------------ 6: fixed ports
DB = """\
import os, signal, socket, sys, time
def shutdown(*_):
    time.sleep(0.5)  # saving its data: the port stays bound meanwhile
    sys.exit(0)
signal.signal(signal.SIGTERM, shutdown)
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(16)
print("db", os.getpid(), "listening", flush=True)
while True:
    c, _ = s.accept()
    c.sendall(f"{os.getpid()}\\n".encode())
    c.close()
"""

WORKER = """\
import socket, sys, time
while True:
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2).close()
    except OSError as exc:
        sys.exit(f"db unreachable: {exc}")
    time.sleep(0.05)
"""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def served_by(port: int) -> int:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
        return int(c.makefile().readline())


def test_rotating_a_secret_of_a_process_on_a_fixed_port_stops_the_old_one_first(
        corral: Corral, tmp_path: Path) -> None:
    """A db on a fixed port and a worker that needs it, both using the secret: the new db
    is started only once the old one has stopped, so it binds the port; the instance the
    probe judged is the one serving; the worker is up again before `secret set` exits 0."""
    from .conftest import PY

    port = free_port()
    (tmp_path / "db.py").write_text(DB)
    (tmp_path / "worker.py").write_text(WORKER)
    corral.ok("secret", "set", "PASS", "one")
    text = f"""\
processes:
  - name: db
    command: [{PY}, {tmp_path / 'db.py'}, "{port}"]
    env: {{PASS: "${{PASS}}"}}
    readiness: health
    health: {{tcp: {{port: {port}}}, interval: 100ms, retries: 30}}
    restart: {{backoff_min: 100ms, backoff_max: 500ms}}
    rollout_timeout: 10s
  - name: worker
    command: [{PY}, {tmp_path / 'worker.py'}, "{port}"]
    env: {{PASS: "${{PASS}}"}}
    depends_on: [db]
    restart: {{backoff_min: 100ms, backoff_max: 500ms}}
    rollout_timeout: 10s
"""
    corral.ok("target", "set", str(write(tmp_path, text, "t.yaml")))
    old_db = running(corral, "db")[0]["pid"]
    assert served_by(port) == old_db
    result = corral.run("secret", "set", "PASS", "two")
    assert result.returncode == 0, result.stdout + result.stderr
    db = running(corral, "db")
    assert len(db) == 1 and db[0]["pid"] != old_db and not pid_alive(old_db)
    assert served_by(port) == db[0]["pid"]
    assert environ(db[0]["pid"])["PASS"] == "two"
    assert db[0]["restarts"] == 0   # it bound the port the first time
    worker = running(corral, "worker")
    assert len(worker) == 1 and environ(worker[0]["pid"])["PASS"] == "two"
    assert rollout(corral)["phase"] == "done"


# ------------------------------------------- 11: a failed rollout reverts what it changed
def test_a_failed_secret_rollout_puts_the_old_value_back(corral: Corral,
                                                         tmp_path: Path) -> None:
    """`secret set BUNDLE_ID <bad bundle>` whose rollout fails exits 1, and the secret, the
    resources in use and the process are as before: a crash of the old instance brings
    back the old bundle."""
    import tarfile

    def bundle(version: int, ok: bool) -> str:
        src = tmp_path / f"app-{version}.sh"
        src.write_text(f"echo app version {version}\n" + (
            "touch ready; exec sleep 600\n" if ok else "exit 1\n"))
        out = tmp_path / f"bundle-{version}.tar"
        with tarfile.open(out, "w") as tar:
            tar.add(src, arcname="app.sh")
        return corral.ok("resource", "up", str(out)).strip()

    good, bad = bundle(1, True), bundle(2, False)
    corral.ok("secret", "set", "BUNDLE_ID", good)
    text = """\
processes:
  - name: app
    command: "sh app.sh"
    resources: [{id: "${BUNDLE_ID}", file: bundle.tar}]
    before: "tar -xf bundle.tar"
    health: {exec: [test, -f, ready], interval: 100ms, retries: 1}
    restart: {backoff_min: 100ms, backoff_max: 300ms}
    rollout_timeout: 2s
"""
    corral.ok("target", "set", str(write(tmp_path, text, "t.yaml")))
    result = corral.run("secret", "set", "BUNDLE_ID", bad)
    assert result.returncode == 1, result.stdout
    assert "app version 2" in result.stderr
    assert corral.ok("secret", "get", "BUNDLE_ID").strip() == good
    used = {r["id"]: r["used_by"] for r in json.loads(corral.ok("resource", "ls", "--json"))}
    assert used[good] == ["app"] and used[bad] == []
    pid = wait_for(lambda: [i["pid"] for i in running(corral, "app") if i["health"] == "ok"],
                   what="the old version healthy")[0]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: [i for i in running(corral, "app")
                      if i["pid"] != pid and i["health"] == "ok"], 15,
             "the old version back after its crash")
    assert corral.log_lines("app")[-1].endswith("app version 1")


def test_a_secret_rollout_cut_by_a_supervisor_kill_still_puts_the_old_value_back(
        corral: Corral, tmp_path: Path) -> None:
    """The supervisor is killed while a secret's new value fails to come up: the next one
    ends the rollout as failed, with the old value back and the old version running."""
    corral.ok("secret", "set", "VERSION", "1")
    text = api(0, timeout="4s").replace('"0"', '"${VERSION}"').replace(
        "touch ready;", "test $VERSION = 1 && touch ready;")  # only version 1 gets ready
    corral.ok("target", "set", str(write(tmp_path, text, "t.yaml")))
    wait_for(lambda: api_version(corral) == "1", what="v1 healthy")
    corral.ok("secret", "set", "--no-wait", "VERSION", "2")
    wait_for(lambda: any("api version 2 starting" in ln for ln in corral.log_lines("api")),
             what="v2 started")
    supervisor = corral.sup_status()["supervisor_pid"]
    os.kill(supervisor, signal.SIGKILL)
    wait_for(lambda: corral.answers() and corral.sup_status()["supervisor_pid"] != supervisor,
             30, "a new supervisor")
    wait_for(lambda: rollout(corral)["phase"] != "running", 30, "the rollout's verdict")
    assert rollout(corral)["phase"] == "failed"
    assert corral.ok("secret", "get", "VERSION").strip() == "1"
    wait_for(lambda: api_version(corral) == "1", 30, "v1 running again")


# ---------------------------------------------------- 12: a fresh state directory works
def test_a_fresh_state_directory_takes_processes_that_all_set_cwd(corral: Corral,
                                                                  tmp_path: Path) -> None:
    """No process needs a directory under run/, and one receives a service: its port is
    still recorded, and both run."""
    port = free_port()
    text = f"""\
processes:
  - name: web
    command: "exec sleep 600"
    cwd: {tmp_path}
    receives: [web]
  - name: other
    command: "exec sleep 600"
    cwd: {tmp_path}
services:
  - name: web
    on: 127.0.0.1:{port}
"""
    # run/ holds only the launcher's children record: no process directory, no ports.json
    # (whose temp file could not be made in a missing directory).
    run = corral.state_dir / "run"
    assert not run.exists() or {p.name for p in run.iterdir()} <= {"launcher-children.jsonl"}
    result = corral.run("target", "set", str(write(tmp_path, text, "t.yaml")))
    assert result.returncode == 0, result.stderr
    assert len(running(corral, "web")) == 1 and len(running(corral, "other")) == 1
    ports = json.loads((corral.state_dir / "run" / "ports.json").read_text())
    assert ports.pop("format") == 1 and list(ports) == ["web/0"]


# --------------------------------------------------------------------- 16: small truths
def test_target_status_shows_the_last_rollout_after_sup_restart(corral: Corral,
                                                                tmp_path: Path) -> None:
    corral.ok("target", "set", str(write(tmp_path, api(1), "v1.yaml")))
    corral.ok("target", "set", str(write(tmp_path, api(2), "v2.yaml")))
    before = rollout(corral)
    assert before["id"] == 2 and before["phase"] == "done"
    supervisor = corral.sup_status()["supervisor_pid"]
    corral.ok("sup", "restart")
    wait_for(lambda: corral.answers() and corral.sup_status()["supervisor_pid"] != supervisor,
             30, "a new supervisor")
    assert rollout(corral) == before
    corral.ok("target", "set", str(write(tmp_path, api(3), "v3.yaml")))
    assert rollout(corral)["id"] == 3


def test_a_failed_rollouts_last_lines_are_the_new_instances(corral: Corral,
                                                            tmp_path: Path) -> None:
    """The old instance keeps writing while the new one fails: the lines shown are the new
    one's."""
    chatty = "while :; do echo old tick; sleep 0.001; done & "
    corral.ok("target", "set", str(write(tmp_path, api(1, before=chatty, extra=(
        "    replace: start-first\n")), "v1.yaml")))
    wait_for(lambda: sum("old tick" in ln for ln in corral.log_lines("api")) > 300,
             what="the old instance chatting")
    v2 = api(2, healthy=False, timeout="2s", extra="    replace: start-first\n")
    result = corral.run("target", "set", str(write(tmp_path, v2, "v2.yaml")))
    assert result.returncode == 1
    lines = rollout(corral)["steps"][0]["last_lines"]
    assert any("api version 2 starting" in ln for ln in lines), lines
    assert not any("old tick" in ln for ln in lines), lines
