"""The launcher's own faults: a launcher killed with SIGKILL leaves nothing running twice,
and daemons a service leaves behind never outlive it (without cgroups too)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import PY, Corral, pid_alive, wait_for
from .test_launcher import DirectLauncher
from .test_traffic import Client, free_port, get

pytestmark = pytest.mark.slow

# A database stand-in: it takes an exclusive flock on its data file (a second copy finds
# it locked, writes that down and exits 3), logs a row every 10 ms and, like a real
# server, carries on when its log pipe breaks.
DB = """\
import fcntl, os, sys, time
data, conflicts = sys.argv[1], sys.argv[2]
fd = os.open(data, os.O_RDWR | os.O_CREAT, 0o600)
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
except BlockingIOError:
    with open(conflicts, "a") as f:
        f.write(f"{os.getpid()} found {data} locked\\n")
    sys.exit(3)
n = 0
while True:
    n += 1
    try:
        print("row", n, flush=True)
    except OSError:
        pass
    time.sleep(0.01)
"""

# Answers "pid P" on GET, on SERVICE_PORT_WEB; logs nothing after its start.
APP = """\
import http.server, os
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = f"version 1 pid {os.getpid()}\\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
class S(http.server.ThreadingHTTPServer):
    daemon_threads = True
srv = S(("127.0.0.1", int(os.environ["SERVICE_PORT_WEB"])), H)
print("serving", flush=True)
srv.serve_forever()
"""


def _cmdline(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def running(marker: str) -> list[int]:
    """Live (not zombie) processes whose command line contains ``marker``."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit() and marker in _cmdline(name) and pid_alive(int(name)):
            found.append(int(name))
    return found


class Census(threading.Thread):
    """Counts, as often as it can, the live processes of each kind; keeps the largest
    count seen and the pids seen together then."""

    def __init__(self, kinds: dict[str, str]) -> None:
        super().__init__(daemon=True)
        self.kinds = kinds
        self.most: dict[str, list[int]] = {kind: [] for kind in kinds}
        self.rounds = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            for kind, marker in self.kinds.items():
                pids = running(marker)
                if len(pids) > len(self.most[kind]):
                    self.most[kind] = pids
            self.rounds += 1

    def stop(self) -> dict[str, list[int]]:
        self.done.set()
        self.join(30)
        return self.most


def kill_if_ours(pid: int, where: Path) -> None:
    """KILL ``pid`` if it is alive and its command line names ``where`` (a pid reused by
    someone else's process is left alone)."""
    if pid_alive(pid) and str(where) in _cmdline(str(pid)):
        os.kill(pid, signal.SIGKILL)


@pytest.fixture
def leftovers(tmp_path: Path) -> Iterator[list[int | Path]]:
    """Pids (or files of pids) a failing test may leave running: killed afterwards, by
    pid.  Ask for it before the corral fixture, so that it runs after the corral stopped."""
    found: list[int | Path] = []
    yield found
    for item in found:
        for pid in daemons(item) if isinstance(item, Path) else [item]:
            kill_if_ours(pid, tmp_path)


