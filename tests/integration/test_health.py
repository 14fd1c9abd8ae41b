"""Health checks: probes, status, readiness through health, restart when unhealthy."""

from __future__ import annotations

import json
import os
import signal
import socket
from pathlib import Path

from .conftest import PY, Corral, wait_for

# An HTTP server whose /health answers 200 until the file `sick` exists in its cwd.
SERVER = """
import http.server, os, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        code = 500 if os.path.exists('sick') else 200
        self.send_response(code); self.end_headers(); self.wfile.write(b'ok')
    def log_message(self, *a): pass
print('listening', flush=True)
http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def load(corral: Corral, tmp_path: Path, name: str, body: str) -> None:
    spec = tmp_path / f"{name}.yaml"
    spec.write_text(f"name: {name}\n" + body)
    corral.ok("svc", "load", "-f", str(spec))


def events(corral: Corral, name: str) -> list[dict]:
    return [json.loads(x) for x in
            corral.ok("events", "--service", name, "--json", "-n", "500").splitlines()]


def test_http_health_gates_readiness_and_restarts_when_unhealthy(corral: Corral,
                                                                  tmp_path: Path) -> None:
    """With `readiness: health` an instance is `starting` until its HTTP check passes, then
    `up` with health ok; when the check keeps failing it is restarted, with the reason."""
    port = free_port()
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    load(corral, tmp_path, "api",
         f"command: [{PY}, {script}, '{port}']\ncwd: {tmp_path}\nreadiness: health\n"
         f"health: {{http: {{port: {port}, path: /health}}, interval: 200ms, timeout: 1s,"
         f" retries: 2}}\n")
    up = corral.wait_state("api", "up")
    assert up["health"] == "ok"
    first = up["pid"]
    (tmp_path / "sick").write_text("")
    try:
        wait_for(lambda: any(e["kind"] == "health" and "unhealthy" in e["reason"]
                             for e in events(corral, "api")), what="an unhealthy event")
        restarted = wait_for(lambda: (s := corral.status("api"))["pid"] not in (None, first)
                             and s, what="a restart of the unhealthy instance")
    finally:
        (tmp_path / "sick").unlink()
    assert restarted["restarts"] >= 1
    assert corral.wait_state("api", "up")["health"] == "ok"


def test_exec_check_codes_show_in_status(corral: Corral, tmp_path: Path) -> None:
    """With `exec_codes: habitat` an exec check's exit code maps to Habitat's health: 1 is
    warning, 2 critical."""
    flag = tmp_path / "code"
    flag.write_text("1")
    load(corral, tmp_path, "job",
         "command: [sleep, '1000']\n"
         f"health: {{exec: [sh, -c, 'exit $(cat {flag})'], exec_codes: habitat,"
         " interval: 200ms, retries: 1000, restart_on_unhealthy: false}\n")
    wait_for(lambda: corral.status("job")["health"] == "warning", what="warning")
    flag.write_text("2")
    wait_for(lambda: corral.status("job")["health"] == "critical", what="critical")
    flag.write_text("0")
    wait_for(lambda: corral.status("job")["health"] == "ok", what="ok")


def test_a_hanging_check_delays_nothing_else(corral: Corral, tmp_path: Path) -> None:
    """While one service's check hangs, another killed service is restarted at once."""
    load(corral, tmp_path, "hangs",
         "command: [sleep, '1000']\n"
         "health: {exec: [sleep, '1000'], interval: 1s, timeout: 1h, retries: 3}\n")
    corral.ok("svc", "load", "other", "--", "sleep", "1000")
    wait_for(lambda: any(p.endswith("sleep 1000") for p in _cmdlines()), what="the check")
    pid = corral.status("other")["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: corral.status("other")["pid"] not in (None, pid),
             what="the other service's restart")
    corral.wait_state("other", "up")
    assert corral.status("hangs")["health"] == "unknown"  # its first check is still running


def test_tcp_check_and_a_dead_port(corral: Corral, tmp_path: Path) -> None:
    """1. A tcp check is ok while the port accepts;
    2. critical once nothing listens, and with `restart_on_unhealthy: false` the instance is
       shown unhealthy but left running;
    3. once the port accepts again it is healthy again: the same process, never restarted."""
    port = free_port()
    load(corral, tmp_path, "listener",
         f"command: [{PY}, -c, 'import socket,time; s=socket.socket(); "
         f"s.bind((\"127.0.0.1\", {port})); s.listen(); time.sleep(1000)']\n"
         f"health: {{tcp: {{port: {port}}}, interval: 200ms}}\n")
    wait_for(lambda: corral.status("listener")["health"] == "ok", what="tcp ok")
    port, script = free_port(), tmp_path / "closes.py"
    closed, reopened = tmp_path / "closed", tmp_path / "reopened"
    script.write_text("import os, socket, sys, time\n"
                      "def listen():\n"
                      "    s = socket.socket()\n"
                      "    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
                      "    s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen(); return s\n"
                      "s = listen()\n"
                      "while not os.path.exists(sys.argv[2]): time.sleep(0.05)\n"
                      "s.close()\n"
                      "while not os.path.exists(sys.argv[3]): time.sleep(0.05)\n"
                      "s = listen(); time.sleep(1000)\n")
    load(corral, tmp_path, "closes",
         f"command: [{PY}, {script}, '{port}', {closed}, {reopened}]\n"
         f"health: {{tcp: {{port: {port}}}, interval: 200ms, restart_on_unhealthy: false}}\n")
    first = wait_for(lambda: (s := corral.status("closes"))["health"] == "ok" and s["pid"],
                     what="tcp ok")
    closed.write_text("")
    wait_for(lambda: corral.status("closes")["health"] == "critical", what="tcp critical")
    shown = corral.wait_state("closes", "unhealthy")
    assert shown["pid"] == first
    reopened.write_text("")
    healed = wait_for(lambda: (s := corral.status("closes"))["health"] == "ok"
                      and s["state"] == "up" and s, what="tcp ok again")
    assert (healed["pid"], healed["restarts"]) == (first, 0)


