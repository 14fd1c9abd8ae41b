"""The launcher's copies of its children's pipe write ends, and the respawn of a checked
Spawn: a child's death is no end of file until the launcher has handled its exit, and
nothing its pipes held is lost to that; each respawn is a process of its own.

Real children are started in-process (no supervisor, no socket), as in
``test_launcher_orders``; every child is killed and reaped at the end.
"""

from __future__ import annotations

import os
import shutil
import signal
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
        launcher.dispatcher.exited(pid)
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
    """A child killed right after writing half a line: the exit report's last lines and
    the log have it, and its pipes reach end of file once the exit is handled."""
    pid = spawn(launcher, tmp_path, [SH, "-c", "echo ready; printf 'half a line'; kill -9 $$"])
    child = launcher.children[pid]
    assert pid in launcher.dispatcher.write_ends.by_pid  # the child's death is no EOF yet
    reap_when_dead(launcher, pid)
    assert pid not in launcher.dispatcher.write_ends.by_pid
    [exited] = launcher.children.exits.pending()
    assert (exited["signal"], exited["last_lines"]) == ("KILL", ["ready", "half a line"])
    run_loop_until(launcher, lambda: all(reader.fd < 0 for reader in child.readers))
    log = (tmp_path / "web.log").read_bytes()
    assert b" O ready\n" in log and log.endswith(b" O half a line\n")


def test_copies_are_kept_only_while_descriptors_are_plentiful(
        launcher: Launcher, tmp_path: Path) -> None:
    """Past the budget, every kept copy is closed and children start without; their
    output is still logged to the end."""
    ends = launcher.dispatcher.write_ends
    ends.budget = 3 * 2 + 2 * 2  # room for two children with copies
    first = spawn(launcher, tmp_path, [SLEEP, "60"])
    second = spawn(launcher, tmp_path, [SLEEP, "60"])
    assert set(ends.by_pid) == {first, second}
    before = len(os.listdir("/proc/self/fd"))
    third = spawn(launcher, tmp_path, [SH, "-c", "echo third; kill -9 $$"])
    assert not ends.by_pid
    assert len(os.listdir("/proc/self/fd")) == before - 4 + 2  # the copies, its read ends
    child = launcher.children[third]
    reap_when_dead(launcher, third)
    run_loop_until(launcher, lambda: all(reader.fd < 0 for reader in child.readers))
    assert (tmp_path / "web.log").read_bytes().endswith(f" {third} O third\n".encode())


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
