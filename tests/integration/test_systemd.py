"""corral under systemd: the shipped units, and the notify protocol against a real socket.

The units are checked with `systemd-analyze verify`.  The notify tests stand in for
systemd: they bind a Unix datagram socket, pass it as NOTIFY_SOCKET (with WATCHDOG_USEC)
to the unit's own ExecStart command, and read what arrives, with the sender's
credentials, as systemd does with NotifyAccess=main.
"""

from __future__ import annotations

import configparser
import json
import os
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import PY, pid_alive, python_cmd, wait_for

UNITS = Path(__file__).resolve().parents[2] / "packaging" / "systemd"
INSTALLED = "/usr/local/bin/corral"
#: systemd learnt DelegateSubgroup= in version 254; older ones warn and ignore it.
DELEGATE_SUBGROUP_SINCE = 254


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None,
                                       delimiters=("=",), comment_prefixes=("#", ";"))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNITS / name)
    return parser


def systemd_version() -> int:
    first = subprocess.run(["systemd-analyze", "--version"], capture_output=True, text=True,
                           check=True).stdout.split()
    return int(first[1])


def corral_program() -> str:
    found = shutil.which("corral")
    assert found, "the corral command is not on PATH (pip install -e .)"
    return found


@pytest.mark.parametrize("name", ["corral.service", "corral@.service"])
def test_units_pass_systemd_analyze_verify(name: str, tmp_path: Path) -> None:
    """1. Copy the unit, with ExecStart=/ExecReload= pointing at this host's corral
       (systemd checks that the program exists; it is /usr/local/bin/corral in the image).
    2. `systemd-analyze verify` it (a template as an instance, corral@test.service).
    3. It exits 0 and says nothing, except that systemd before 254 does not know
       DelegateSubgroup= (a warning: the key is ignored there)."""
    text = (UNITS / name).read_text()
    assert INSTALLED in text
    (tmp_path / name).write_text(text.replace(INSTALLED, corral_program()))
    verified = name.replace("@.", "@test.")
    result = subprocess.run(["systemd-analyze", "verify", str(tmp_path / verified)],
                            capture_output=True, text=True, cwd=tmp_path)
    lines = [ln for ln in (result.stdout + result.stderr).splitlines() if ln.strip()]
    if systemd_version() < DELEGATE_SUBGROUP_SINCE:
        lines = [ln for ln in lines if "Unknown key 'DelegateSubgroup'" not in ln]
    assert result.returncode == 0 and not lines, "\n".join(lines)


@pytest.mark.parametrize("name", ["corral.service", "corral@.service"])
def test_units_say_what_corral_needs(name: str) -> None:
    """Type=notify with only the main process (the launcher) notifying, KillMode=mixed (the
    launcher stops services itself, in order), a watchdog, Delegate=yes with the launcher
    in its own leaf and the instances' cgroups beside it, and `corral sup run` as the
    command (with the instance name for the template)."""
    service = unit(name)["Service"]
    assert service["Type"] == "notify"
    assert service["NotifyAccess"] == "main"
    assert service["KillMode"] == "mixed"
    assert service["Delegate"] == "yes"
    assert service["DelegateSubgroup"] == "launcher"
    assert service["WatchdogSec"]
    argv = shlex.split(service["ExecStart"])
    assert argv[:3] == [INSTALLED, "sup", "run"]
    name_arg = argv[argv.index("--override-name") + 1]
    parent = service["Environment"].removeprefix("CORRAL_CGROUP_PARENT=")
    if name == "corral@.service":
        assert name_arg == "%i"
        assert parent.endswith("/system-corral.slice/corral@%i.service")
    else:
        assert parent.endswith("/system.slice/corral.service")
    stop = int(service["TimeoutStopSec"])
    assert stop > 90  # past the launcher's own bound on a graceful stop (90 s)


class Listener:
    """A datagram socket standing in for systemd's notify socket."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(str(path))
        self.received: list[tuple[dict[str, str], int]] = []

    def next(self, timeout: float = 30.0) -> tuple[dict[str, str], int]:
        """The next message's fields and its sender's pid (SCM_CREDENTIALS)."""
        self.sock.settimeout(timeout)
        data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        pid = -1
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = struct.unpack("iII", payload[:12])[0]
        fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
        self.received.append((fields, pid))
        return fields, pid

    def until(self, key: str, value: str | None = None,
              timeout: float = 30.0) -> list[tuple[dict[str, str], int]]:
        """Read until a message has ``key`` (equal to ``value`` if given); all of them."""
        deadline = time.monotonic() + timeout
        seen = []
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no {key}={value or '*'} within {timeout}s: {seen}"
            fields, pid = self.next(remaining)
            seen.append((fields, pid))
            if key in fields and (value is None or fields[key] == value):
                return seen

    def close(self) -> None:
        self.sock.close()


TARGET = """\
processes:
  - name: web
    command: {web}
    instances: 2
