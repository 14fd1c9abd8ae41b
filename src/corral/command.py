"""A short command (a hook, an exec health check) run from the supervisor's event loop.

Why not ``asyncio.create_subprocess_exec``: the supervisor runs on uvloop (its wake-ups
are about 0.1 ms sooner on the restart path), and uvloop's subprocesses fork the whole
supervisor (5 ms a command at 80 MB of heap, against 0.9 ms with asyncio's) and refuse
the ``user``/``group`` arguments.  Here ``subprocess.Popen`` starts the command, as
asyncio itself does (``vfork`` when no user switch is asked for), and the loop watches
its output pipe and a pidfd for its exit, so nothing blocks.  Where ``pidfd_open`` is
refused (a kernel before 5.3, a seccomp filter) the exit is polled every 50 ms instead.

The command runs in a session of its own with stdin on /dev/null and stderr merged into
stdout; a timeout or a cancellation kills its whole process group.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import os
import pwd
import signal
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple


class Finished(NamedTuple):
    """How a command ended: its pid, its exit code (negative: killed by that signal; None
    if it timed out) and everything it wrote."""

    pid: int
    code: int | None
    output: bytes

    @property
    def timed_out(self) -> bool:
        return self.code is None


def drop_to(user: str | None, group: str | None) -> dict[str, Any]:
    """``subprocess.Popen`` arguments that run a command as ``user`` (with its own group
    unless ``group`` is given, and no supplementary groups): what the launcher does for
    the service itself.  Raises ``ValueError`` (one line, for a person) for a user or
    group this host does not have."""
    if user is None:
        return {} if group is None else {"group": _gid(group)}
    try:
        entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        raise ValueError(f"user {user!r} does not exist on this host") from None
    return {"user": entry.pw_uid,
            "group": _gid(group) if group is not None else entry.pw_gid,
            "extra_groups": []}


def _gid(group: str) -> int:
    try:
        return int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
    except KeyError:
        raise ValueError(f"group {group!r} does not exist on this host") from None


async def run(argv: Sequence[str], *, env: Mapping[str, str], cwd: str | None,
              user: str | None = None, group: str | None = None,
              timeout: float | None = None) -> Finished:
    """Run ``argv`` to its end (and the end of its output), or until ``timeout``.

    Error handling: a command that cannot start raises what ``subprocess.Popen`` raises
    (``OSError``, ``subprocess.SubprocessError``, ``ValueError``, also for an unknown user
    or group).  On timeout the process group is killed and the result has
    ``code`` None; on cancellation it is killed too, reaped, and the cancellation goes on.
    """
    proc = subprocess.Popen(
        list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, env=dict(env), cwd=cwd, start_new_session=True,
        **drop_to(user, group))
    assert proc.stdout is not None
    loop = asyncio.get_running_loop()
    out_fd = proc.stdout.fileno()
    os.set_blocking(out_fd, False)
    output = bytearray()
    eof: asyncio.Future[None] = loop.create_future()
    exited: asyncio.Future[None] = loop.create_future()

    def on_output() -> None:
        try:
            chunk = os.read(out_fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if chunk:
            output.extend(chunk)
        else:
            loop.remove_reader(out_fd)
            if not eof.done():
                eof.set_result(None)

    loop.add_reader(out_fd, on_output)
    pidfd = _watch_exit(loop, proc, exited)
    try:
        try:
            async with asyncio.timeout(timeout):
                await asyncio.gather(eof, exited)
            proc.wait()  # a zombie by now: returns at once
            return Finished(proc.pid, proc.returncode, bytes(output))
        except TimeoutError:
            _kill(proc)
            await _reaped(proc, exited)
            return Finished(proc.pid, None, bytes(output))
        except asyncio.CancelledError:
            _kill(proc)
            await _reaped(proc, exited)
            raise
    finally:
        loop.remove_reader(out_fd)
        proc.stdout.close()
        if pidfd is not None:
            loop.remove_reader(pidfd)
            os.close(pidfd)


def _watch_exit(loop: asyncio.AbstractEventLoop, proc: subprocess.Popen[bytes],
                exited: asyncio.Future[None]) -> int | None:
    """Resolve ``exited`` when the process exits: a pidfd in the loop, else a poll."""
    def done() -> None:
        if not exited.done():
            exited.set_result(None)
    try:
        pidfd = os.pidfd_open(proc.pid)
    except OSError:  # no pidfd_open (a kernel before 5.3, a seccomp filter): poll it
        async def poll() -> None:
            while proc.poll() is None:
                await asyncio.sleep(0.05)
            done()
        task = asyncio.ensure_future(poll())
        exited.add_done_callback(lambda _: task.cancel())
        return None
    loop.add_reader(pidfd, done)
    return pidfd


def _kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


async def _reaped(proc: subprocess.Popen[bytes], exited: asyncio.Future[None]) -> None:
    """Wait (a few ms after SIGKILL) for the process to exit and reap it, even while
    being cancelled."""
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.shield(exited)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=1)
