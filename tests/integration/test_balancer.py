"""The load balancer process (``python -m corral.balancer``) against real HTTP backends,
driven over its real control socket; then its supervisor-side manager through a real
launcher (a stand-in supervisor that runs :class:`corral.supervisor.balancing.Balancer`)."""

from __future__ import annotations

import http.client
import json
import os
import resource
import signal
import socket
import subprocess
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.protocol import framing

from .conftest import PY, pid_alive, wait_for

pytestmark = pytest.mark.slow

#: A tiny HTTP/1.1 server that answers every request with its own name (keep-alive unless
#: the request says ``Connection: close``), and prints its port.
BACKEND = r"""
import asyncio, sys
name = sys.argv[1].encode()
port = int(sys.argv[2])
class H(asyncio.Protocol):
    def connection_made(self, t):
        self.t, self.buf = t, b""
    def data_received(self, d):
        self.buf += d
        while b"\r\n\r\n" in self.buf:
            head, self.buf = self.buf.split(b"\r\n\r\n", 1)
            close = b"connection: close" in head.lower()
            self.t.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (
                len(name), b"Connection: close\r\n" if close else b"", name))
            if close:
                self.t.close()
                return
async def main():
    srv = await asyncio.get_running_loop().create_server(H, "127.0.0.1", port)
    print(srv.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Backends:
    def __init__(self) -> None:
        self.procs: dict[str, subprocess.Popen[str]] = {}
        self.ports: dict[str, int] = {}

    def start(self, name: str, port: int = 0) -> int:
        proc = subprocess.Popen([PY, "-c", BACKEND, name, str(port)], stdout=subprocess.PIPE,
                                text=True)
        assert proc.stdout is not None
        self.procs[name] = proc
        self.ports[name] = int(proc.stdout.readline())
        return self.ports[name]

    def kill(self, name: str) -> None:
        self.procs[name].kill()
        self.procs[name].wait()

    def wire(self, *names: str, draining: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        return [{"id": n, "host": "127.0.0.1", "port": self.ports[n],
                 "state": "draining" if n in draining else "active"} for n in names]

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.kill()
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


class Control:
    """A synchronous client of the control socket."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(10)
        try:
            self.sock.connect(str(path))
        except OSError:
            self.sock.close()
            raise
        self.decoder = framing.Decoder()
        self.ids = 0

    def __call__(self, message: dict[str, Any]) -> dict[str, Any]:
        self.ids += 1
        self.sock.sendall(framing.encode({**message, "id": self.ids}))
        while True:
            for reply in self.decoder.feed(self.sock.recv(65536)):
                if reply.get("id") == self.ids:
                    return reply

    def configure(self, *services: dict[str, Any]) -> dict[str, Any]:
        reply = self({"type": "configure", "services": list(services)})
        assert reply["type"] == "configured", reply
        return reply["services"]  # type: ignore[no-any-return]

    def service(self, name: str) -> dict[str, Any]:
        stats = self({"type": "stats"})
        return next(s for s in stats["services"] if s["name"] == name)

    def close(self) -> None:
        self.sock.close()


class Balancer:
    def __init__(self, tmp: Path) -> None:
        self.path = tmp / "run" / "balancer.sock"
        self.log = tmp / "balancer.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen([PY, "-m", "corral.balancer", "--control",
                                          str(self.path)], stdout=out, stderr=subprocess.STDOUT)
        self.control: Control = wait_for(lambda: Control(self.path), what="the control socket")

    def stop(self) -> int:
        self.control.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture
def backends() -> Iterator[Backends]:
    made = Backends()
    try:
        yield made
    finally:
        made.stop()


@pytest.fixture
def balancer(tmp_path: Path) -> Iterator[Balancer]:
    made = Balancer(tmp_path)
    try:
        yield made
    finally:
        made.stop()


def service(port: int, backends: list[dict[str, Any]], **over: Any) -> dict[str, Any]:
    return {"name": "web", "host": "127.0.0.1", "port": port, "backends": backends, **over}


