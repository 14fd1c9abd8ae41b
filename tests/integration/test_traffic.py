"""Services and the load balancer through a real `corral sup run`: ports, health-gated
cutover with draining, zero failed requests through rollouts, restarts and supervisor
crashes, socket mode, and addresses that cannot be bound."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from .conftest import PY, Corral, pid_alive, wait_for

pytestmark = pytest.mark.slow

# Answers "version V pid P" on GET; port from SERVICE_PORT_WEB, or the socket systemd-style.
APP = """\
import http.server, os, socket, sys
V = os.environ.get("VERSION", "?")
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = f"version {V} pid {os.getpid()}\\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
class S(http.server.ThreadingHTTPServer):
    daemon_threads = True
if os.environ.get("LISTEN_FDS"):
    assert os.environ["LISTEN_PID"] == str(os.getpid())
    srv = S(("127.0.0.1", 0), H, bind_and_activate=False)
    srv.socket = socket.socket(fileno=3)
else:
    srv = S(("127.0.0.1", int(os.environ["SERVICE_PORT_WEB"])), H)
print("serving", V, flush=True)
srv.serve_forever()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def target(app: Path, port: int, version: str, *, instances: int = 2, mode: str = "proxy",
           extra: str = "", drain: str = "5s") -> str:
    health = (f"{{tcp: {{port: {port}}}, interval: 100ms}}" if mode == "socket"
              else "{http: {service: web, path: /}, interval: 100ms}")
    return f"""\
processes:
  - name: app
    command: [{PY}, {app}]
    env: {{VERSION: "{version}"}}
    instances: {instances}
    receives: [web]
    health: {health}
    rollout_timeout: 10s
{extra}services:
  - name: web
    on: 127.0.0.1:{port}
    mode: {mode}
    drain_timeout: {drain}
"""


