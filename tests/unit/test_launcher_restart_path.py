"""The launcher's restart path: the exit report of a child whose exit is handled before
its pipes' end of file is seen, the respawn of a checked Spawn (each respawn is a process
of its own), and the launcher's cheap listing of its own children.

Real children are started in-process (no supervisor, no socket), as in
``test_launcher_orders``; every child is killed and reaped at the end.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.launcher import procs
from corral.launcher.pid1 import Launcher
from corral.protocol import messages as m

SLEEP = shutil.which("sleep") or "/bin/sleep"
SH = shutil.which("sh") or "/bin/sh"


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[Launcher]:
    launcher = Launcher(tmp_path, [])
    yield launcher
    for pid in list(launcher.children):
        try:
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
    for child in launcher.children.values():
        for reader in child.readers:
            if reader.fd >= 0:
                os.close(reader.fd)
    for log in launcher.logs.values():
        log.close()
    os.close(launcher.devnull)
    launcher.reactor.sel.close()


def spawn(launcher: Launcher, tmp_path: Path, argv: list[str], **fields: Any) -> int:
    request = {"type": m.SPAWN, "id": 1, "name": "web/0", "argv": argv, "env": {},
               "cwd": str(tmp_path), "log": {"path": str(tmp_path / "web.log")}, **fields}
    reply = launcher.dispatcher.handle_request(request)
    assert reply is not None and reply["type"] == m.SPAWNED, reply
    return int(reply["pid"])


def reap_when_dead(launcher: Launcher, pid: int) -> None:
    """Let the launcher reap ``pid`` once it is a zombie."""
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline, f"pid {pid} did not die"
        time.sleep(0.001)
    launcher.reap()


def run_loop_until(launcher: Launcher, done: Any) -> None:
    deadline = time.monotonic() + 10
    while not done():
        assert time.monotonic() < deadline, "the loop never got there"
        launcher.reactor.call_later(0.05, lambda: None)  # bounds the turn's wait
        launcher.reactor.turn(lambda signum: None)


def test_an_unfinished_last_line_is_in_the_exit_report_and_the_log(
        launcher: Launcher, tmp_path: Path) -> None:
    """A child killed right after writing half a line, reaped before the loop saw its
    pipes' end of file: the exit report's last lines and the log have the half line."""
    pid = spawn(launcher, tmp_path, [SH, "-c", "echo ready; printf 'half a line'; kill -9 $$"])
    child = launcher.children[pid]
    reap_when_dead(launcher, pid)
    [exited] = launcher.children.exits.pending()
    assert (exited["signal"], exited["last_lines"]) == ("KILL", ["ready", "half a line"])
    run_loop_until(launcher, lambda: all(reader.fd < 0 for reader in child.readers))
    log = (tmp_path / "web.log").read_bytes()
    assert b" O ready\n" in log and log.endswith(b" O half a line\n")


def test_each_respawn_is_an_instance_of_its_own(launcher: Launcher, tmp_path: Path) -> None:
    """A respawn of a respawn starts the same command with a new instance mark, and the
    one before it is forgotten (nothing kept for it)."""
    marks, pid = [], spawn(launcher, tmp_path, [SLEEP, "60"],
                           on_exit={"respawn_after_ms": 0})
    for _ in range(2):
        marks.append(launcher.children[pid].mark)
        launcher.dispatcher.handle_request({"type": m.ORDER, "id": 2, "pid": pid,
                                            "on_exit": {"respawn_after_ms": 0}})
        os.kill(pid, signal.SIGKILL)
        reap_when_dead(launcher, pid)
        assert pid not in launcher.dispatcher.checked
        [pid] = list(launcher.children)
    marks.append(launcher.children[pid].mark)
    assert len(set(marks)) == 3
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert f"{procs.ENV_INSTANCE_ID}={marks[-1]}".encode() in environ
    assert launcher.children[pid].argv == [SLEEP, "60"]
    assert launcher.children.spawns["web/0"] == 3


def test_own_children_lists_what_proc_lists() -> None:
    """The launcher's cheap listing of its own children says what /proc's full walk says,
    with one thread and with several (then it takes the full walk); run in a process of
    its own, which starts with one thread."""
    script = f"""
import os, subprocess, threading
from corral.launcher import procs
own = procs.OwnChildren()
listed = lambda: sorted(int(pid) for pid in own.read().split())
assert os.fstat(os.open("/proc/self/task", os.O_RDONLY)).st_nlink == 3, "one thread"
kids = [subprocess.Popen([{SLEEP!r}, "60"]) for _ in range(3)]
expected = sorted(procs.children(os.getpid()))
assert sorted(k.pid for k in kids) == expected == listed(), (expected, listed())
stop = threading.Event()
thread = threading.Thread(target=stop.wait)
thread.start()
assert listed() == expected
stop.set()
thread.join()
for kid in kids:
    kid.kill()
    kid.wait()
assert listed() == [], listed()
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, check=False)
    assert (done.returncode, done.stdout, done.stderr) == (0, "ok\n", "")
