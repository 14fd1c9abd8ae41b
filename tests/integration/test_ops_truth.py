"""What an operator is told is true: a service running as another user can use its
directory, `sup run` validates and reports, reserved ports stay usable, validation knows
which user corral runs as, restart counts and notes are honest, and corral's own variables
expand in a command.

Tests that need a corral that is not root run one as ``nobody`` with ``setpriv``.  It keeps
one capability, CAP_DAC_READ_SEARCH, only so that it can read the Python installation under
``/root`` (its interpreter is a copy outside ``/root``, since ``access()`` ignores that
capability); it cannot change its user or raise limits, which is what those tests are about.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import resource
import shutil
import signal
import socket
import stat
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import PY, Corral, pid_alive, wait_for

NOBODY = pwd.getpwnam("nobody")
AS_NOBODY = ["setpriv", f"--reuid={NOBODY.pw_uid}", f"--regid={NOBODY.pw_gid}",
             "--clear-groups", "--inh-caps=+dac_read_search",
             "--ambient-caps=+dac_read_search"]

# Answers "pid P" on GET on $SERVICE_PORT_WEB.
APP = """\
import http.server, os
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"pid {os.getpid()}\\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["SERVICE_PORT_WEB"])), H)
print("serving on", os.environ["SERVICE_PORT_WEB"], flush=True)
srv.serve_forever()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(port: int, timeout: float = 5) -> str:
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request("GET", "/")
    body = conn.getresponse().read().decode()
    conn.close()
    return body


def app_target(app: Path, port: int, python: str = PY, health: bool = True) -> str:
    check = "{http: {service: web, path: /}, interval: 100ms, retries: 100}" if health else "null"
    return f"""\
processes:
  - name: app
    command: [{python}, {app}]
    receives: [web]
    health: {check}
    restart: {{backoff_min: 100ms, backoff_max: 300ms}}
services:
  - name: web
    on: 127.0.0.1:{port}
"""


def held_ports(corral: Corral) -> dict[str, dict[str, int]]:
    path = corral.state_dir / "run" / "ports.json"
    return json.loads(path.read_text()) if path.exists() else {}  # type: ignore[no-any-return]


class UserCorral(Corral):
    """A corral run as ``nobody`` on a state directory that ``nobody`` owns."""

    python = PY

    def start(self, *extra: str, env: dict[str, str] | None = None) -> None:
        with self.output.open("ab") as out:
            self.proc = subprocess.Popen(
                [*AS_NOBODY, self.python, "-m", "corral", "sup", "run", "--state-dir",
                 str(self.state_dir), *extra],
                stdout=out, stderr=subprocess.STDOUT, env={**self.env, **(env or {})},
                start_new_session=True)
        wait_for(self.answers, 30, "the API to answer")


@pytest.fixture(scope="module")
def nobody_python() -> Iterator[str]:
    """This interpreter, copied where ``nobody`` may run it (the launcher checks a program
    with ``access()``, which a capability does not help)."""
    where = tempfile.mkdtemp(prefix="corral-py-")
    os.chmod(where, 0o755)
    copy = shutil.copy2(os.path.realpath(PY), where)
    try:
        yield str(copy)
    finally:
        shutil.rmtree(where, ignore_errors=True)


@pytest.fixture
def user_corral(tmp_path: Path, nobody_python: str) -> Iterator[UserCorral]:
    """A started corral that runs as ``nobody``."""
    home = tmp_path / "nobody"
    home.mkdir()
    os.chown(home, NOBODY.pw_uid, NOBODY.pw_gid)
    instance = UserCorral(home / "state")
    instance.python = nobody_python
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()