class Client(threading.Thread):
    """Sends requests, a new connection each, until stopped; counts answers and failures."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.ok = 0
        self.failures: list[str] = []
        self.versions: dict[str, int] = {}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                conn.request("GET", "/")
                body = conn.getresponse().read().decode()
                conn.close()
                self.ok += 1
                version = body.split()[1]
                self.versions[version] = self.versions.get(version, 0) + 1
            except OSError as exc:
                self.failures.append(repr(exc))

    def stop(self) -> None:
        self.done.set()
        self.join(30)


def get(port: int) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/")
    body = conn.getresponse().read().decode()
    conn.close()
    return body


def healthy_pids(corral: Corral) -> list[int]:
    svc = corral.status("app")
    return sorted(i["pid"] for i in svc["instance_list"]
                  if i["state"] == "up" and i["health"] == "ok" and not i.get("retiring"))


@pytest.fixture
def app(tmp_path: Path) -> Path:
    path = tmp_path / "app.py"
    path.write_text(APP)
    return path


def start_app(corral: Corral, tmp_path: Path, app: Path, port: int, **kw: Any) -> Path:
    file = tmp_path / "v1.yaml"
    file.write_text(target(app, port, "1", **kw))
    corral.ok("target", "set", str(file))
    wait_for(lambda: len(healthy_pids(corral)) == kw.get("instances", 2), 30, "app healthy")
    wait_for(lambda: get(port).startswith("version 1"), 15, "traffic through the service")
    return file


def test_rollout_and_restart_under_load_lose_no_request(corral: Corral, tmp_path: Path,
                                                        app: Path) -> None:
    port = free_port()
    start_app(corral, tmp_path, app, port)
    # Each instance has its own port, announced in SERVICE_PORT_WEB.
    seen = {get(port).split()[3] for _ in range(10)}
    assert len(seen) == 2                      # round-robin reaches both instances

    client = Client(port)
    client.start()
    try:
        wait_for(lambda: client.ok > 20, what="requests flowing")
        v2 = tmp_path / "v2.yaml"
        v2.write_text(target(app, port, "2"))
        corral.ok("target", "set", str(v2))
        wait_for(lambda: client.versions.get("2", 0) > 20, what="version 2 answering")
        before = healthy_pids(corral)
        corral.ok("svc", "restart", "app")
        after = healthy_pids(corral)
        assert not set(before) & set(after)
        count = client.ok
        wait_for(lambda: client.ok > count + 20, what="more requests after the restart")
    finally:
        client.stop()
    assert client.failures == []
    assert set(client.versions) == {"1", "2"}
    evs = corral.ok("events", "--service", "app", "-n", "1000")
    assert "drain" in evs


def test_supervisor_killed_ten_times_drops_nothing(corral: Corral, tmp_path: Path,
                                                   app: Path) -> None:
    port = free_port()
    start_app(corral, tmp_path, app, port)
    balancer = corral.sup_status()["balancer"]["pid"]
    client = Client(port)
    client.start()
    try:
        for _ in range(10):
            supervisor = corral.sup_status()["supervisor_pid"]
            os.kill(supervisor, signal.SIGKILL)
            wait_for(lambda s=supervisor: corral.answers()
                     and corral.sup_status()["supervisor_pid"] != s, 30, "a new supervisor")
            count = client.ok
            wait_for(lambda c=count: client.ok > c + 5, what="requests still flowing")
    finally:
        client.stop()
    assert client.failures == []
    assert corral.sup_status()["balancer"]["pid"] == balancer     # never restarted
    assert client.versions == {"1": client.ok}


def test_new_version_never_healthy_never_gets_a_connection(corral: Corral, tmp_path: Path,
                                                          app: Path) -> None:
    port = free_port()
    start_app(corral, tmp_path, app, port, instances=1)
    broken = tmp_path / "broken.py"
    broken.write_text(APP.replace("self.send_response(200)", "self.send_response(500)"))
    bad = tmp_path / "bad.yaml"
    bad.write_text(target(broken, port, "bad", instances=1).replace("rollout_timeout: 10s",
                                                                    "rollout_timeout: 2s"))
    client = Client(port)
    client.start()
    try:
        result = corral.run("target", "set", str(bad))
    finally:
        client.stop()
    assert result.returncode == 1 and "not healthy within 2s" in result.stderr
    assert client.failures == []
    assert set(client.versions) == {"1"}      # the bad version got not a single connection


def test_a_long_connection_is_drained_not_cut(corral: Corral, tmp_path: Path,
                                              app: Path) -> None:
    port = free_port()
    start_app(corral, tmp_path, app, port, instances=1, drain="20s")
    held = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    held.request("GET", "/")
    first = held.getresponse().read().decode()
    v2 = tmp_path / "v2.yaml"
    v2.write_text(target(app, port, "2", instances=1, drain="20s"))
    corral.ok("target", "set", "--no-wait", str(v2))
    wait_for(lambda: "drain" not in corral.ok("events", "-n", "5") and
             json.loads(corral.ok("target", "status", "--json"))["rollout"]["steps"][0]
             ["detail"].startswith("instance 0: new pid"), 30, "the old instance draining")
    assert get(port).startswith("version 2")      # new connections go to the new version
    held.request("GET", "/")                       # the held one still reaches the old one
    assert held.getresponse().read().decode() == first
    held.close()
    wait_for(lambda: json.loads(corral.ok("target", "status", "--json"))["rollout"]["phase"]
             == "done", 30, "the rollout to finish once the connection closed")


def test_socket_mode_hands_the_listening_socket_to_every_instance(corral: Corral,
                                                                  tmp_path: Path,
                                                                  app: Path) -> None:
    port = free_port()
    start_app(corral, tmp_path, app, port, mode="socket")
    pids = {get(port).split()[3] for _ in range(40)}
    assert pids <= {str(p) for p in healthy_pids(corral)} and pids
    # The socket is the launcher's: it outlives a supervisor crash and the instances.
    supervisor = corral.sup_status()["supervisor_pid"]
    os.kill(supervisor, signal.SIGKILL)
    wait_for(lambda: corral.answers() and corral.sup_status()["supervisor_pid"] != supervisor,
             30, "a new supervisor")
    assert get(port).startswith("version 1")


def test_an_address_that_cannot_be_bound_refuses_the_target(corral: Corral, tmp_path: Path,
                                                            app: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for mode in ("proxy", "socket"):
            file = tmp_path / f"{mode}.yaml"
            file.write_text(target(app, port, "1", mode=mode))
            result = corral.run("target", "set", str(file))
            assert result.returncode == 1
            assert f"{file}:" in result.stderr and "services[0].on" in result.stderr
            assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
            assert "in use" in result.stderr.lower()
    assert corral.ok("target", "get").strip() == "{}"
    shared = free_port()
    two = tmp_path / "two.yaml"
    two.write_text(target(app, shared, "1") + f"  - name: other\n    on: 127.0.0.1:{shared}\n")
    result = corral.run("target", "set", str(two))
    assert result.returncode == 1 and "clashes with services[0]" in result.stderr


def test_ports_are_released_and_never_shared(corral: Corral, tmp_path: Path,
                                             app: Path) -> None:
    port = free_port()
    start_app(corral, tmp_path, app, port, instances=3)
    held = json.loads((corral.state_dir / "run" / "ports.json").read_text())
    assert held.pop("format") == 1
    ports = [p["web"] for p in held.values()]
    assert len(ports) == 3 and len(set(ports)) == 3
    assert all(30000 <= p <= 39999 for p in ports)
    corral.ok("svc", "scale", "app", "1")
    wait_for(lambda: len(json.loads((corral.state_dir / "run" / "ports.json").read_text()))
             == 2, what="the ports of the stopped instances released")  # and the format
    left = healthy_pids(corral)
    assert len(left) == 1 and pid_alive(left[0])
