"""Remote access: the API over TCP with TLS and a bearer token, and the CLI's `--remote`.

Every test runs a real `corral sup run --listen-http 127.0.0.1:<free port>` and talks to it
with the stdlib's TLS client (pinned to the corral's own CA) or with the real CLI.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import ssl
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import PY, Corral, python_cmd, wait_for

PUBLIC = {("GET", "/"), ("HEAD", "/")}


def free_port() -> int:
    """A TCP port nothing listens on right now (the kernel's pick for port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Remote:
    """A corral with a TLS listener, and an HTTPS client pinned to its CA."""

    def __init__(self, corral: Corral, port: int) -> None:
        self.corral = corral
        self.port = port
        self.tls = corral.state_dir / "tls"

    def token(self) -> str:
        return (self.tls / "token").read_text().strip()

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.tls / "ca.crt"))

    def request(self, method: str, path: str, token: str | None = None,
                body: bytes | None = None) -> tuple[int, Any]:
        """One HTTPS request; returns (status, decoded JSON body or raw bytes)."""
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.context(),
                                           timeout=30)
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            raw = response.read()
        finally:
            conn.close()
        try:
            return response.status, json.loads(raw)
        except ValueError:
            return response.status, raw

    def answers(self) -> bool:
        try:
            return self.request("GET", "/v1/status", self.token())[0] == 200
        except OSError:
            return False

    def auth_file(self, config: Path, name: str = "test") -> Path:
        """Save `corral print-auth --name NAME` where `--remote NAME` looks for it."""
        path = config / "corral" / "auth" / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.corral.ok("print-auth", "--name", name))
        path.chmod(0o600)
        return path

    def cli(self, config: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run the CLI with `CORRAL_REMOTE=test` and no usable local state directory, so
        that only the remote path can answer."""
        env = {**os.environ, "XDG_CONFIG_HOME": str(config), "CORRAL_REMOTE": "test",
               "CORRAL_HOME": str(config / "no-such-state-dir"), "NO_COLOR": "1"}
        return subprocess.run([PY, "-m", "corral", *args], capture_output=True, text=True,
                              env=env, timeout=timeout)


def start_remote(corral: Corral, *extra: str) -> Remote:
    port = free_port()
    corral.start("--listen-http", f"127.0.0.1:{port}", *extra)
    remote = Remote(corral, port)
    wait_for(remote.answers, 30, "the TLS listener to answer")
    return remote


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Remote]:
    """One corral with a TLS listener, shared by the read-mostly tests of this module."""
    corral = Corral(tmp_path_factory.mktemp("remote") / "state")
    try:
        yield start_remote(corral)
    finally:
        corral.stop()


def operations(remote: Remote) -> list[tuple[str, str]]:
    """Every (method, path) of /openapi.json, path parameters filled in."""
    status, schema = remote.request("GET", "/openapi.json", remote.token())
    assert status == 200
    ops = []
    for path, item in schema["paths"].items():
        concrete = path.replace("{name}", "web").replace("{id}", "0" * 64)
        concrete = "/".join("x" if p.startswith("{") else p for p in concrete.split("/"))
        ops += [(method.upper(), concrete) for method in item
                if method in ("get", "post", "put", "delete", "patch")]
    return ops


def test_every_endpoint_needs_the_token(remote: Remote) -> None:
    """Every operation of /openapi.json (and the documents themselves) answers 401 with the
    API's error body, without a token and with a wrong one; GET / alone is public."""
    ops = [*operations(remote), ("GET", "/openapi.json"), ("GET", "/docs"), ("GET", "/metrics")]
    assert len(ops) > 10
    for method, path in ops:
        if (method, path) in PUBLIC:
            continue
        for token in (None, "0" * 64, ""):
            status, body = remote.request(method, path, token, b"{}")
            assert status == 401, (method, path, token, status, body)
            assert body["error"]["code"] == "unauthorized"


def test_the_right_token_works_and_public_pages_need_none(remote: Remote) -> None:
    """With the token the API answers; GET / needs none (whatever it serves, never a 401)."""
    status, body = remote.request("GET", "/v1/status", remote.token())
    assert status == 200 and body["state_dir"] == str(remote.corral.state_dir)
    status, _ = remote.request("GET", "/v1/services", remote.token())
    assert status == 200
    assert remote.request("GET", "/")[0] != 401
    # A path that leaves /assets/ once normalised does not ride on the exemption.
    assert remote.request("GET", "/assets/../v1/status")[0] == 401


def test_plain_http_on_the_tls_port_fails_cleanly(remote: Remote) -> None:
    """Plain HTTP sent to the TLS port gets no HTTP answer and no data; the listener keeps
    serving, and the supervisor logs no traceback."""
    with socket.create_connection(("127.0.0.1", remote.port), timeout=10) as s:
        s.sendall(b"GET /v1/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = b""
        try:
            while chunk := s.recv(4096):
                answer += chunk
        except ConnectionResetError:
            pass
    assert not answer.startswith(b"HTTP/") and b"state_dir" not in answer
    assert remote.answers()
    assert "Traceback" not in remote.corral.output.read_text()


def test_tls_files_are_private(remote: Remote) -> None:
    """tls/ is 0700 and every file in it 0600; api.sock stays 0600."""
    assert stat.S_IMODE(remote.tls.stat().st_mode) == 0o700
    names = sorted(p.name for p in remote.tls.iterdir())
    assert names == ["ca.crt", "ca.key", "server.crt", "server.key", "token"]
    for path in remote.tls.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert len(remote.token()) == 64 and set(remote.token()) <= set("0123456789abcdef")
    sock = remote.corral.state_dir / "api.sock"
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600


def test_local_socket_needs_no_token(remote: Remote) -> None:
    """The CLI on the local socket works without any token, and reaches the same supervisor
    as the token does over TLS."""
    local = json.loads(remote.corral.ok("sup", "status", "--json"))
    status, over_tls = remote.request("GET", "/v1/status", remote.token())
    assert status == 200
    assert local["supervisor_pid"] == over_tls["supervisor_pid"]
    assert local["state_dir"] == str(remote.corral.state_dir)


def test_cli_acts_on_the_remote(remote: Remote, tmp_path: Path) -> None:
    """With `--remote` / CORRAL_REMOTE every command goes over HTTPS: load, status, logs,
    events, and the follows of logs and events."""
    remote.auth_file(tmp_path)
    loaded = remote.cli(tmp_path, "svc", "load", "chat", "--", *python_cmd(
        "import time\nprint('hello over tls', flush=True)\nwhile True: time.sleep(1)"))
    assert loaded.returncode == 0, loaded.stderr
    wait_for(lambda: json.loads(remote.cli(tmp_path, "svc", "status", "--json").stdout)[0]
             ["state"] == "up", what="chat up, seen remotely")
    wait_for(lambda: "hello over tls" in remote.cli(tmp_path, "logs", "chat").stdout,
             what="the log line, seen remotely")
    events = remote.cli(tmp_path, "events", "--json", "--service", "chat")
    assert events.returncode == 0, events.stderr
    assert any(json.loads(line)["kind"] == "spawn" for line in events.stdout.splitlines())
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path), "CORRAL_HOME": "/nonexistent"}
    for args, needle in ((["logs", "chat", "-f"], "hello over tls"),
                         (["events", "-f", "-n", "5", "--service", "chat"], "chat")):
        with subprocess.Popen([PY, "-m", "corral", "--remote", "test", *args],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env) as proc:
            assert proc.stdout is not None
            line = proc.stdout.readline()  # blocks until the stream delivers a line
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=30)
            assert needle in line, (args, line, err)
            assert proc.returncode == 130 and "Traceback" not in err
    unloaded = remote.cli(tmp_path, "svc", "unload", "chat")
    assert unloaded.returncode == 0, unloaded.stderr


