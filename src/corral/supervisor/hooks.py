"""Running a service's hooks: ``/bin/sh -c`` as the service's user, with its environment
and working directory, never longer than the hook's timeout, output into the service's log.

A hook runs in a task of its own, so a slow hook delays nothing but its instance.  Its
output is appended to ``<state>/logs/<service>.log`` once it ends, as stamped records
tagged ``[hook NAME]``, in one write (``O_APPEND``, so it never splits a record the
launcher is writing).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from corral import command

from .clock import Clock
from .events import rfc3339


@dataclass(frozen=True)
class HookResult:
    ok: bool
    summary: str
    output: list[str]


async def run_hook(hook: str, command_line: str, *, env: Mapping[str, str], cwd: str,
                   user: str | None, group: str | None, timeout: float,
                   log: Path, clock: Clock) -> HookResult:
    """Run one hook; the result says how it ended (exit status, timeout or spawn error)."""
    started = clock.monotonic()
    try:
        done = await command.run(["/bin/sh", "-c", command_line], env=env, cwd=cwd,
                                 user=user, group=group, timeout=timeout)
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        return HookResult(False, f"hook {hook} could not start: {exc}", [])
    output, code, timed_out = done.output, done.code, done.timed_out
    lines = output.decode(errors="replace").splitlines()
    _append(log, done.pid, hook, lines, clock.time())
    took = clock.monotonic() - started
    if timed_out:
        return HookResult(False, f"hook {hook} timed out after {timeout:g}s", lines[-5:])
    if code == 0:
        return HookResult(True, f"hook {hook} succeeded in {took:.2f}s", lines[-5:])
    what = f"killed by signal {-code}" if code is not None and code < 0 else f"exited {code}"
    return HookResult(False, f"hook {hook} {what}", lines[-5:])


def _append(log: Path, pid: int, hook: str, lines: list[str], now: float) -> None:
    if not lines:
        return
    prefix = f"{rfc3339(now)} {pid} E [hook {hook}] "
    data = "".join(prefix + line[:65000] + "\n" for line in lines).encode()
    try:
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
    except OSError:
        return
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