"""
#: Prints whether the unit's notify variables reached it, then sleeps; TERM ends it.
WEB = ("import os, signal, sys, time\n"
       "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n"
       "print('env', sorted(k for k in os.environ if k in ('NOTIFY_SOCKET', 'WATCHDOG_USEC', "
       "'WATCHDOG_PID')), flush=True)\n"
       "while True: time.sleep(1)")


@pytest.fixture
def unit_run(tmp_path: Path) -> Iterator[tuple[Listener, subprocess.Popen[bytes], Path]]:
    """corral.service's ExecStart, run as systemd would with NOTIFY_SOCKET and a 0.2 s
    watchdog, on a state directory whose target.yaml wants two instances of `web`."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "target.yaml").write_text(TARGET.format(web=json.dumps(python_cmd(WEB))))
    listener = Listener(tmp_path / "notify.sock")
    service = unit("corral.service")["Service"]
    argv = shlex.split(service["ExecStart"])
    argv[0] = corral_program()
    key, _, value = service["Environment"].partition("=")
    env = {**os.environ, "CORRAL_HOME": str(state), key: value,
           "NOTIFY_SOCKET": str(listener.path), "WATCHDOG_USEC": "200000",
           "CORRAL_CGROUP": "off"}
    with (tmp_path / "launcher.out").open("wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        yield listener, proc, state
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        listener.close()


def status(state: Path) -> list[dict[str, object]]:
    result = subprocess.run([PY, "-m", "corral", "svc", "status", "--json"], capture_output=True,
                            text=True, env={**os.environ, "CORRAL_HOME": str(state)}, timeout=30)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_ready_status_watchdog_and_stopping(
        unit_run: tuple[Listener, subprocess.Popen[bytes], Path]) -> None:
    """1. Run the unit's ExecStart with NOTIFY_SOCKET and WATCHDOG_USEC=200000.
    2. READY=1 arrives once, from the main process (the pid systemd started: NotifyAccess=
       main), with a STATUS= line; by then both instances of `web` are running.
    3. WATCHDOG=1 keeps arriving, from the same pid, also after the supervisor is killed
       (STATUS says it died); the new supervisor's STATUS follows, and no second READY=1.
    4. The services never saw NOTIFY_SOCKET or WATCHDOG_*.
    5. SIGTERM: STOPPING=1, then the unit's main process exits 0."""
    listener, proc, state = unit_run
    seen = listener.until("READY", "1")
    ready, sender = seen[-1]
    assert sender == proc.pid
    # READY=1 means every instance was started (a pid each), not that each passed its
    # readiness (start_seconds, health): a service that never gets ready must not fail
    # the unit's start.  The STATUS line then follows them to up.
    assert ready["STATUS"] in ("1 service, 2 instances: 2 starting",
                               "1 service, 2 instances: 2 up")
    if ready["STATUS"] != "1 service, 2 instances: 2 up":
        listener.until("STATUS", "1 service, 2 instances: 2 up")
    web = status(state)[0]
    assert web["running"] == 2 and all(pid_alive(int(i["pid"])) for i in web["instance_list"])

    pings = [m for m in listener.until("WATCHDOG") if "WATCHDOG" in m[0]]
    assert all(pid == proc.pid for _, pid in pings)
    sup_pid = json.loads(subprocess.run(
        [PY, "-m", "corral", "sup", "status", "--json"], capture_output=True, text=True,
        env={**os.environ, "CORRAL_HOME": str(state)}, check=True).stdout)["supervisor_pid"]
    os.kill(sup_pid, signal.SIGKILL)
    died = listener.until("STATUS")[-1][0]["STATUS"]
    assert died == "the supervisor died (killed by SIGKILL); restarting it"
    after: list[tuple[dict[str, str], int]] = []
    while not (any("WATCHDOG" in f for f, _ in after)
               and any(f.get("STATUS") == "1 service, 2 instances: 2 up" for f, _ in after)):
        after.append(listener.next())
    assert not any("READY" in fields for fields, _ in after)
    assert all(pid == proc.pid for _, pid in after)

    lines = [ln for ln in (state / "logs" / "web.log").read_text().splitlines() if " env " in ln]
    assert len(lines) == 2 and all(ln.endswith("env []") for ln in lines), lines

    proc.send_signal(signal.SIGTERM)
    stopping = listener.until("STOPPING", "1")[-1][0]
    assert stopping["STATUS"] == "stopping services"
    assert proc.wait(60) == 0


def test_status_follows_the_services(
        unit_run: tuple[Listener, subprocess.Popen[bytes], Path]) -> None:
    """After READY=1, stopping `web` and loading another service each change the STATUS=
    line (one line, instance counts by state)."""
    listener, _, state = unit_run
    listener.until("READY", "1")
    env = {**os.environ, "CORRAL_HOME": str(state)}
    subprocess.run([PY, "-m", "corral", "svc", "stop", "web"], env=env, check=True,
                   capture_output=True, timeout=60)
    listener.until("STATUS", "1 service, 2 instances: 2 down")
    subprocess.run([PY, "-m", "corral", "svc", "load", "db", "--",
                    *python_cmd("import time\nwhile True: time.sleep(1)")],
                   env=env, check=True, capture_output=True, timeout=60)
    listener.until("STATUS", "2 services, 3 instances: 1 up, 2 down")


def test_a_missing_notify_socket_is_one_line(tmp_path: Path) -> None:
    """1. NOTIFY_SOCKET names a path where nothing listens, with a fast watchdog.
    2. corral starts its services all the same, and says so in exactly one line.
    3. SIGTERM still stops it with exit code 0."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "target.yaml").write_text(TARGET.format(web=json.dumps(python_cmd(WEB))))
    missing = tmp_path / "no" / "notify.sock"
    out = tmp_path / "launcher.out"
    with out.open("wb") as sink:
        proc = subprocess.Popen([PY, "-m", "corral", "sup", "run", "--state-dir", str(state)],
                                env={**os.environ, "NOTIFY_SOCKET": str(missing),
                                     "WATCHDOG_USEC": "100000"},
                                stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: status(state)[0]["running"] == 2, 30, "web to run")
        # Pings go on every 0.05 s; whatever more came, it is still the one line.
        wait_for(lambda: "NOTIFY_SOCKET" in out.read_text(), 30, "the line")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    lines = [ln for ln in out.read_text().splitlines() if "NOTIFY_SOCKET" in ln]
    assert lines == [f"corral-launcher: cannot notify the service manager at NOTIFY_SOCKET="
                     f"{missing} (No such file or directory); carrying on without it"]
    assert "Traceback" not in out.read_text()