def get(port: int) -> str:
    """One request on a new connection; the name of the backend that answered."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/", headers={"Connection": "close"})
        response = conn.getresponse()
        assert response.status == 200
        return response.read().decode()
    finally:
        conn.close()


def listening_inode(port: int) -> int:
    """The inode of the socket listening on 127.0.0.1:``port`` (from /proc/net/tcp)."""
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1] == f"0100007F:{port:04X}" and fields[3] == "0A":
                return int(fields[9])
    raise AssertionError(f"nothing listens on 127.0.0.1:{port}")


def ask(conn: http.client.HTTPConnection) -> str:
    """One request on a kept-alive connection."""
    conn.request("GET", "/")
    response = conn.getresponse()
    assert response.status == 200
    return response.read().decode()


# ----------------------------------------------------------------------------- proxy


def test_round_robin_spreads_connections(balancer: Balancer, backends: Backends) -> None:
    """Round-robin sends consecutive connections to each backend in turn."""
    for name in "abc":
        backends.start(name)
    port = free_port()
    assert balancer.control.configure(service(port, backends.wire("a", "b", "c"))) == \
        {"web": None}
    answered = Counter(get(port) for _ in range(9))
    assert answered == {"a": 3, "b": 3, "c": 3}
    figures = wait_for(lambda: (f := balancer.control.service("web"))["active"] == 0 and f,
                       what="the last connection to end")
    assert figures["total"] == 9
    assert figures["bytes_in"] > 0 and figures["bytes_out"] > 0
    assert [b["total"] for b in figures["backends"]] == [3, 3, 3]


def test_least_connections_prefers_the_idle_backend(balancer: Balancer,
                                                    backends: Backends) -> None:
    """1. A kept-alive connection holds one backend.  2. New connections all go to the
    other (idle) one while it is held."""
    backends.start("a")
    backends.start("b")
    port = free_port()
    balancer.control.configure(service(port, backends.wire("a", "b"),
                                       balance="least-connections"))
    held = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    busy = ask(held)
    idle = "b" if busy == "a" else "a"
    for _ in range(5):
        assert get(port) == idle
        # The balancer sees the close a moment after the client does: wait for it, or
        # the next connection would find both backends busy.
        wait_for(lambda: balancer.control.service("web")["active"] == 1,
                 what="the short connection to end")
    assert ask(held) == busy
    held.close()


def test_refused_connect_is_retried_and_dead_backend_avoided(balancer: Balancer,
                                                             backends: Backends) -> None:
    """1. One backend's port refuses: every request still succeeds (retried on another).
    2. A live backend dies mid-way: requests keep succeeding on the one left.
    Result: zero client errors; the refusals are counted."""
    backends.start("a")
    backends.start("b")
    dead = [{"id": "dead", "host": "127.0.0.1", "port": free_port(), "state": "active"}]
    port = free_port()
    balancer.control.configure(service(port, backends.wire("a", "b") + dead))
    assert all(get(port) in ("a", "b") for _ in range(12))
    backends.kill("a")
    assert [get(port) for _ in range(12)] == ["b"] * 12
    figures = balancer.control.service("web")
    assert figures["errors"].get("refused", 0) >= 4
    assert figures["errors"].get("no_backend", 0) == 0


def test_no_backend_left_closes_the_client_and_counts_it(balancer: Balancer) -> None:
    """When every backend refuses, the client's connection is closed and counted."""
    port = free_port()
    balancer.control.configure(service(port, [
        {"id": "x", "host": "127.0.0.1", "port": free_port()}]))
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        get(port)
    assert balancer.control.service("web")["errors"]["no_backend"] == 1


def test_draining_backend_keeps_its_connection_and_gets_no_new_ones(
        balancer: Balancer, backends: Backends) -> None:
    """1. A long connection is held on one backend.  2. That backend is marked draining
    (drain_timeout 60 s).  3. New connections all go to the other backend; the held one
    still works and the backend is not drained.  4. The client closes: drained."""
    backends.start("a")
    backends.start("b")
    port = free_port()
    balancer.control.configure(service(port, backends.wire("a", "b"), drain_timeout=60))
    held = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    old = ask(held)
    new = "b" if old == "a" else "a"
    balancer.control.configure(service(port, backends.wire("a", "b", draining=(old,)),
                                       drain_timeout=60))
    assert [get(port) for _ in range(4)] == [new] * 4
    assert ask(held) == old
    drained = {"type": "drained", "service": "web", "backend": old}
    assert balancer.control(drained)["drained"] is False
    held.close()
    wait_for(lambda: balancer.control(drained)["drained"], what="the backend to drain")