def test_cli_refuses_a_server_of_another_ca(remote: Remote, tmp_path: Path) -> None:
    """A CLI pinned to another CA refuses the server with one clear line, exit 111."""
    from corral.api.tls import ensure_material

    (tmp_path / "other-state").mkdir()
    other = ensure_material(tmp_path / "other-state", "127.0.0.1")
    path = remote.auth_file(tmp_path)
    lines = path.read_text().split("ca_cert: |\n")[0]
    ca = "".join(f"  {line}\n" for line in other.ca_cert.read_text().splitlines())
    path.write_text(lines + "ca_cert: |\n" + ca)
    result = remote.cli(tmp_path, "svc", "status")
    assert result.returncode == 111
    assert result.stderr.startswith("corral: refusing the server at 127.0.0.1:")
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr


def test_wrong_token_in_the_cli_is_one_line(remote: Remote, tmp_path: Path) -> None:
    """A refused token is one line that says how to get a new auth file, exit 1."""
    path = remote.auth_file(tmp_path)
    path.write_text(path.read_text().replace(remote.token(), "f" * 64))
    result = remote.cli(tmp_path, "svc", "status")
    assert result.returncode == 1 and len(result.stderr.splitlines()) == 1
    assert "refused the token" in result.stderr and "print-auth" in result.stderr