def test_a_launcher_killed_with_sigkill_never_leaves_services_running_twice(
        leftovers: list[int | Path], corral: Corral, tmp_path: Path) -> None:
    """1. a database (flock on its data file, logging), an app receiving traffic through
    the balancer; 2. kill -9 the launcher under that load; 3. `sup run` again on the same
    state directory: at no moment do two copies of a service, the balancer or the
    supervisor run (the second database never finds its data file locked), the old ones
    are gone, and the new balancer and app bind their ports and serve."""
    db, app = tmp_path / "db.py", tmp_path / "app.py"
    db.write_text(DB)
    app.write_text(APP)
    data, conflicts = tmp_path / "db.data", tmp_path / "conflicts"
    port = free_port()
    target = tmp_path / "target.yaml"
    target.write_text(f"""\
processes:
  - name: db
    command: [{PY}, {db}, {data}, {conflicts}]
  - name: app
    command: [{PY}, {app}]
    receives: [web]
    health: {{http: {{service: web, path: /}}, interval: 100ms}}
services:
  - name: web
    on: 127.0.0.1:{port}
    mode: proxy
""")
    corral.ok("target", "set", str(target))
    wait_for(lambda: corral.status("db")["state"] == "up"
             and corral.status("app")["health"] == "ok", 30, "db and app up")
    wait_for(lambda: get(port).startswith("version 1"), 15, "traffic through the balancer")
    old = corral.sup_status()
    old_pids = {old["launcher_pid"], old["supervisor_pid"], old["balancer"]["pid"],
                corral.status("db")["pid"], corral.status("app")["pid"]}
    leftovers.extend(old_pids)
    client = Client(port)
    client.start()
    census = Census({"db": str(db), "app": str(app),
                     "balancer": f"corral.balancer --control {corral.state_dir}",
                     "supervisor": f"corral.supervisor --state-dir {corral.state_dir}"})
    try:
        wait_for(lambda: client.ok > 20, what="requests flowing")
        wait_for(lambda: len(corral.log_lines("db")) > 20, what="the db logging")
        census.start()
        assert corral.proc is not None
        os.kill(corral.proc.pid, signal.SIGKILL)
        corral.proc.wait()
        rounds = census.rounds
        wait_for(lambda: census.rounds > rounds, what="the census to look")
        corral.start()
        wait_for(lambda: (s := corral.status("db"))["state"] == "up"
                 and s["pid"] not in old_pids, 30, "a new db")
        wait_for(lambda: (s := corral.status("app"))["health"] == "ok"
                 and s["pid"] not in old_pids, 30, "a new app, healthy")
        new_app = corral.status("app")["pid"]
        wait_for(lambda: get(port) == f"version 1 pid {new_app}\n", 30,
                 "the new balancer serving the new app")
    finally:
        most = census.stop()
        client.stop()
    assert not conflicts.exists(), conflicts.read_text()
    assert {kind: len(pids) for kind, pids in most.items()} == {
        "db": 1, "app": 1, "balancer": 1, "supervisor": 1}, most
    assert not [pid for pid in old_pids if pid_alive(pid)]
    new = corral.sup_status()
    assert new["balancer"]["pid"] not in old_pids
    assert "left" in corral.output.read_text()  # the new launcher said what it stopped


# Ignores TERM and INT (writes each down) and goes on: only KILL stops it.
DEAF_TO_TERM = """\
import signal, sys, time
def note(signum, frame):
    with open(sys.argv[1], "a") as f:
        f.write(signal.Signals(signum).name + "\\n")
signal.signal(signal.SIGTERM, note)
signal.signal(signal.SIGINT, note)
print("up", flush=True)
while True:
    time.sleep(1)
"""


def test_leftovers_get_their_own_stop_signal_then_kill(leftovers: list[int | Path],
                                                       corral: Corral, tmp_path: Path) -> None:
    """A service whose stop is `{signal: INT, timeout: 1s}` and that ignores it, left by
    a launcher killed with SIGKILL: the next launcher sends it INT, KILLs it after its
    timeout, says so, and only then starts the new copy."""
    notes, script = tmp_path / "signals", tmp_path / "deaf.py"
    script.write_text(DEAF_TO_TERM)
    spec = tmp_path / "deaf.yaml"
    spec.write_text(f"name: deaf\ncommand: [{PY}, {script}, {notes}]\n"
                    "stop: {signal: INT, timeout: 1s}\n")
    corral.ok("svc", "load", "-f", str(spec))
    old = corral.wait_state("deaf", "up")["pid"]
    leftovers.append(old)
    assert corral.proc is not None
    os.kill(corral.proc.pid, signal.SIGKILL)
    corral.proc.wait()
    assert pid_alive(old)
    corral.start()
    new = corral.wait_state("deaf", "up")["pid"]
    assert new != old and not pid_alive(old)
    assert notes.read_text() == "SIGINT\n"
    said = corral.output.read_text()
    assert "deaf/0 (1)" in said
    killed = re.search(r"on their stop signal, (\d+) killed", said)
    assert killed and int(killed.group(1)) >= 1, said