def test_drain_timeout_closes_what_is_left(balancer: Balancer, backends: Backends) -> None:
    """A backend removed from the set drains; after drain_timeout its last connection is
    closed and it is reported drained."""
    backends.start("a")
    backends.start("b")
    port = free_port()
    balancer.control.configure(service(port, backends.wire("a"), drain_timeout=0.2))
    held = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    assert ask(held) == "a"
    balancer.control.configure(service(port, backends.wire("b"), drain_timeout=0.2))
    drained = {"type": "drained", "service": "web", "backend": "a"}
    wait_for(lambda: balancer.control(drained)["drained"], what="the drain timeout")
    assert held.sock is not None
    assert held.sock.recv(1) == b""  # closed by the balancer
    held.close()
    assert get(port) == "b"


def test_keeps_serving_when_its_controller_dies(balancer: Balancer, backends: Backends,
                                                tmp_path: Path) -> None:
    """A controller configures the balancer and is killed (SIGKILL); the balancer keeps
    its configuration and keeps serving; a new controller sees the same set."""
    backends.start("a")
    port = free_port()
    script = ("import socket, sys, time\n"
              "from corral.protocol import framing\n"
              "s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
              "s.sendall(framing.encode({'id': 1, 'type': 'configure', 'services': "
              "[{'name': 'web', 'host': '127.0.0.1', 'port': int(sys.argv[2]), 'backends': "
              "[{'id': 'a', 'host': '127.0.0.1', 'port': int(sys.argv[3])}]}]}))\n"
              "print(s.recv(65536) and 'ok', flush=True)\n"
              "time.sleep(3600)\n")
    controller = subprocess.Popen([PY, "-c", script, str(balancer.path), str(port),
                                   str(backends.ports["a"])], stdout=subprocess.PIPE, text=True)
    assert controller.stdout is not None and controller.stdout.readline().strip() == "ok"
    controller.kill()
    controller.wait()
    controller.stdout.close()
    balancer.control.close()
    assert [get(port) for _ in range(5)] == ["a"] * 5
    fresh = Control(balancer.path)
    assert [b["id"] for b in fresh.service("web")["backends"]] == ["a"]
    fresh.close()
    assert balancer.proc.poll() is None


def test_a_controller_speaking_garbage_is_dropped_and_named_in_the_log(
        balancer: Balancer, backends: Backends) -> None:
    """Bytes that are not corral's framing: that connection is dropped with one line in the
    balancer's log, and the balancer keeps its configuration and its other controllers."""
    backends.start("a")
    port = free_port()
    balancer.control.configure(service(port, [{"id": "a", "host": "127.0.0.1",
                                               "port": backends.ports["a"]}]))
    with socket.socket(socket.AF_UNIX) as rogue:
        rogue.connect(str(balancer.path))
        rogue.sendall(b"\xff\xff\xff\xff not a frame")   # a 4 GiB length: refused
        rogue.settimeout(10)
        assert rogue.recv(1024) == b""                       # dropped, not answered
    wait_for(lambda: "dropping a control connection" in balancer.log.read_text(),
             what="the log line")
    assert get(port) == "a"
    assert [b["id"] for b in balancer.control.service("web")["backends"]] == ["a"]


def test_emfile_on_accept_backs_off_and_recovers(balancer: Balancer,
                                                 backends: Backends) -> None:
    """1. The balancer's RLIMIT_NOFILE is lowered below its next free descriptor.
    2. A client connects and sends a request: accept fails with EMFILE, and the balancer
    counts the overload and backs off (retrying) instead of crashing.  3. The limit is
    raised again: the client left waiting in the backlog gets its answer."""
    backends.start("a")
    port = free_port()
    balancer.control.configure(service(port, backends.wire("a")))
    assert get(port) == "a"
    pid = balancer.proc.pid
    wait_for(lambda: balancer.control.service("web")["active"] == 0,
             what="the first connection's descriptors to be closed")
    fds = {int(fd) for fd in os.listdir(f"/proc/{pid}/fd")}
    # The limit caps a descriptor's number (descriptors above it stay valid): a limit of
    # the lowest free number makes every new descriptor, so every accept, fail.
    lowest_free = min(set(range(max(fds) + 2)) - fds)
    soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (lowest_free, hard))
    request = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    clients: list[socket.socket] = []
    try:
        clients.append(socket.create_connection(("127.0.0.1", port), timeout=20))
        clients[-1].sendall(request)
        wait_for(lambda: balancer.control.service("web")["overloaded"] >= 2,
                 what="the accept loop to back off and retry")
        assert balancer.proc.poll() is None
    finally:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
    last = clients[-1]
    answer = b""
    while chunk := last.recv(4096):
        answer += chunk
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"a")
    for client in clients:
        client.close()
    assert get(port) == "a"
    assert balancer.proc.poll() is None
    figures = balancer.control.service("web")
    assert figures["errors"]["overload"] == figures["overloaded"] >= 2


