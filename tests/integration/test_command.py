"""Short commands run from the supervisor's loop (uvloop, as in production): output and
exit code, a timeout or a cancellation kills the whole process group, the user switch,
and errors for what cannot start."""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
import uvloop

from corral import command

from .conftest import wait_for

T = TypeVar("T")
ENV = {"PATH": "/usr/bin:/bin"}


def run(coro: Coroutine[Any, Any, T]) -> T:
    return uvloop.run(coro)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_output_and_exit_code_come_back() -> None:
    done = run(command.run(["sh", "-c", "echo out; echo err >&2; exit 3"], env=ENV, cwd="/"))
    assert done.code == 3 and not done.timed_out
    assert sorted(done.output.split()) == [b"err", b"out"]
    assert not _alive(done.pid)


def test_a_signal_death_is_a_negative_code() -> None:
    done = run(command.run(["sh", "-c", "kill -TERM $$"], env=ENV, cwd="/"))
    assert done.code == -15


def test_a_timeout_kills_the_whole_group_and_keeps_the_output(tmp_path: Path) -> None:
    pidfile = tmp_path / "child"
    done = run(command.run(["sh", "-c", f"echo started; sleep 60 & echo $! > {pidfile}; wait"],
                           env=ENV, cwd=str(tmp_path), timeout=1))
    assert done.timed_out and done.code is None
    assert done.output == b"started\n"
    child = int(pidfile.read_text())
    wait_for(lambda: not _alive(child), 10, "the background sleep to be killed too")


def test_cancelling_kills_and_reaps(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"

    async def scenario() -> int:
        task = asyncio.ensure_future(command.run(
            ["sh", "-c", f"echo $$ > {pidfile}; exec sleep 60"], env=ENV, cwd=str(tmp_path)))
        deadline = asyncio.get_running_loop().time() + 10
        while not pidfile.exists() or not pidfile.read_text().strip():
            assert asyncio.get_running_loop().time() < deadline, "the command never started"
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return int(pidfile.read_text())

    pid = run(scenario())
    assert not _alive(pid)  # killed and reaped: no zombie left either
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
def test_the_command_runs_as_the_user_with_its_group_and_no_others() -> None:
    done = run(command.run(["id"], env=ENV, cwd="/", user="nobody"))
    assert done.code == 0
    text = done.output.decode()
    assert "uid=65534(nobody)" in text and "groups=65534" in text
    assert "root" not in text


def test_what_cannot_start_raises_before_anything_runs(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        run(command.run(["/no/such/program"], env=ENV, cwd="/"))
    with pytest.raises(FileNotFoundError):
        run(command.run(["true"], env=ENV, cwd=str(tmp_path / "missing")))
    with pytest.raises(ValueError) as no_user:
        run(command.run(["true"], env=ENV, cwd="/", user="no-such-user-here"))
    assert str(no_user.value) == "user 'no-such-user-here' does not exist on this host"
    with pytest.raises(ValueError) as no_group:
        run(command.run(["true"], env=ENV, cwd="/", group="nogroup-here"))
    assert str(no_group.value) == "group 'nogroup-here' does not exist on this host"


def test_many_commands_leave_no_fd_behind() -> None:
    before = len(os.listdir("/proc/self/fd"))

    async def many() -> list[command.Finished]:
        return await asyncio.gather(*(command.run(["true"], env=ENV, cwd="/")
                                      for _ in range(50)))

    assert all(done.code == 0 for done in run(many()))
    assert len(os.listdir("/proc/self/fd")) == before


def test_without_pidfd_the_exit_is_still_seen(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    """Where pidfd_open is refused (old kernel, seccomp), the exit is polled instead."""
    def refused(pid: int, flags: int = 0) -> int:
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(command.os, "pidfd_open", refused)
    done = run(command.run(["sh", "-c", "echo hi; exit 4"], env=ENV, cwd="/"))
    assert (done.code, done.output) == (4, b"hi\n")
    slow = run(command.run(["sleep", "60"], env=ENV, cwd=str(tmp_path), timeout=0.5))
    assert slow.timed_out and not _alive(slow.pid)