def test_a_record_naming_a_reused_pid_or_another_boot_touches_nothing(tmp_path: Path) -> None:
    """The record names processes by pid and start time, within one boot: a process that
    now holds a recorded pid but started at another time, or one named by a record from
    another boot, is left alone."""
    bystander = subprocess.Popen(["sleep", "1000"], start_new_session=True)
    try:
        with open(f"/proc/{bystander.pid}/stat") as f:
            start = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        run = tmp_path / "state" / "run"
        run.mkdir(parents=True)
        for boot_id, recorded_start in ((boot, start + 1), ("another-boot", start)):
            child = {"name": "web/0", "pid": bystander.pid, "pgid": bystander.pid,
                     "start": recorded_start, "mark": "web/0@1.2.3", "stop_signal": "KILL",
                     "stop_timeout": 0, "cgroup": None}
            (run / "launcher-children.jsonl").write_text(
                json.dumps({"version": 1, "boot_id": boot_id, "launcher": "1.2"}) + "\n"
                + json.dumps(child) + "\n")
            launcher = DirectLauncher(tmp_path)
            assert launcher.close() == 0
            assert pid_alive(bystander.pid)
            assert "left" not in launcher.stderr.read_text()
            (tmp_path / "relay.sock").unlink()
    finally:
        bystander.kill()
        bystander.wait()


# ------------------------------------------------------------------ daemons (no cgroups)
# The service forks a child that calls setsid() and forks the daemon, which appends its
# pid to a file and sleeps; the middle one exits, so the daemon is re-parented to the
# launcher (its subreaper) and has left the service's process group and session.  With
# "exit" the service waits for the daemon's pid and exits 0 (a program that daemonizes).
DAEMONIZE = """\
import os, sys, time
pids, then = sys.argv[1], sys.argv[2]
before = open(pids).read().count("\\n") if os.path.exists(pids) else 0
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        with open(pids, "a") as f:
            f.write(f"{os.getpid()}\\n")
        time.sleep(1000)
    os._exit(0)
if then == "exit":
    while not os.path.exists(pids) or open(pids).read().count("\\n") == before:
        time.sleep(0.005)
    sys.exit(0)
time.sleep(1000)
"""


def daemons(pidfile: Path) -> list[int]:
    return [int(x) for x in pidfile.read_text().split()] if pidfile.exists() else []


@pytest.fixture
def no_cgroups(corral_factory: Callable[[], Corral]) -> Corral:
    """A corral forced onto process groups (as any non-root corral, or a hybrid host)."""
    corral = corral_factory()
    corral.start(env={"CORRAL_CGROUP": "off"})
    return corral


def load_daemonizer(corral: Corral, tmp_path: Path, then: str = "sleep",
                    restart: str = "{policy: never}") -> Path:
    pidfile = tmp_path / "daemons"
    spec = tmp_path / "daemonizer.yaml"
    command = [PY, "-c", DAEMONIZE, str(pidfile), then]
    spec.write_text(f"name: daemonizer\ncommand: {json.dumps(command)}\n"
                    f"restart: {restart}\nstop: {{timeout: 5s}}\n")
    corral.ok("svc", "load", "-f", str(spec))
    return pidfile


def stray_events(corral: Corral) -> list[dict[str, Any]]:
    lines = corral.ok("events", "--json", "-n", "500").splitlines()
    return [e for e in map(json.loads, lines)
            if e["kind"] == "strays" and e["service"] == "daemonizer"]


