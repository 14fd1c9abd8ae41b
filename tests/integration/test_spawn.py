"""What a service process sees when the launcher starts it, on both spawn paths.

The common spawn goes through ``os.posix_spawn`` (the launcher steps into the working
directory and sets the umask around it); a spawn with rlimits, a user or sockets goes
through ``subprocess``.  Both must give the child the same start: its own session,
stdin on /dev/null, stdout/stderr on the pipes, no other fd, SIGPIPE at its default,
the requested cwd and umask, exactly the requested environment.
"""

from __future__ import annotations

import os
import select
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.launcher import sched
from corral.launcher.pipes import SPARES, SparePipes
from corral.launcher.spawn import SpawnError, SpawnRequest, spawn
from corral.launcher.startup import close_inherited_on_exec
from corral.protocol import messages as m

# Prints what the process was started with, one fact a line.
PROBE = r"""
echo "cwd=$(pwd)"
echo "umask=$(umask)"
echo "sid=$(cut -d' ' -f6 /proc/$$/stat) pid=$$"
echo "sigign=$(awk '/^SigIgn/ {print $2}' /proc/$$/status)"
echo "stdin=$(readlink /proc/$$/fd/0)"
echo "env=$(env | sort | tr '\n' ' ')"
echo oops >&2
"""


@pytest.fixture
def devnull() -> Iterator[int]:
    fd = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    yield fd
    os.close(fd)