def test_rotate_token(corral_factory: Any, tmp_path: Path) -> None:
    """1. `sup rotate-token` locally: the old token gets 401 at once, the new one works.
    2. Through `--remote`, the rotation rewrites the client's own auth file, which keeps
       working while the previous token does not."""
    remote = start_remote(corral_factory())
    old = remote.token()
    rotated = remote.corral.run("sup", "rotate-token", "--name", "x")
    assert rotated.returncode == 0, rotated.stderr
    new = remote.token()
    assert new != old and f'token: "{new}"' in rotated.stdout
    assert remote.request("GET", "/v1/status", old)[0] == 401
    assert remote.request("GET", "/v1/status", new)[0] == 200

    path = remote.auth_file(tmp_path)
    result = remote.cli(tmp_path, "sup", "rotate-token")
    assert result.returncode == 0 and str(path) in result.stdout, result.stderr
    assert remote.request("GET", "/v1/status", new)[0] == 401
    assert remote.token() in path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert remote.cli(tmp_path, "svc", "status").returncode == 0


def test_listener_survives_a_supervisor_restart(corral_factory: Any) -> None:
    """The launcher gives --listen-http and --metrics-public to every supervisor: after
    `sup restart` the listener is back with the same CA and token, and /metrics is public."""
    remote = start_remote(corral_factory(), "--metrics-public")
    ca, token = (remote.tls / "ca.crt").read_bytes(), remote.token()
    first = remote.corral.sup_status()["supervisor_pid"]
    assert remote.request("GET", "/metrics")[0] == 200
    remote.corral.ok("sup", "restart")
    wait_for(lambda: remote.corral.sup_status()["supervisor_pid"] != first,
             what="a new supervisor")
    wait_for(remote.answers, what="the TLS listener after the restart")
    assert (remote.tls / "ca.crt").read_bytes() == ca and remote.token() == token
    assert remote.request("GET", "/metrics")[0] == 200
    assert remote.request("GET", "/v1/status")[0] == 401


def test_print_auth_without_a_listener(corral: Corral) -> None:
    """Without --listen-http, print-auth says remote access is off (exit 1, one line)."""
    result = corral.run("print-auth")
    assert result.returncode == 1 and "--listen-http" in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert not (corral.state_dir / "tls").exists()


def test_remote_follow_goes_on_across_a_supervisor_restart(remote: Remote,
                                                           tmp_path: Path) -> None:
    """`logs -f` over `--remote` is cut by `sup restart`, reconnects over TLS from its
    cursor, and prints every line of a counter once, in order."""
    from .test_follow_truth import Follower, counted

    remote.auth_file(tmp_path)
    stop = tmp_path / "stop"
    remote.corral.ok("svc", "load", "counter", "--", *python_cmd(
        "import os, sys, time\ni = 0\n"
        f"while not os.path.exists({str(stop)!r}):\n"
        "    print(f'n={i:08d}', flush=True); i += 1; time.sleep(0.002)\n"
        "print('END', flush=True)\ntime.sleep(3600)\n"))
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path), "CORRAL_HOME": "/nonexistent"}
    follower = Follower(env, "--remote", "test", "logs", "counter", "-f", "-n", "100000")
    try:
        wait_for(lambda: len(counted(follower.out)) > 100, 30, "lines over TLS")
        old = remote.corral.sup_status()["supervisor_pid"]
        remote.corral.ok("sup", "restart")
        wait_for(lambda: remote.answers() and remote.corral.sup_status()["supervisor_pid"] != old,
                 30, "a new supervisor")
        printed = len(counted(follower.out))
        wait_for(lambda: not follower.alive() or len(counted(follower.out)) > printed + 100, 30,
                 "lines after the restart")
        stop.touch()
        wait_for(lambda: not follower.alive() or follower.out[-1].endswith(" END"), 30, "END")
        seen = counted(follower.out)
        assert seen == list(range(len(seen))), "a line missing or repeated"
        assert follower.alive() and follower.err == []
    finally:
        follower.stop()
        remote.corral.ok("svc", "unload", "counter")