@pytest.mark.parametrize("how", ["svc stop", "svc unload", "sup stop"])
def test_a_daemon_that_left_the_process_group_dies_with_its_service(
        leftovers: list[int | Path], no_cgroups: Corral, tmp_path: Path, how: str) -> None:
    """Without cgroups: 1. a service double-forks a setsid() daemon; 2. `svc stop`,
    `svc unload` or `sup stop`; 3. the daemon is gone, and corral says it killed it."""
    corral = no_cgroups
    pidfile = load_daemonizer(corral, tmp_path)
    service = corral.wait_state("daemonizer", "up")["pid"]
    leftovers.append(pidfile)
    daemon = wait_for(lambda: daemons(pidfile), what="the daemon")[0]
    assert os.getsid(daemon) != os.getsid(service), "the daemon must have left the session"
    with open(f"/proc/{daemon}/environ", "rb") as f:
        assert b"CORRAL_INSTANCE_ID=daemonizer/0@" in f.read()
    if how == "sup stop":
        corral.ok("sup", "stop")
        assert corral.proc is not None
        corral.proc.wait(60)
    else:
        corral.ok(*how.split(), "daemonizer")
    wait_for(lambda: not pid_alive(daemon), what="the daemon to die")
    assert not pid_alive(service)
    if how == "sup stop":
        text = corral.output.read_text()
        assert f"daemonizer/0 left 1 process behind (pid {daemon}" in text, text
    else:
        [event] = stray_events(corral)
        assert event["reason"] == f"killed 1 process it left behind (pid {daemon})"


def test_restart_always_of_a_daemonizing_service_leaves_no_strays(
        leftovers: list[int | Path], no_cgroups: Corral, tmp_path: Path) -> None:
    """Without cgroups, a service that daemonizes and exits, with `restart: always`: each
    exit takes its daemon along, so the daemons never pile up; `svc stop` leaves none."""
    corral = no_cgroups
    pidfile = load_daemonizer(corral, tmp_path, then="exit",
                              restart="{policy: always, cooldown: 10ms, backoff_min: 0s, "
                                      "backoff_max: 50ms}")
    leftovers.append(pidfile)
    wait_for(lambda: len(daemons(pidfile)) >= 6, 30, "six restarts")
    wait_for(lambda: len([p for p in daemons(pidfile) if pid_alive(p)]) <= 1, 15,
             "at most the newest daemon alive")
    corral.ok("svc", "stop", "daemonizer")
    wait_for(lambda: not [p for p in daemons(pidfile) if pid_alive(p)],
             what="every daemon to be gone")


def test_a_restart_takes_the_old_daemon_along_and_leaves_the_new_instance_alone(
        leftovers: list[int | Path], no_cgroups: Corral, tmp_path: Path) -> None:
    """Without cgroups: 1. a running service left a setsid() daemon behind; 2. kill -9 its
    main process; 3. the launcher starts it again at once (its standing order) and kills
    the old instance's daemon, which the exit reports; the new instance and its own daemon
    are left alone (the launcher looks for strays after the new process has started)."""
    corral = no_cgroups
    pidfile = load_daemonizer(corral, tmp_path, restart="{policy: always, backoff_min: 0s}")
    leftovers.append(pidfile)
    first = corral.wait_state("daemonizer", "up")["pid"]
    old_daemon = wait_for(lambda: daemons(pidfile), what="the daemon")[0]
    os.kill(first, signal.SIGKILL)
    new_daemon = wait_for(lambda: daemons(pidfile)[1:], 30, "the new instance's daemon")[0]
    wait_for(lambda: not pid_alive(old_daemon), what="the old daemon to die")
    status = corral.status("daemonizer")
    assert status["pid"] != first and pid_alive(status["pid"])
    assert status["restarts"] == 1
    assert pid_alive(new_daemon)
    [event] = wait_for(lambda: stray_events(corral), what="the strays event")
    assert event["reason"] == f"killed 1 process it left behind (pid {old_daemon})"
    corral.ok("svc", "stop", "daemonizer")
    wait_for(lambda: not pid_alive(new_daemon), what="the new daemon to die with its stop")


# ----------------------------------------------------------------- as a non-root user
SYSTEM_PY = "/usr/bin/python3"