def _cmdlines() -> list[str]:
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                text = Path(f"/proc/{pid}/cmdline").read_text()
                out.append(text.replace("\0", " ").strip())
            except OSError:
                pass
    return out


def test_notify_readiness_with_systemd_notify(corral: Corral, tmp_path: Path) -> None:
    """With `readiness: notify` an instance is `starting` until it sends READY=1 to
    NOTIFY_SOCKET; the real `systemd-notify --ready` works."""
    flag = tmp_path / "go"
    load(corral, tmp_path, "daemon",
         f"command: 'while [ ! -f {flag} ]; do sleep 0.05; done; systemd-notify --ready;"
         " exec sleep 1000'\nreadiness: notify\n")
    status = corral.status("daemon")
    assert status["state"] == "starting" and status["pid"] is not None
    flag.write_text("")
    up = corral.wait_state("daemon", "up")
    assert "READY=1" in up["reason"]


def test_notify_readiness_survives_a_restart(corral: Corral, tmp_path: Path) -> None:
    """After a crash the restarted instance reports readiness on the same socket."""
    load(corral, tmp_path, "pinger",
         f"command: [{PY}, -c, 'import os,socket,time; s=socket.socket(socket.AF_UNIX,"
         " socket.SOCK_DGRAM); a=os.environ[\"NOTIFY_SOCKET\"]; s.sendto(b\"READY=1\\n\","
         " \"\\0\"+a[1:]); time.sleep(1000)']\nreadiness: notify\n")
    first = corral.wait_state("pinger", "up")["pid"]
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: (s := corral.status("pinger"))["pid"] not in (None, first)
             and s["state"] == "up", what="the restarted instance to be ready")


def test_wait_returns_when_ready_and_fails_with_the_last_lines(corral: Corral,
                                                               tmp_path: Path) -> None:
    """`svc load --wait` returns once the service is ready; one that never gets ready
    fails after the timeout with a clear line and its last log lines."""
    port = free_port()
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    load_spec = tmp_path / "ok.yaml"
    load_spec.write_text(f"name: ok\ncommand: [{PY}, {script}, '{port}']\ncwd: {tmp_path}\n"
                         f"readiness: health\nhealth: {{http: {{port: {port}}}, interval: 100ms}}\n")
    out = corral.ok("svc", "load", "-f", str(load_spec), "--wait", "30")
    assert "added" in out
    assert corral.status("ok")["state"] == "up"
    never = tmp_path / "never.yaml"
    never.write_text(f"name: never\ncommand: [{PY}, -u, -c, 'import time; print(\"booting\");"
                     " time.sleep(1000)']\nreadiness: notify\n")
    result = corral.run("svc", "load", "-f", str(never), "--wait", "1")
    assert result.returncode == 1
    first = result.stderr.splitlines()[0]
    assert first.startswith("corral: never did not become ready within 1s (starting")
    assert "booting" in result.stderr


def test_watchdog_restarts_a_process_that_stops_pinging(corral: Corral, tmp_path: Path) -> None:
    """With `watchdog`, a process that stops sending WATCHDOG=1 is restarted with an event;
    one that keeps pinging is left alone."""
    script = tmp_path / "dog.py"
    script.write_text(
        "import os, socket, sys, time\n"
        "s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
        "addr = '\\0' + os.environ['NOTIFY_SOCKET'][1:]\n"
        "assert os.environ['WATCHDOG_USEC'] == '500000'\n"
        "pings = int(sys.argv[1])\n"
        "while True:\n"
        "    if pings:\n"
        "        s.sendto(b'WATCHDOG=1', addr); pings -= 1\n"
        "    time.sleep(0.1)\n")
    load(corral, tmp_path, "stuck", f"command: [{PY}, {script}, '3']\nwatchdog: 500ms\n")
    load(corral, tmp_path, "alive", f"command: [{PY}, {script}, '1000000']\nwatchdog: 500ms\n")
    # Its first pid, from its first spawn: by the time a status is read (after loading
    # "alive", on a loaded machine) it may already be restarting, with no pid.
    first = next(e for e in events(corral, "stuck") if e["kind"] == "spawn")["pid"]
    event = wait_for(lambda: [e for e in events(corral, "stuck") if e["kind"] == "watchdog"],
                     30, "a watchdog event")[0]
    assert "WATCHDOG=1" in event["reason"] and event["pid"] == first
    wait_for(lambda: corral.status("stuck")["pid"] not in (None, first), 30, "a restart")
    assert not [e for e in events(corral, "alive") if e["kind"] == "watchdog"]
    assert corral.status("alive")["restarts"] == 0