def test_bind_failures_are_reported_with_the_reason(balancer: Balancer,
                                                    backends: Backends) -> None:
    """An address in use and an address not of this host are reported per service, with
    the reason; the other services are served."""
    backends.start("a")
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    busy = taken.getsockname()[1]
    good = free_port()
    errors = balancer.control.configure(
        service(good, backends.wire("a")),
        {**service(busy, []), "name": "busy"},
        {**service(80, []), "name": "foreign", "host": "192.0.2.1"})
    assert errors["web"] is None
    assert errors["busy"] == f"cannot listen on 127.0.0.1:{busy}: the address is already in use"
    assert "192.0.2.1 is not an address of this host" in errors["foreign"]
    assert get(good) == "a"
    probe = balancer.control({"type": "probe", "services": [
        service(good, []), {**service(busy, []), "name": "busy"}]})
    assert probe["services"] == {"web": None, "busy": errors["busy"]}
    taken.close()


def test_reconfigure_keeps_the_listener_and_unknown_requests_are_refused(
        balancer: Balancer, backends: Backends) -> None:
    """Re-sending the set (even with other backends) keeps the same listening socket and
    the open connections; a malformed request gets an error reply and changes nothing."""
    backends.start("a")
    backends.start("b")
    port = free_port()
    balancer.control.configure(service(port, backends.wire("a")))
    before = listening_inode(port)
    held = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    assert ask(held) == "a"
    balancer.control.configure(service(port, backends.wire("b")))
    assert listening_inode(port) == before  # the very same listening socket
    assert ask(held) == "a"  # a backend left out of the set drains: its connection goes on
    assert get(port) == "b"
    held.close()
    bad = balancer.control({"type": "configure", "services": [{"name": "web"}]})
    assert bad["type"] == "error" and "services[0].host: missing" in bad["message"]
    assert balancer.control({"type": "nonsense"})["type"] == "error"
    assert get(port) == "b"


def test_sigterm_exits_cleanly(balancer: Balancer, backends: Backends) -> None:
    """SIGTERM: the balancer stops accepting and exits 0."""
    backends.start("a")
    port = free_port()
    balancer.control.configure(service(port, backends.wire("a")))
    assert get(port) == "a"
    assert balancer.stop() == 0
    assert not balancer.path.exists()


# --------------------------------------------------------------------------- manager

#: A stand-in supervisor (run by a real launcher through CORRAL_SUP_BINARY) that keeps
#: the balancer with the real manager: adopts it, configures it from config.json, writes
#: its status to status-<pid>.json, and drains a backend when ``drain`` appears.
STAND_IN = r"""
import asyncio, json, os, socket, sys
from pathlib import Path
from corral.spec import ServiceSpec
from corral.supervisor.balancing import Backend, Balancer
from corral.supervisor.launcher_client import LauncherClient

state = Path(sys.argv[sys.argv.index("--state-dir") + 1])
here = Path(os.environ["FAKE_SUP_DIR"])
with (here / "starts").open("a") as f:
    f.write(f"{os.getpid()}\n")

async def main():
    env = {k: v for k, v in os.environ.items() if k != "CORRAL_LAUNCHER_FD"}
    bal = Balancer(state, env)
    done = asyncio.get_running_loop().create_future()
    finish = lambda code: done.done() or done.set_result(code)
    sock = socket.socket(fileno=int(os.environ["CORRAL_LAUNCHER_FD"]))
    launcher = await LauncherClient.connect(sock, bal.on_exit, lambda: finish(84),
                                            lambda: finish(1))
    adopted = sum(bal.adopt(c) for c in await launcher.list_children())
    bal.attach(launcher)
    cfg = json.loads((here / "config.json").read_text())
    services = [ServiceSpec(**s) for s in cfg["services"]]
    backends = {k: [Backend(**b) for b in v] for k, v in cfg["backends"].items()}
    problems = await bal.validate_bind(services)
    errors = await bal.configure(services, backends)
    drained = None
    while not done.done():
        if drained is None and (here / "drain").exists():
            name, backend = (here / "drain").read_text().split()
            drained = await bal.drain(name, backend, timeout=30)
        status = {**bal.status(), "adopted": adopted, "errors": errors,
                  "problems": problems, "drained": drained}
        (here / f"status-{os.getpid()}.json").write_text(json.dumps(status))
        await asyncio.wait([done], timeout=0.05)
    await bal.close()
    sys.exit(done.result())

asyncio.run(main())
"""