@pytest.fixture
def nobody_dir() -> Iterator[Path]:
    """A directory the ``nobody`` user can write, with the launcher runnable as nobody
    (the launcher is stdlib-only: the system Python runs it from this tree)."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None or not os.path.exists(SYSTEM_PY):
        pytest.skip("needs root, setpriv and /usr/bin/python3 to run a launcher as nobody")
    src = str(Path(__file__).resolve().parents[2] / "src")
    probe = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                            SYSTEM_PY, "-c", "import corral.launcher.pid1"],
                           env={"PYTHONPATH": src, "PATH": os.environ["PATH"]},
                           capture_output=True, cwd="/")
    if probe.returncode != 0:
        pytest.skip(f"nobody cannot run the launcher here: {probe.stderr.decode()[-200:]}")
    where = Path(tempfile.mkdtemp(prefix="corral-nobody-"))
    where.chmod(0o777)
    try:
        yield where
    finally:
        shutil.rmtree(where, ignore_errors=True)


def test_as_a_non_root_user_strays_die_with_their_instance(nobody_dir: Path) -> None:
    """A launcher running as nobody (no cgroups): a daemon a service left behind is killed
    when the service is terminated, when its main process exits, and at shutdown."""
    src = str(Path(__file__).resolve().parents[2] / "src")
    launcher = DirectLauncher(
        nobody_dir, python=SYSTEM_PY,
        prefix=("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"),
        env={"PYTHONPATH": src})
    found: list[tuple[int, int]] = []
    try:
        assert "process groups, not cgroups" in wait_for(
            lambda: launcher.stderr.read_text(), what="the launcher's cgroup line")
        for i, then in enumerate(["sleep", "exit", "sleep"]):
            pidfile = nobody_dir / f"daemons{i}"
            reply = launcher.spawn(f"d{i}/0", [SYSTEM_PY, "-c", DAEMONIZE, str(pidfile), then],
                                   cwd=str(nobody_dir))
            assert reply["type"] == "Spawned", reply
            daemon = wait_for(lambda p=pidfile: daemons(p), what="the daemon")[0]
            if then == "sleep":
                assert os.stat(f"/proc/{daemon}").st_uid == 65534
            found.append((reply["pid"], daemon))
        service, daemon = found[0]
        answer = launcher.call({"type": "Terminate", "pid": service, "signal": "TERM",
                                "timeout": 5})
        assert answer["strays"] == [daemon], answer
        wait_for(lambda: not pid_alive(daemon), what="the terminated service's daemon")
        service, daemon = found[1]
        exited = launcher.wait_unasked(lambda msg: msg.get("pid") == service)
        assert exited["exit_code"] == 0 and exited["strays"] == [daemon], exited
        wait_for(lambda: not pid_alive(daemon), what="the exited service's daemon")
        assert pid_alive(found[2][1])
        assert launcher.close() == 0
        wait_for(lambda: not [pid for pair in found for pid in pair if pid_alive(pid)],
                 what="the last daemon to die at shutdown")
    finally:
        launcher.close()
        for pid in [pid for pair in found for pid in pair]:
            kill_if_ours(pid, nobody_dir)  # what a failed run left behind


def test_the_mark_is_in_every_spawn(tmp_path: Path) -> None:
    """Every spawn's environment carries CORRAL_INSTANCE_ID=<name>@<launcher>.<n>, the
    mark its descendants inherit; two spawns of one name get different marks."""
    launcher = DirectLauncher(tmp_path)
    try:
        marks = []
        for _ in range(2):
            out = tmp_path / "mark"
            reply = launcher.spawn("mark/0", ["sh", "-c", f'echo "$CORRAL_INSTANCE_ID" > {out}'])
            launcher.wait_unasked(lambda msg, r=reply: msg.get("pid") == r["pid"])
            marks.append(out.read_text().strip())
        assert marks[0] != marks[1]
        for mark in marks:
            name, _, rest = mark.rpartition("@")
            assert name == "mark/0" and rest.startswith(f"{launcher.proc.pid}."), mark
    finally:
        launcher.close()
