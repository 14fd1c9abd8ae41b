"""Socket mode: the launcher binds an address once and hands the listening socket to
every instance with systemd's LISTEN_FDS convention; it outlives supervisor restarts."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.launcher.listeners import bind

from .conftest import PY, pid_alive, wait_for
from .test_launcher import DirectLauncher

# A server that takes its socket the systemd way.  It asks libsystemd's own
# sd_listen_fds_with_names() (which checks LISTEN_PID against getpid()) when the library
# is there, prints what it got, then answers each connection with its pid.
SERVER = r"""
import ctypes, ctypes.util, os, socket, sys
try:
    lib = ctypes.CDLL("libsystemd.so.0")
except OSError:
    print("SD unavailable", flush=True)
else:
    names = ctypes.POINTER(ctypes.c_char_p)()
    n = lib.sd_listen_fds_with_names(0, ctypes.byref(names))
    print("SD", n, ":".join(names[i].decode() for i in range(max(n, 0))), flush=True)
print("ENV", os.environ["LISTEN_FDS"], os.environ["LISTEN_PID"] == str(os.getpid()),
      os.environ["LISTEN_FDNAMES"], flush=True)
socks = [socket.socket(fileno=3 + i) for i in range(int(os.environ["LISTEN_FDS"]))]
print("LISTENING", *(s.getsockname()[1] for s in socks), flush=True)
while True:
    conn, _ = socks[0].accept()
    conn.sendall(f"{os.getpid()}\n".encode())
    conn.close()