class Launched:
    """A real launcher running the stand-in supervisor."""

    def __init__(self, tmp: Path, config: dict[str, Any]) -> None:
        self.dir = tmp / "fake"
        self.dir.mkdir()
        (self.dir / "config.json").write_text(json.dumps(config))
        script = tmp / "stand_in.py"
        script.write_text(STAND_IN)
        env = {**os.environ, "CORRAL_SUP_BINARY": f"{PY} {script}",
               "FAKE_SUP_DIR": str(self.dir)}
        self.log = tmp / "launcher.out"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [PY, "-m", "corral", "sup", "run", "--state-dir", str(tmp / "state")],
                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def status(self, sup_pid: int | None = None) -> dict[str, Any]:
        """The status the stand-in wrote last (of ``sup_pid`` if given, else any)."""
        pattern = f"status-{sup_pid}.json" if sup_pid else "status-*.json"
        for path in sorted(self.dir.glob(pattern), key=lambda p: p.stat().st_mtime,
                           reverse=True):
            try:
                return json.loads(path.read_text())  # type: ignore[no-any-return]
            except ValueError:
                continue  # being written
        return {}

    def supervisor_pids(self) -> list[int]:
        starts = self.dir / "starts"
        return [int(p) for p in starts.read_text().split()] if starts.exists() else []

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def manager_config(port: int, backends: Backends, *names: str,
                   drain_timeout: float = 30) -> dict[str, Any]:
    return {"services": [{"name": "web", "on": f"127.0.0.1:{port}",
                          "drain_timeout": drain_timeout}],
            "backends": {"web": [{"id": n, "host": "127.0.0.1", "port": backends.ports[n]}
                                 for n in names]}}


@pytest.fixture
def launched(tmp_path: Path, backends: Backends) -> Iterator[Any]:
    made: list[Launched] = []

    def make(config: dict[str, Any]) -> Launched:
        made.append(Launched(tmp_path, config))
        return made[-1]
    yield make
    for one in made:
        one.stop()


def test_manager_spawns_adopts_and_survives_supervisor_kills(
        launched: Any, backends: Backends, tmp_path: Path) -> None:
    """1. The manager starts the balancer through the launcher and configures it.
    2. A client sends requests continuously while the supervisor is SIGKILLed ten times.
    3. Each new supervisor adopts the same balancer (same pid) and re-sends the set.
    Result: zero failed requests."""
    backends.start("a")
    backends.start("b")
    port = free_port()
    corral = launched(manager_config(port, backends, "a", "b"))
    first = wait_for(lambda: (s := corral.status()).get("connected") and s,
                     timeout=30, what="the balancer to be configured")
    assert first["errors"] == {"web": None} and first["problems"] == {}
    balancer_pid = first["pid"]
    stop = threading.Event()
    failures: list[BaseException] = []
    served = Counter[str]()

    def client() -> None:
        while not stop.is_set():
            try:
                served[get(port)] += 1
            except BaseException as exc:
                failures.append(exc)
    thread = threading.Thread(target=client)
    thread.start()
    try:
        for _ in range(10):
            sup = wait_for(lambda: (p := corral.supervisor_pids()) and p[-1],
                           what="a supervisor")
            wait_for(lambda sup=sup: corral.status(sup).get("connected"),
                     what="the supervisor to reconnect")
            os.kill(sup, signal.SIGKILL)
            wait_for(lambda sup=sup: corral.supervisor_pids()[-1] != sup,
                     what="a new supervisor")
        last = corral.supervisor_pids()[-1]
        after = wait_for(lambda: (s := corral.status(last)).get("connected") and s,
                         what="the last supervisor to reconnect")
    finally:
        stop.set()
        thread.join(30)
    assert failures == []
    assert after["pid"] == balancer_pid and after["adopted"] == 1
    assert served["a"] > 0 and served["b"] > 0
    assert (tmp_path / "state" / "logs" / ".balancer.log").exists()


