"""The launcher on its own: the state-dir lock, the supervisor exit-code and signal
contracts (with a stand-in supervisor), PID 1 duties."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from corral.protocol import framing
from corral.protocol import messages as m

from .conftest import PY, Corral, pid_alive, wait_for

FAKE = Path(__file__).with_name("fake_supervisor.py")


def launcher(tmp_path: Path, codes: str, spawn: list[str] | None = None,
             wait: bool = False) -> tuple[subprocess.Popen[bytes], Path]:
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "exit_codes").write_text(codes)
    if spawn:
        (fake / "spawn").write_text(json.dumps(spawn))
    if wait:
        (fake / "wait").write_text("")
    env = {**os.environ, "CORRAL_SUP_BINARY": f"{PY} {FAKE}", "FAKE_SUP_DIR": str(fake)}
    with (tmp_path / "launcher.err").open("wb") as err:
        proc = subprocess.Popen([PY, "-m", "corral", "sup", "run", "--state-dir",
                                 str(tmp_path / "state")], env=env, stderr=err)
    return proc, fake


def spawned_pid(fake: Path) -> int:
    reply = wait_for(lambda: (fake / "spawned").exists() and (fake / "spawned").read_text(),
                     what="the fake supervisor's spawn")
    return int(json.loads(reply)["pid"])


def test_second_launcher_on_same_state_dir_is_refused(corral: Corral) -> None:
    """A second `sup run` on a busy state directory prints one line, exits non-zero, and
    the first launcher runs on untouched."""
    before = corral.sup_status()
    result = subprocess.run([PY, "-m", "corral", "sup", "run", "--state-dir",
                             str(corral.state_dir)], capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "already running" in lines[0] and str(corral.state_dir) in lines[0]
    assert corral.sup_status()["launcher_pid"] == before["launcher_pid"]
    assert corral.sup_status()["supervisor_pid"] == before["supervisor_pid"]


def test_supervisor_exit_84_stops_services_and_launcher_exits_0(tmp_path: Path) -> None:
    """Exit 84 from the supervisor means done: services are stopped, the launcher exits 0."""
    proc, fake = launcher(tmp_path, "84", spawn=["sleep", "1000"], wait=True)
    pid = spawned_pid(fake)
    assert pid_alive(pid)
    (fake / "wait").unlink()
    assert proc.wait(30) == 0
    assert not pid_alive(pid)


def test_supervisor_exit_86_is_fatal_and_the_launcher_exits_86(tmp_path: Path) -> None:
    """Exit 86 from the supervisor stops services and the launcher exits 86."""
    proc, fake = launcher(tmp_path, "86", spawn=["sleep", "1000"], wait=True)
    pid = spawned_pid(fake)
    (fake / "wait").unlink()
    assert proc.wait(30) == 86
    assert not pid_alive(pid)


@pytest.mark.parametrize("code", ["0", "3", "-9"])
def test_other_supervisor_exits_restart_it_and_leave_services_alone(tmp_path: Path,
                                                                     code: str) -> None:
    """Any other exit (0 included, or a crash) starts a new supervisor; services keep running."""
    proc, fake = launcher(tmp_path, f"{code} -1", spawn=["sleep", "1000"], wait=True)
    pid = spawned_pid(fake)
    first = int((fake / "starts").read_text().split()[0])
    if code == "-9":
        os.kill(first, signal.SIGKILL)
    else:
        (fake / "wait").unlink()
    wait_for(lambda: (fake / "greeted2").exists(), what="a second supervisor")
    assert pid_alive(pid), "the service must survive a supervisor restart"
    proc.send_signal(signal.SIGTERM)  # the second supervisor answers Shutdown with 84
    assert proc.wait(30) == 0
    assert not pid_alive(pid)


def test_term_asks_the_supervisor_to_shut_down(tmp_path: Path) -> None:
    """SIGTERM to the launcher sends Shutdown to the supervisor, which exits 84 -> exit 0."""
    proc, fake = launcher(tmp_path, "-1", spawn=["sleep", "1000"])
    pid = spawned_pid(fake)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    assert (fake / "shutdown").read_text() == "yes"
    assert not pid_alive(pid)


def test_hup_is_forwarded_to_the_supervisor(tmp_path: Path) -> None:
    """SIGHUP to the launcher reaches the supervisor."""
    proc, fake = launcher(tmp_path, "-1")
    wait_for(lambda: (fake / "starts").exists(), what="the supervisor to start")
    wait_for(lambda: (proc.send_signal(signal.SIGHUP), (fake / "hup").exists())[1],
             what="the supervisor to see SIGHUP", interval=0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0


def test_hup_while_an_incompatible_supervisor_exits_tries_again(tmp_path: Path) -> None:
    """A supervisor that cannot work with this launcher or state says so, closes its API and
    exits; a SIGHUP sent in that moment (after a compatible corral was installed) is the
    cue to try again, not lost to the process on its way out."""
    proc, fake = launcher(tmp_path, f"{m.EXIT_INCOMPATIBLE} -1", wait=True)
    wait_for(lambda: (fake / "ready").exists(), what="the supervisor to be greeted")
    proc.send_signal(signal.SIGHUP)
    wait_for(lambda: (fake / "hup").exists(), what="the supervisor to see SIGHUP")
    (fake / "wait").unlink()  # now it exits: it cannot work with this launcher
    wait_for(lambda: len((fake / "starts").read_text().split()) == 2,
             what="a second supervisor")
    assert "until the launcher gets SIGHUP" not in (tmp_path / "launcher.err").read_text()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0


def test_launcher_as_pid1_reaps_orphans(tmp_path: Path) -> None:
    """Run as PID 1 of a new PID namespace, the launcher reaps orphaned grandchildren:
    no zombie stays, and the service's own exit is still reported."""
    unshare = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"])
    if unshare.returncode != 0:
        pytest.skip("cannot create a PID namespace here")
    # The service forks 20 children that leave its process group (as daemons do, so the
    # launcher's group sweep does not touch them), records their pids, and exits: they are
    # re-parented to PID 1 (the launcher), and exit a moment later.
    pids = tmp_path / "orphans"
    script = ("import os,time\n"
              "kids=[]\n"
              "for i in range(20):\n"
              "    pid=os.fork()\n"
              "    if pid==0:\n"
              "        os.setsid(); time.sleep(0.3); os._exit(0)\n"
              "    kids.append(pid)\n"
              f"open({str(pids)!r},'w').write(' '.join(map(str,kids)))\n"
              "os._exit(7)\n")
    # The probe, inside the namespace, polls (with a deadline) until every orphan's /proc
    # entry is gone: a zombie keeps its entry until someone reaps it.
    probe = ("import os,time\n"
             f"p={str(pids)!r}\n"
             "deadline=time.monotonic()+20\n"
             "while not os.path.exists(p) and time.monotonic()<deadline: time.sleep(0.05)\n"
             "kids=open(p).read().split()\n"
             "left=kids\n"
             "while left and time.monotonic()<deadline:\n"
             "    left=[k for k in kids if os.path.exists(f'/proc/{k}')]; time.sleep(0.05)\n"
             "print('ORPHANS', len(kids), 'LEFT', len(left), flush=True)\n")
    state = tmp_path / "state"
    env = {**os.environ, "CORRAL_HOME": str(state)}
    proc = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", PY, "-m", "corral",
                             "sup", "run", "--state-dir", str(state)], env=env,
                            start_new_session=True)
    try:
        c = Corral(state)
        wait_for(c.answers, 30, "the API")
        assert c.sup_status()["launcher_pid"] == 1
        c.ok("svc", "load", "forker", "--restart", "never", "--", PY, "-c", script)
        c.ok("svc", "load", "probe", "--restart", "never", "--", PY, "-c", probe)
        wait_for(lambda: any("ORPHANS" in line for line in c.log_lines("probe")), 30,
                 "the orphan probe")
        assert any(line.endswith("ORPHANS 20 LEFT 0") for line in c.log_lines("probe"))
        forker = c.status("forker")
        assert forker["last_exit"]["exit_code"] == 7
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_no_supervisor_running_gives_a_clear_error(tmp_path: Path) -> None:
    """With no supervisor, the CLI says where it looked and how to start one (exit 111)."""
    state = tmp_path / "nothing-here"
    result = subprocess.run([PY, "-m", "corral", "--state-dir", str(state), "svc", "status"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 111
    assert result.stderr.count("\n") == 1
    assert str(state) in result.stderr and "corral sup run" in result.stderr
    assert "Traceback" not in result.stderr


def test_api_socket_is_private(corral: Corral) -> None:
    """The local API socket is mode 0600."""
    assert (corral.state_dir / "api.sock").stat().st_mode & 0o777 == 0o600
    _ = sys  # keep the import used for PY


# ------------------------------------------------------------------ protocol, first hand
# A stand-in supervisor that relays the launcher's socket to a Unix socket the test
# connects to, so a test speaks the launcher protocol itself (Spawn, Listen, List...).
# It exits 84 (done) when the test hangs up, so the launcher stops everything and exits 0;
# a message still on its way to a test that hung up (an Exited) counts as the hang-up.
RELAY = """
import os, selectors, socket, sys
path = os.environ["RELAY_SOCK"]
up = socket.socket(fileno=int(os.environ["CORRAL_LAUNCHER_FD"]))
try:
    os.unlink(path)
except FileNotFoundError:
    pass
srv = socket.socket(socket.AF_UNIX)
srv.bind(path + ".tmp")
os.rename(path + ".tmp", path)
srv.listen(1)
down, _ = srv.accept()
sel = selectors.DefaultSelector()
sel.register(up, selectors.EVENT_READ, down)
sel.register(down, selectors.EVENT_READ, up)
while True:
    for key, _ in sel.select():
        try:
            data = key.fileobj.recv(1 << 20)
        except ConnectionResetError:
            data = b""
        if not data:
            sys.exit(84 if key.fileobj is down else 0)
        try:
            key.data.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            sys.exit(84 if key.data is down else 0)
"""


class DirectLauncher:
    """A real launcher whose "supervisor" is the test, through :data:`RELAY`."""

    def __init__(self, tmp_path: Path, env: dict[str, str] | None = None,
                 pass_fds: tuple[int, ...] = (), python: str = PY,
                 prefix: tuple[str, ...] = ()) -> None:
        relay = tmp_path / "relay.py"
        relay.write_text(RELAY)
        self.sock_path = tmp_path / "relay.sock"
        self.state = tmp_path / "state"
        self.stderr = tmp_path / "launcher.err"
        full = {**os.environ, "CORRAL_SUP_BINARY": f"{python} {relay}",
                "RELAY_SOCK": str(self.sock_path), **(env or {})}
        with self.stderr.open("wb") as err:
            self.proc = subprocess.Popen([*prefix, python, "-m", "corral.launcher",
                                          "--state-dir", str(self.state)], env=full, stderr=err,
                                         start_new_session=True, pass_fds=pass_fds)
        self.unasked: list[dict[str, Any]] = []
        self._read: list[dict[str, Any]] = []  # decoded, not yet looked at
        self.sock: socket.socket | None = None
        self._ids = 0
        self.connect()

    def connect(self) -> dict[str, Any]:
        """(Re)connect through the relay and say Hello; return HelloOk."""
        if self.sock is not None:
            self.sock.close()
        def attempt() -> socket.socket | None:
            s = socket.socket(socket.AF_UNIX)
            try:
                s.connect(str(self.sock_path))
            except OSError:
                s.close()
                return None
            return s
        self.sock = wait_for(attempt, 30, "the relay to listen")
        self.decoder = framing.Decoder()
        self._read = []
        return self.call({"type": "Hello", "version": 1})

    def call(self, message: dict[str, Any], timeout: float = 30) -> dict[str, Any]:
        """Send a request, return its reply; unasked messages are kept in ``unasked``."""
        assert self.sock is not None
        self._ids += 1
        message = {**message, "id": self._ids}
        self.sock.sendall(framing.encode(message))
        return self._wait(lambda msg: msg.get("id") == message["id"], timeout)

    def wait_unasked(self, predicate: Callable[[dict[str, Any]], bool],
                     timeout: float = 30) -> dict[str, Any]:
        """Wait for an unasked message (``Exited``) that matches ``predicate``."""
        for msg in self.unasked:
            if predicate(msg):
                return msg
        return self._wait(lambda msg: msg.get("id") is None and predicate(msg), timeout)

    def _wait(self, match: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
        assert self.sock is not None
        self.sock.settimeout(timeout)
        while True:
            if not self._read:  # messages that came with an earlier match come first
                data = self.sock.recv(1 << 20)
                assert data, "the launcher hung up"
                self._read.extend(self.decoder.feed(data))
            while self._read:
                msg = self._read.pop(0)
                if msg.get("id") is None:
                    self.unasked.append(msg)
                    if msg.get("type") == "Exited":
                        self.sock.sendall(framing.encode({"type": "Ack", "seq": msg["seq"]}))
                if match(msg):
                    return msg

    def spawn(self, name: str, argv: list[str], **extra: Any) -> dict[str, Any]:
        log = {"path": str(self.state / "logs" / f"{name.split('/')[0]}.log")}
        return self.call({"type": "Spawn", "name": name, "argv": argv,
                          "env": {"PATH": os.environ["PATH"]}, "cwd": None, "log": log,
                          **extra})

    def close(self) -> int:
        """Hang up (the relay exits 84), and return the launcher's exit code."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait()


def test_direct_launcher_spawns_lists_and_reports_exits(tmp_path: Path) -> None:
    """The relay harness itself: a Spawn runs, List shows it, its exit is reported."""
    launcher = DirectLauncher(tmp_path)
    try:
        reply = launcher.spawn("one/0", [PY, "-c", "import sys; sys.exit(3)"])
        assert reply["type"] == "Spawned", reply
        exited = launcher.wait_unasked(lambda msg: msg.get("pid") == reply["pid"])
        assert exited["exit_code"] == 3
        assert launcher.call({"type": "List"})["children"] == []
    finally:
        assert launcher.close() == 0


def test_fds_the_launcher_inherited_do_not_reach_services(tmp_path: Path) -> None:
    """Services start with stdin, stdout and stderr only, whatever the launcher's parent
    left open (here a pipe whose write end would keep a reader waiting forever)."""
    keep_r, keep_w = os.pipe()
    launcher = DirectLauncher(tmp_path, pass_fds=(keep_w,))
    try:
        os.close(keep_w)
        reply = launcher.spawn("fds/0", ["sh", "-c", "ls /proc/self/fd > fds.txt"],
                               cwd=str(tmp_path))
        assert reply["type"] == "Spawned", reply
        exited = launcher.wait_unasked(lambda msg: msg.get("pid") == reply["pid"])
        assert exited["exit_code"] == 0
        listed = sorted(int(fd) for fd in (tmp_path / "fds.txt").read_text().split())
        assert listed == [0, 1, 2, 3]  # 3: the directory ls is reading
    finally:
        assert launcher.close() == 0
        os.close(keep_r)


def test_the_launcher_runs_batch_and_what_it_starts_does_not(corral: Corral) -> None:
    """The launcher never preempts a dying service (SCHED_BATCH); the supervisor, the
    services and their restarts run the default policy."""
    corral.ok("svc", "load", "plain", "--", "sleep", "4243")
    first = corral.wait_state("plain", "up")["pid"]
    status = corral.sup_status()
    assert os.sched_getscheduler(status["launcher_pid"]) == os.SCHED_BATCH
    assert os.sched_getscheduler(status["supervisor_pid"]) == os.SCHED_OTHER
    assert os.sched_getscheduler(first) == os.SCHED_OTHER
    os.kill(first, signal.SIGKILL)
    again = wait_for(lambda: (pid := corral.status("plain").get("pid")) not in (None, first)
                     and pid, 15, "the restart")
    assert os.sched_getscheduler(again) == os.SCHED_OTHER


def test_a_launcher_told_to_inherit_keeps_its_policy(corral_factory: Callable[[], Corral]) -> None:
    """``CORRAL_LAUNCHER_SCHED=inherit``: the launcher keeps the default policy."""
    corral = corral_factory()
    corral.start(env={"CORRAL_LAUNCHER_SCHED": "inherit"})
    assert os.sched_getscheduler(corral.sup_status()["launcher_pid"]) == os.SCHED_OTHER