"""


def _ask(port: int) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        return int(conn.makefile().readline())


def _log(launcher: DirectLauncher, name: str) -> str:
    path = launcher.state / "logs" / f"{name}.log"
    return path.read_text() if path.exists() else ""


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[DirectLauncher]:
    direct = DirectLauncher(tmp_path)
    yield direct
    direct.close()


def test_instances_share_one_socket_and_the_kernel_spreads_connections(
        launcher: DirectLauncher) -> None:
    """1. Listen binds once; 2. two instances get it as fd 3 with LISTEN_FDS=1,
    LISTEN_PID=their own pid, LISTEN_FDNAMES=web (libsystemd agrees); 3. connections
    reach both instances."""
    held = launcher.call({"type": "Listen", "name": "web", "host": "127.0.0.1", "port": 0})
    assert held["type"] == "Listening" and held["port"] > 0, held
    port = held["port"]
    pids = []
    for i in range(2):
        reply = launcher.spawn(f"web/{i}", [PY, "-u", "-c", SERVER], listen_fds=["web"])
        assert reply["type"] == "Spawned", reply
        pids.append(reply["pid"])
    wait_for(lambda: _log(launcher, "web").count("LISTENING") == 2, what="both servers")
    text = _log(launcher, "web")
    assert text.count("ENV 1 True web") == 2, text
    if "SD unavailable" not in text:
        assert text.count("SD 1 web") == 2, text
    assert text.count(f"LISTENING {port}") == 2
    seen: set[int] = set()
    for _ in range(500):
        seen.add(_ask(port))
        if seen == set(pids):
            break
    assert seen == set(pids)
    assert launcher.call({"type": "List"})["listeners"] == [
        {"name": "web", "host": "127.0.0.1", "port": port}]


def test_the_socket_outlives_a_supervisor_restart(launcher: DirectLauncher) -> None:
    """The launcher holds the socket: after the supervisor is killed, the next one finds
    it in List, repeating Listen is a no-op with the same port, and a new instance
    spawned with it serves on the same address."""
    port = launcher.call({"type": "Listen", "name": "api", "host": "127.0.0.1",
                          "port": 0})["port"]
    first = launcher.spawn("api/0", [PY, "-u", "-c", SERVER], listen_fds=["api"])["pid"]
    assert _ask(port) == first
    relay = _relay_pid(launcher)
    os.kill(relay, signal.SIGKILL)
    wait_for(lambda: not pid_alive(relay), what="the supervisor to die")
    launcher.connect()
    listing = launcher.call({"type": "List"})
    assert listing["listeners"] == [{"name": "api", "host": "127.0.0.1", "port": port}]
    assert launcher.call({"type": "Listen", "name": "api", "host": "127.0.0.1",
                          "port": port})["port"] == port
    assert _ask(port) == first
    os.kill(first, signal.SIGKILL)
    launcher.wait_unasked(lambda msg: msg.get("pid") == first)
    second = launcher.spawn("api/0", [PY, "-u", "-c", SERVER], listen_fds=["api"])["pid"]
    assert wait_for(lambda: _ask(port) == second, what="the new instance to answer")


def _relay_pid(launcher: DirectLauncher) -> int:
    """The stand-in supervisor's pid: the launcher's child that runs the relay."""
    out = subprocess.run(["ps", "-ww", "-o", "pid=,args=", "--ppid", str(launcher.proc.pid)],
                         capture_output=True, text=True, check=True).stdout
    return next(int(line.split()[0]) for line in out.splitlines() if "relay.py" in line)


def test_listen_errors_say_why(launcher: DirectLauncher) -> None:
    """In use, not local, a bad name, the name already elsewhere: ListenFailed with the
    reason; nothing is held afterwards."""
    busy = bind("127.0.0.1", 0)
    try:
        port = busy.getsockname()[1]
        reply = launcher.call({"type": "Listen", "name": "a", "host": "127.0.0.1",
                               "port": port})
        assert (reply["type"], reply["code"]) == ("Error", "ListenFailed")
        assert reply["message"] == (f"cannot listen on 127.0.0.1:{port}: "
                                  "the address is already in use")
    finally:
        busy.close()
    reply = launcher.call({"type": "Listen", "name": "a", "host": "192.0.2.1", "port": 0})
    assert reply["message"] == ("cannot listen on 192.0.2.1:0: "
                                "192.0.2.1 is not an address of this host"), reply
    reply = launcher.call({"type": "Listen", "name": "a:b", "host": "127.0.0.1", "port": 0})
    assert reply["code"] == "ListenFailed" and "bad listener name" in reply["message"]
    reply = launcher.call({"type": "Listen", "name": "a", "host": "127.0.0.1", "port": "x"})
    assert reply["code"] == "BadRequest"
    assert launcher.call({"type": "List"})["listeners"] == []
    port = launcher.call({"type": "Listen", "name": "a", "host": "127.0.0.1",
                          "port": 0})["port"]
    reply = launcher.call({"type": "Listen", "name": "a", "host": "127.0.0.1",
                           "port": port + 1 if port < 65535 else port - 1})
    assert "already listens on 127.0.0.1:" in reply["message"]
    reply = launcher.call({"type": "Unlisten", "name": "a"})
    assert (reply["type"], reply["existed"]) == ("Ok", True)
    assert launcher.call({"type": "Unlisten", "name": "a"})["existed"] is False
    # Closed for real: the port can be bound again.
    bind("127.0.0.1", port).close()


def test_spawn_with_sockets_refuses_what_it_cannot_do(launcher: DirectLauncher,
                                                      tmp_path: Path) -> None:
    """An unknown socket name is BadRequest; a missing binary is still ExecFailed (an
    error reply, not a child that exits 127); nothing is left running."""
    launcher.call({"type": "Listen", "name": "web", "host": "127.0.0.1", "port": 0})
    reply = launcher.spawn("x/0", [PY, "-c", "pass"], listen_fds=["nope"])
    assert (reply["code"], reply["message"]) == (
        "BadRequest", "no listening socket named 'nope'; send Listen first")
    reply = launcher.spawn("x/0", ["no-such-binary-xyz"], listen_fds=["web"])
    assert (reply["code"], reply["message"]) == ("ExecFailed",
                                                 "command not found: no-such-binary-xyz")
    reply = launcher.spawn("x/0", [str(tmp_path / "missing")], listen_fds=["web"])
    assert reply["code"] == "ExecFailed"
    assert launcher.call({"type": "List"})["children"] == []


def test_no_permission_is_reported() -> None:
    """As an unprivileged user, a port below 1024 is refused with the reason."""
    if os.geteuid() != 0:
        pytest.skip("needs root to drop to an unprivileged user")
    # Imported as root, then the process drops to nobody: the bind is the unprivileged part.
    code = ("import os\n"
            "from corral.launcher.listeners import bind, ListenError\n"
            "import encodings.idna  # getaddrinfo loads it lazily, and nobody cannot\n"
            "os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
            "try:\n    bind('127.0.0.1', 1)\n"
            "except ListenError as exc:\n    print(exc)\n")
    out = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == ("cannot listen on 127.0.0.1:1: permission denied (ports "
                                  "below 1024 need root or CAP_NET_BIND_SERVICE)"), out.stderr