def test_manager_restarts_a_dead_balancer_and_resends_the_set(
        launched: Any, backends: Backends) -> None:
    """The balancer is SIGKILLed: the manager starts a new one through the launcher and
    configures it with the same set, so the service answers again."""
    backends.start("a")
    port = free_port()
    corral = launched(manager_config(port, backends, "a"))
    first = wait_for(lambda: (s := corral.status()).get("connected") and s, timeout=30,
                     what="the balancer")
    assert get(port) == "a"
    os.kill(first["pid"], signal.SIGKILL)
    wait_for(lambda: (s := corral.status()).get("connected") and s["pid"] != first["pid"],
             what="a new balancer")
    assert corral.status()["restarts"] == 1
    wait_for(lambda: get(port) == "a", what="the service to answer again")
    assert not pid_alive(first["pid"])


def test_manager_drain_waits_for_the_last_connection(launched: Any,
                                                     backends: Backends) -> None:
    """``drain`` returns only once the draining backend's connections are gone, and
    new connections go to the other backend meanwhile."""
    backends.start("a")
    backends.start("b")
    port = free_port()
    corral = launched(manager_config(port, backends, "a", "b"))
    wait_for(lambda: corral.status().get("connected"), timeout=30, what="the balancer")
    held = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    old = ask(held)
    other = "b" if old == "a" else "a"
    (corral.dir / "drain").write_text(f"web {old}")
    wait_for(lambda: get(port) == other and get(port) == other, what="draining to start")
    assert ask(held) == old
    assert corral.status().get("drained") is None  # still waiting
    held.close()
    assert wait_for(lambda: corral.status().get("drained"), what="drain to return") is True


def test_manager_validate_bind_reports_the_reason(launched: Any, backends: Backends) -> None:
    """An ``on`` address in use is reported by validate_bind before configuring."""
    backends.start("a")
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    busy = taken.getsockname()[1]
    corral = launched(manager_config(busy, backends, "a"))
    status = wait_for(lambda: (s := corral.status()).get("connected") and s, timeout=30,
                      what="the balancer")
    reason = f"cannot listen on 127.0.0.1:{busy}: the address is already in use"
    assert status["problems"] == {"web": reason}
    assert status["bind_errors"] == {"web": reason}
    taken.close()


def test_port_allocator_never_hands_out_a_port_bound_on_the_host() -> None:
    """A port some process listens on is skipped (checked by really binding it); once
    it is free again, it is handed out."""
    from corral.balancer.ports import PortAllocator, PortsExhausted

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    ports = PortAllocator(port, port)
    with pytest.raises(PortsExhausted):
        ports.allocate()
    holder.close()
    assert ports.allocate() == port
    with pytest.raises(PortsExhausted):
        ports.allocate()  # handed out already
    ports.release(port)
    assert ports.allocate() == port


def test_moving_and_removing_services(balancer: Balancer, backends: Backends) -> None:
    """A service moved to another address listens there and no longer on the old one; a
    service left out of the set stops listening."""
    backends.start("a")
    first, second, other = free_port(), free_port(), free_port()
    balancer.control.configure(service(first, backends.wire("a")),
                               {**service(other, backends.wire("a")), "name": "other"})
    assert get(first) == "a" and get(other) == "a"
    balancer.control.configure(service(second, backends.wire("a")))
    assert get(second) == "a"
    for gone in (first, other):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", gone), timeout=5).close()
    assert [s["name"] for s in balancer.control({"type": "stats"})["services"]] == ["web"]


def test_unusable_control_path_is_one_line_and_exit_1(tmp_path: Path) -> None:
    """A control socket that cannot be created: one line naming the path, exit 1."""
    path = tmp_path / "not-a-dir"
    path.write_text("")
    result = subprocess.run([PY, "-m", "corral.balancer", "--control", str(path / "b.sock")],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"corral-balancer: cannot serve the control socket {path}/b.sock: ")