def _run(req: SpawnRequest, devnull: int) -> tuple[dict[str, str], bytes]:
    """Spawn, read both pipes to the end, reap; the probe's facts and its stderr."""
    started = spawn(req, devnull)
    out, err = b"", b""
    open_fds = {started.stdout, started.stderr}
    while open_fds:
        ready, _, _ = select.select(list(open_fds), [], [], 10)
        assert ready, "the child wrote nothing for 10 s"
        for fd in ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                open_fds.discard(fd)
                os.close(fd)
            elif fd == started.stdout:
                out += chunk
            else:
                err += chunk
    _, status = os.waitpid(started.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, (out, err)
    facts = dict(line.split("=", 1) for line in out.decode().splitlines())
    facts["pid"] = str(started.pid)
    return facts, err


def _request(tmp_path: Path, **fields: object) -> SpawnRequest:
    script = tmp_path / "probe.sh"
    script.write_text(PROBE)
    msg = {"name": "probe/0", "argv": ["sh", str(script)],
           "env": {"PATH": "/usr/bin:/bin", "ONLY": "this"}, **fields}
    return SpawnRequest.parse(msg)


@pytest.mark.parametrize("path", ["posix_spawn", "subprocess"])
def test_the_child_starts_clean_on_either_path(tmp_path: Path, devnull: int,
                                               path: str) -> None:
    work = tmp_path / "work"
    work.mkdir()
    extra = {"rlimits": {"nofile": 1024}} if path == "subprocess" else {}
    here = os.getcwd()
    facts, err = _run(_request(tmp_path, cwd=str(work), umask=0o027, **extra), devnull)
    assert facts["cwd"] == str(work)
    assert facts["umask"] == "0027"
    assert facts["sid"].split()[0] == facts["pid"]  # leads a session of its own
    # Python ignores SIGPIPE and SIGXFSZ; the service must not inherit that.
    assert int(facts["sigign"], 16) & ((1 << 12) | (1 << 24)) == 0
    assert facts["stdin"] == "/dev/null"
    assert "ONLY=this" in facts["env"] and "HOME=" not in facts["env"]
    assert err == b"oops\n"
    assert os.getcwd() == here  # the launcher stepped back out


@pytest.mark.parametrize("extra", [{}, {"rlimits": {"nofile": 1024}}])
def test_the_child_gets_stdio_and_no_other_fd(tmp_path: Path, devnull: int,
                                             extra: dict[str, object]) -> None:
    # The launcher marks what it inherited close-on-exec when it starts; so does this
    # test, whose harness may have left fds open.  ls holds the directory it lists as
    # fd 3; anything above is a leak.
    close_inherited_on_exec()
    req = SpawnRequest.parse({"name": "p/0", "argv": ["ls", "/proc/self/fd"],
                              "env": {"PATH": "/usr/bin:/bin"}, **extra})
    started = spawn(req, devnull)
    os.close(started.stderr)
    listing = b""
    while chunk := _read_blocking(started.stdout):
        listing += chunk
    os.close(started.stdout)
    os.waitpid(started.pid, 0)
    assert sorted(int(fd) for fd in listing.split()) == [0, 1, 2, 3]


def _read_blocking(fd: int) -> bytes:
    ready, _, _ = select.select([fd], [], [], 10)
    assert ready, "the child wrote nothing for 10 s"
    return os.read(fd, 65536)


def test_umask_of_the_launcher_is_left_as_it_was(tmp_path: Path, devnull: int) -> None:
    before = os.umask(0o022)
    try:
        _run(_request(tmp_path, umask=0o077), devnull)
        assert os.umask(0o022) == 0o022
    finally:
        os.umask(before)


def _program(directory: Path, name: str) -> Path:
    """An executable probe script ``directory/name`` (the directory is made)."""
    directory.mkdir(exist_ok=True)
    tool = directory / name
    tool.write_text("#!/bin/sh\n" + PROBE)
    tool.chmod(0o755)
    return tool


def test_a_relative_program_is_found_from_the_working_directory(
        tmp_path: Path, devnull: int) -> None:
    work = _program(tmp_path / "work", "probe.sh").parent
    req = SpawnRequest.parse({"name": "p/0", "argv": ["./probe.sh"], "cwd": str(work),
                              "env": {"PATH": "/usr/bin:/bin"}})
    facts, _ = _run(req, devnull)
    assert facts["cwd"] == str(work)


def test_program_is_looked_up_in_the_childs_path(tmp_path: Path, devnull: int) -> None:
    bindir = _program(tmp_path / "bin", "only-here").parent
    req = SpawnRequest.parse({"name": "p/0", "argv": ["only-here"],
                              "env": {"PATH": f"{bindir}:/usr/bin:/bin"}})
    facts, _ = _run(req, devnull)
    assert f"PATH={bindir}" in facts["env"]


def test_a_program_removed_after_a_spawn_is_an_error_next_time(
        tmp_path: Path, devnull: int) -> None:
    tool = _program(tmp_path / "bin", "gone-soon")
    bindir = tool.parent
    req = SpawnRequest.parse({"name": "p/0", "argv": ["gone-soon"],
                              "env": {"PATH": f"{bindir}:/usr/bin:/bin"}})
    _run(req, devnull)
    tool.unlink()
    with pytest.raises(SpawnError) as caught:
        spawn(req, devnull)
    assert caught.value.code == m.E_EXEC_FAILED
    assert caught.value.message == "command not found: gone-soon"
    _program(bindir, "gone-soon")  # ... and a program that appears again is found again
    _run(req, devnull)


def test_a_missing_working_directory_is_an_error_and_changes_nothing(
        tmp_path: Path, devnull: int) -> None:
    here = os.getcwd()
    fds_before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(SpawnError) as caught:
        spawn(_request(tmp_path, cwd=str(tmp_path / "nope")), devnull)
    assert caught.value.message == f"working directory not found: {tmp_path / 'nope'}"
    assert os.getcwd() == here
    assert set(os.listdir("/proc/self/fd")) == fds_before  # the pipes were closed


def test_a_file_that_is_not_executable_is_an_error(tmp_path: Path, devnull: int) -> None:
    plain = tmp_path / "plain"
    plain.write_text("echo hi\n")
    plain.chmod(plain.stat().st_mode & ~(stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH))
    req = SpawnRequest.parse({"name": "p/0", "argv": [str(plain)], "env": {}})
    with pytest.raises(SpawnError) as caught:
        spawn(req, devnull)
    assert caught.value.code == m.E_EXEC_FAILED
    assert "permission denied" in caught.value.message


def test_an_rlimit_that_cannot_be_set_is_one_line_naming_it(tmp_path: Path,
                                                             devnull: int) -> None:
    """Above the kernel's ceiling (fs.nr_open, for root too) the spawn is refused before
    the fork, with the limit's name, not "Exception occurred in preexec_fn"."""
    ceiling = int(Path("/proc/sys/fs/nr_open").read_text())
    with pytest.raises(SpawnError) as err:
        spawn(_request(tmp_path, rlimits={"nofile": ceiling + 1}), devnull)
    assert err.value.code == m.E_EXEC_FAILED
    assert err.value.message == (f"rlimit nofile {ceiling + 1} is above the kernel's "
                                 f"ceiling fs.nr_open = {ceiling}")


def test_a_program_moved_to_another_path_directory_is_found_there(
        tmp_path: Path, devnull: int) -> None:
    """The path found for a program is used again without a check; when the program has
    gone from there, the next spawn looks it up again and starts the one now found."""
    first = _program(tmp_path / "a", "moving")
    later = tmp_path / "b"
    later.mkdir()
    req = SpawnRequest.parse({"name": "p/0", "argv": ["moving"],
                              "env": {"PATH": f"{first.parent}:{later}:/usr/bin:/bin"}})
    _run(req, devnull)
    first.unlink()
    moved = later / "moving"
    moved.write_text("#!/bin/sh\necho where=b\n" + PROBE)
    moved.chmod(0o755)
    facts, _ = _run(req, devnull)
    assert facts["where"] == "b"


def test_a_spawn_takes_spare_pipes_made_in_advance(tmp_path: Path, devnull: int) -> None:
    """The output pipes made before the spawn are the child's: it writes into them, the
    read ends are non-blocking and its stdout is not."""
    spares = SparePipes()
    spares.refill()
    assert len(spares) == SPARES
    req = SpawnRequest.parse({"name": "p/0", "argv": ["sh", "-c", "echo out; echo err >&2;"
                                                      " cat /proc/self/fdinfo/1"],
                              "env": {"PATH": "/usr/bin:/bin"}})
    started = spawn(req, devnull, spares=spares)
    assert len(spares) == 0
    assert not os.get_blocking(started.stdout) and not os.get_blocking(started.stderr)
    out = b""
    while chunk := _read_blocking(started.stdout):
        out += chunk
    assert _read_blocking(started.stderr) == b"err\n"
    os.close(started.stdout)
    os.close(started.stderr)
    os.waitpid(started.pid, 0)
    lines = out.decode().splitlines()
    assert lines[0] == "out"
    flags = int(next(line for line in lines if line.startswith("flags:")).split()[1], 8)
    assert flags & os.O_NONBLOCK == 0  # the child's stdout blocks, as anywhere else
    again = spawn(req, devnull, spares=spares)  # none left: it makes its own
    assert _read_blocking(again.stdout).startswith(b"out\n")
    for fd in (again.stdout, again.stderr):
        os.close(fd)
    os.waitpid(again.pid, 0)


@pytest.mark.parametrize("extra", [{}, {"rlimits": {"nofile": 1024}}])
def test_a_child_does_not_inherit_the_launchers_batch_policy(
        tmp_path: Path, devnull: int, extra: dict[str, object]) -> None:
    """The launcher runs SCHED_BATCH (it never preempts a dying service); what it starts,
    on either spawn path, runs the default policy."""
    if not sched.lower_wakeups():
        pytest.skip("this process does not run the default policy")
    try:
        assert os.sched_getscheduler(0) == os.SCHED_BATCH
        req = SpawnRequest.parse({"name": "p/0", "argv": ["sh", "-c", "read x"],
                                  "env": {"PATH": "/usr/bin:/bin"}, **extra})
        write_end, stdin = os.pipe()
        started = spawn(req, stdin)
        try:
            assert os.sched_getscheduler(started.pid) == os.SCHED_OTHER
        finally:
            os.close(write_end)
            os.close(stdin)
            os.waitpid(started.pid, 0)
            os.close(started.stdout)
            os.close(started.stderr)
    finally:
        sched.restore()
    assert os.sched_getscheduler(0) == os.SCHED_OTHER