def sup_run(state_dir: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run ``corral sup run`` in the foreground and expect it to end by itself."""
    env = {**os.environ, "NO_COLOR": "1"}
    proc = subprocess.Popen([PY, "-m", "corral", "sup", "run", "--state-dir", str(state_dir),
                             *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"sup run kept running; stderr: {err}") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


# --- 7: a service running as another user can use its directory ---------------------------


def test_a_service_running_as_another_user_owns_its_fresh_directory(
        corral: Corral, tmp_path: Path) -> None:
    """With ``user: nobody``, ``before: tar -xf bundle.tar`` unpacks into the instance's
    directory (which belongs to nobody), the program writes there too, and the placed
    resource stays read-only."""
    src = tmp_path / "hello.txt"
    src.write_text("hello from the bundle\n")
    bundle = tmp_path / "bundle.tar"
    with tarfile.open(bundle, "w") as tar:
        tar.add(src, arcname="hello.txt")
    rid = corral.ok("resource", "up", str(bundle)).strip()
    target = tmp_path / "t.yaml"
    target.write_text(f"""\
processes:
  - name: unpack
    user: nobody
    resources: [{{id: "{rid}", file: bundle.tar}}]
    before: tar -xf bundle.tar
    command: "cat hello.txt; id -un; touch made-here; echo x >> bundle.tar && echo wrote it ||
      echo resource is read-only; exec sleep 1000"
""")
    corral.ok("target", "set", str(target))
    corral.wait_state("unpack", "up", 30)
    workdir = corral.state_dir / "run" / "unpack" / "0"
    wait_for(lambda: (workdir / "made-here").exists(), what="the program to write its file")
    assert workdir.stat().st_uid == NOBODY.pw_uid
    logs = "\n".join(wait_for(lambda: (lines := corral.log_lines("unpack")) and any(
        "read-only" in ln or "wrote it" in ln for ln in lines) and lines))
    assert "hello from the bundle" in logs and " O nobody" in logs
    assert "resource is read-only" in logs and "wrote it" not in logs
    placed = workdir / "bundle.tar"
    assert placed.stat().st_uid == 0 and stat.S_IMODE(placed.stat().st_mode) == 0o444
    assert corral.status("unpack")["restarts"] == 0


# --- 8: sup run --target validates like target set, and says what it did -----------------


def test_sup_run_target_refuses_a_missing_secret_and_starts_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    target = tmp_path / "t.yaml"
    target.write_text(f"""\
processes:
  - name: db
    command: "touch {marker}; exec sleep 1000"
    env: {{PASSWORD: "${{DB_PASS}}"}}
""")
    done = sup_run(tmp_path / "state", "--target", str(target))
    assert done.returncode != 0
    assert f"{target}:4: processes[0].env.PASSWORD: secret 'DB_PASS' is not set" in done.stderr
    assert "Traceback" not in done.stderr
    assert not marker.exists()


def test_sup_run_target_refuses_an_address_in_use(tmp_path: Path) -> None:
    port = free_port()
    target = tmp_path / "t.yaml"
    target.write_text(f"""\
processes:
  - name: web
    command: [sleep, "1000"]
    receives: [front]
services:
  - name: front
    on: 127.0.0.1:{port}
""")
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        done = sup_run(tmp_path / "state", "--target", str(target))
    assert done.returncode != 0
    assert re.search(rf"{target}:7: services\[0\]\.on: cannot listen on 127\.0\.0\.1:{port}: "
                     r".*in use", done.stderr), done.stderr
    assert not (tmp_path / "state" / "logs" / "web.log").exists()


def test_sup_run_says_once_when_it_is_up_and_where_the_api_listens(tmp_path: Path) -> None:
    target = tmp_path / "t.yaml"
    target.write_text("processes:\n  - {name: a, command: [sleep, '1000']}\n"
                      "  - {name: b, command: [sleep, '1000'], instances: 2}\n")
    state = tmp_path / "state"
    err_file = tmp_path / "stderr"
    with err_file.open("w") as err:
        proc = subprocess.Popen([PY, "-m", "corral", "sup", "run", "--state-dir", str(state),
                                 "--target", str(target)], stdout=subprocess.DEVNULL,
                                stderr=err, start_new_session=True)
    corral = Corral(state)
    corral.proc = proc
    try:
        wait_for(lambda: "corral: up" in err_file.read_text(), 30, "the up line")
        up = [line for line in err_file.read_text().splitlines() if "corral: up" in line]
        assert len(up) == 1
        assert "2 services" in up[0] and "3 instances" in up[0]
        assert str(state / "api.sock") in up[0]
    finally:
        assert corral.stop() == 0


def test_sup_run_secrets_file_stores_the_secrets_before_the_target(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets.env"
    secrets.write_text("# the database\n\nDB_PASS=s3cret word=with equals\nLEVEL=debug\n")
    target = tmp_path / "t.yaml"
    target.write_text("""\
processes:
  - name: db
    command: ["sh", "-c", "echo level $LEVEL; exec sleep 1000"]
    env: {PASSWORD: "${DB_PASS}", LEVEL: "${LEVEL}"}
""")
    corral = Corral(tmp_path / "state")
    corral.start("--target", str(target), "--secrets-file", str(secrets))
    try:
        corral.wait_state("db", "up")
        assert corral.ok("secret", "get", "DB_PASS") == "s3cret word=with equals\n"
        wait_for(lambda: any("level debug" in ln for ln in corral.log_lines("db")),
                 what="the substituted value")
        with open(f"/proc/{corral.status('db')['pid']}/environ", "rb") as f:
            assert b"PASSWORD=s3cret word=with equals\0" in f.read()
    finally:
        corral.stop()


def test_sup_run_secrets_file_with_a_bad_line_starts_nothing(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets.env"
    secrets.write_text("# ok\nDB_PASS=x\nthis line has no equals sign\n")
    target = tmp_path / "t.yaml"
    target.write_text("processes:\n  - {name: a, command: [sleep, '1000']}\n")
    done = sup_run(tmp_path / "state", "--target", str(target), "--secrets-file", str(secrets))
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and f"{secrets}:3:" in lines[0] and "NAME=value" in lines[0]
    assert not (tmp_path / "state").exists()


# --- 13: a reserved port is really reserved ----------------------------------------------


def test_a_port_taken_while_the_service_was_stopped_is_replaced(
        corral: Corral, tmp_path: Path) -> None:
    """Another program binds a stopped instance's port: `svc start` gives the instance a
    free port (in SERVICE_PORT_WEB and ports.json), and traffic and health checks reach it."""
    app = tmp_path / "app.py"
    app.write_text(APP)
    port = free_port()
    target = tmp_path / "t.yaml"
    target.write_text(app_target(app, port))
    corral.ok("target", "set", str(target))
    wait_for(lambda: get(port).startswith("pid"), 30, "traffic through the service")
    old = held_ports(corral)["app/0"]["web"]
    corral.ok("svc", "stop", "app")
    assert held_ports(corral)["app/0"]["web"] == old  # kept for the next start
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do
        squatter.bind(("127.0.0.1", old))
        squatter.listen()
        result = corral.run("svc", "start", "app", "--wait", "30")
        assert result.returncode == 0, result.stderr
        new = held_ports(corral)["app/0"]["web"]
        assert new != old
        status = wait_for(lambda: (s := corral.status("app"))["health"] == "ok" and s,
                          what="the health check to pass on the new port")
        assert status["state"] == "up" and status["restarts"] == 1
        wait_for(lambda: get(port) == f"pid {status['pid']}\n", 30, "traffic to the new port")
        with open(f"/proc/{status['pid']}/environ", "rb") as f:
            assert f"SERVICE_PORT_WEB={new}\0".encode() in f.read()


def test_two_corrals_of_two_users_hand_out_different_ports(
        corral: Corral, user_corral: UserCorral, tmp_path: Path) -> None:
    """A stopped service's port in one corral is not handed out by another user's corral,
    and the first one starts again on its port."""
    app = tmp_path / "app.py"
    app.write_text(APP)
    app.chmod(0o644)
    mine, theirs = free_port(), free_port()
    # No connection to it before the stop: one left in TIME_WAIT would keep its port
    # looking taken for a minute, which is not what this test is about.
    (tmp_path / "mine.yaml").write_text(app_target(app, mine, health=False))
    corral.ok("target", "set", str(tmp_path / "mine.yaml"))
    wait_for(lambda: any("serving on" in ln for ln in corral.log_lines("app")), 30,
             "my service to listen")
    reserved = held_ports(corral)["app/0"]["web"]
    corral.ok("svc", "stop", "app")

    other = tmp_path / "theirs.yaml"
    other.write_text(app_target(app, theirs, user_corral.python))
    other.chmod(0o644)
    user_corral.ok("target", "set", str(other))
    wait_for(lambda: get(theirs).startswith("pid"), 30, "their service")
    assert held_ports(user_corral)["app/0"]["web"] != reserved

    result = corral.run("svc", "start", "app", "--wait", "30")
    assert result.returncode == 0, result.stderr
    assert held_ports(corral)["app/0"]["web"] == reserved
    wait_for(lambda: get(mine) == f"pid {corral.status('app')['pid']}\n", 30,
             "traffic to my service again")


# --- 15: validation knows who corral is ---------------------------------------------------


def test_an_unprivileged_corral_refuses_another_user_at_validation(
        user_corral: UserCorral, tmp_path: Path) -> None:
    target = tmp_path / "t.yaml"
    target.write_text("""\
processes:
  - name: a
    command: [sleep, "1000"]
    user: root
  - name: b
    command: [sleep, "1000"]
    group: root
""")
    target.chmod(0o644)
    for verb in ("plan", "set"):
        result = user_corral.run("target", verb, str(target))
        assert result.returncode == 1
        assert f"{target}:4: processes[0].user: " in result.stderr
        assert "'root'" in result.stderr and "nobody" in result.stderr
        assert f"{target}:7: processes[1].group: " in result.stderr
    assert user_corral.status() == []


def test_an_unprivileged_corral_runs_a_process_as_its_own_user(
        user_corral: UserCorral, tmp_path: Path) -> None:
    user_corral.ok("svc", "load", "mine", "--user", "nobody", "--group", "nogroup", "--",
                   "sleep", "1000")
    status = user_corral.wait_state("mine", "up")
    with open(f"/proc/{status['pid']}/status") as f:
        uid_line = next(line for line in f if line.startswith("Uid:"))
    assert uid_line.split()[1] == str(NOBODY.pw_uid)
    assert status["restarts"] == 0


def test_an_rlimit_above_the_hard_limit_is_one_line(user_corral: UserCorral) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    spec = user_corral.state_dir.parent / "many.yaml"
    spec.write_text(f"name: many\ncommand: [sleep, '1000']\nrlimits: {{nofile: {hard + 1}}}\n")
    spec.chmod(0o644)
    result = user_corral.run("svc", "load", "-f", str(spec))
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert "many: processes[0].rlimits.nofile: " in result.stderr
    assert str(hard) in result.stderr and "preexec" not in result.stderr
    assert user_corral.status() == []


# --- 16: small truths ----------------------------------------------------------------------


def test_an_exit_while_no_supervisor_ran_counts_as_a_restart(corral: Corral) -> None:
    corral.ok("svc", "load", "sleeper", "--", "sleep", "1000")
    first = corral.status("sleeper")["pid"]
    sup = corral.sup_status()["supervisor_pid"]
    os.kill(sup, signal.SIGSTOP)  # the exit is reported to nobody who handles it
    try:
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: not pid_alive(first), what="the service to die")
    finally:
        # SIGKILL ends a stopped process too, and its launcher may reap it at once: a
        # SIGCONT after it could find no such process.
        os.kill(sup, signal.SIGKILL)
    status = wait_for(lambda: (s := corral.status("sleeper"))["pid"] not in (None, first)
                      and s["state"] == "up" and s, 30, "the replayed exit's restart")
    assert status["restarts"] == 1
    assert status["last_exit"]["signal"] == "KILL"


def test_sup_restart_changes_no_restart_count(corral: Corral, tmp_path: Path) -> None:
    """A process loaded again under a name the launcher ran before keeps the count it
    shows (0) across `sup restart`; one that really restarted keeps its count too."""
    spec = tmp_path / "crash.yaml"
    spec.write_text(f"name: flaky\ncommand: [{PY}, -c, 'raise SystemExit(3)']\n"
                    "restart: {backoff_min: 100ms, backoff_max: 200ms, max_restarts: 3}\n")
    corral.ok("svc", "load", "-f", str(spec))
    corral.wait_state("flaky", "failed", 30)
    corral.ok("svc", "unload", "flaky")
    corral.ok("svc", "load", "flaky", "--", "sleep", "1000")
    corral.ok("svc", "load", "other", "--", "sleep", "1000")
    os.kill(corral.status("other")["pid"], signal.SIGKILL)
    wait_for(lambda: corral.status("other")["restarts"] == 1
             and corral.status("other")["state"] == "up", what="other's restart")
    before = {s["name"]: s["restarts"] for s in corral.status()}
    assert before == {"flaky": 0, "other": 1}
    old = corral.sup_status()["supervisor_pid"]
    corral.ok("sup", "restart")
    wait_for(lambda: corral.sup_status()["supervisor_pid"] != old, 30, "a new supervisor")
    assert {s["name"]: s["restarts"] for s in corral.status()} == before


def test_each_validation_problem_is_listed_once(corral: Corral, tmp_path: Path) -> None:
    target = tmp_path / "t.yaml"
    target.write_text("""\
processes:
  - name: a
    command: [sleep, "1000"]
    env: {A: "${ONE}", B: "${TWO}"}
""")
    result = corral.run("target", "set", str(target))
    assert result.returncode == 1
    for name in ("ONE", "TWO"):
        assert result.stderr.count(f"secret '{name}' is not set") == 1, result.stderr


def test_the_note_column_shows_one_current_reason(corral: Corral, tmp_path: Path) -> None:
    spec = tmp_path / "crash.yaml"
    spec.write_text(f"name: crasher\ncommand: [{PY}, -c, 'raise SystemExit(3)']\n"
                    "restart: {backoff_min: 5s, backoff_max: 10s}\n")
    corral.ok("svc", "load", "-f", str(spec))
    wait_for(lambda: corral.status("crasher")["state"] == "backoff", what="a backoff")
    row = next(line for line in corral.ok("svc", "status").splitlines()
               if line.startswith("crasher"))
    note = row.split(None, 10)[-1]
    assert re.fullmatch(r"restart in \d+(\.\d+)?s: exited with code 3 after \d+\.\ds", note), row


def test_corral_variables_expand_in_a_command(corral: Corral, tmp_path: Path) -> None:
    """${SERVICE_PORT_WEB} and ${CORRAL_INSTANCE} in `command` are corral's own variables
    (not secrets); a name that is neither is refused, saying so."""
    port = free_port()
    target = tmp_path / "t.yaml"
    target.write_text(f"""\
processes:
  - name: show
    command: [sh, -c, "echo port=${{SERVICE_PORT_WEB}} index=${{CORRAL_INSTANCE}}; exec sleep 1000"]
    instances: 2
    receives: [web]
services:
  - name: web
    on: 127.0.0.1:{port}
""")
    corral.ok("target", "set", str(target))
    wait_for(lambda: len([ln for ln in corral.log_lines("show") if "port=" in ln]) == 2,
             what="both instances' lines")
    held = held_ports(corral)
    lines = "\n".join(corral.log_lines("show"))
    for index in (0, 1):
        assert f"port={held[f'show/{index}']['web']} index={index}" in lines

    bad = tmp_path / "bad.yaml"
    bad.write_text(target.read_text().replace("${CORRAL_INSTANCE}", "${SERVICE_PORT_API}"))
    result = corral.run("target", "plan", str(bad))
    assert result.returncode == 1
    assert f"{bad}:3: processes[0].command[2]: " in result.stderr
    assert "SERVICE_PORT_API" in result.stderr and "SERVICE_PORT_WEB" in result.stderr
