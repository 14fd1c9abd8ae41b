"""Health probes: ``http``, ``tcp`` and ``exec``, each bounded by the check's timeout.

A probe never runs on the control loop's time: it is a coroutine the checker awaits under
``asyncio.wait_for``, so a check that hangs costs its own task only.  An ``exec`` check
is ok when it exits 0 and critical otherwise, as systemd, Docker and Kubernetes read a
command; with ``exec_codes: habitat`` it uses Habitat's codes, 0 (ok), 1 (warning),
2 (critical) or anything else (unknown).  ``http`` is ok on a 2xx answer and critical
otherwise; ``tcp`` is ok when the connection is accepted.  A probe that times out is
critical.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass

from corral import command
from corral.spec.models import HealthSpec
from corral.states import HealthState

_HABITAT = {0: HealthState.OK, 1: HealthState.WARNING, 2: HealthState.CRITICAL}
#: The exit code an exec check killed by a signal counts as.
KILLED_BY_SIGNAL = -1
#: The status of an http check that got no HTTP answer at all.
_NO_ANSWER = 0


def exec_state(code: int, codes: str) -> HealthState:
    """The health an exec check's exit status means under ``exec_codes`` (``standard`` or
    ``habitat``); a check killed by a signal is given as :data:`KILLED_BY_SIGNAL`."""
    if codes == "habitat":
        return _HABITAT.get(code, HealthState.UNKNOWN)
    return HealthState.OK if code == 0 else HealthState.CRITICAL


@dataclass(frozen=True)
class Result:
    """One probe's verdict and a few words on why."""

    state: HealthState
    detail: str


async def probe(spec: HealthSpec, env: Mapping[str, str], cwd: str | None,
                host: str = "127.0.0.1", user: str | None = None,
                group: str | None = None) -> Result:
    """Run the check once, never longer than ``spec.timeout`` seconds; an exec check runs
    as ``user``/``group`` (the service's), as Habitat runs its health-check hook."""
    try:
        return await asyncio.wait_for(_run(spec, env, cwd, host, user, group), spec.timeout)
    except TimeoutError:
        return Result(HealthState.CRITICAL, f"{spec.kind} check timed out after "
                                            f"{spec.timeout:g}s")


async def _run(spec: HealthSpec, env: Mapping[str, str], cwd: str | None,
               host: str, user: str | None, group: str | None) -> Result:
    if spec.tcp is not None:
        return await _tcp(host, spec.tcp.port)
    if spec.http is not None and spec.http.port is not None:
        return await _http(host, spec.http.port, spec.http.path)
    assert spec.exec is not None
    return await _exec(spec.exec, env, cwd, user, group, spec.exec_codes)


async def _tcp(host: str, port: int) -> Result:
    try:
        _, writer = await asyncio.open_connection(host, port)
    except OSError as exc:
        return Result(HealthState.CRITICAL, f"tcp {host}:{port}: {exc.strerror or exc}")
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return Result(HealthState.OK, f"tcp {host}:{port} accepted")


async def _http(host: str, port: int, path: str) -> Result:
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError as exc:
        return Result(HealthState.CRITICAL, f"GET {path} on port {port}: "
                                            f"{exc.strerror or exc}")
    try:
        writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\n"
                     "User-Agent: corral-health\r\n\r\n".encode())
        status_line = await reader.readline()
    except OSError as exc:
        return Result(HealthState.CRITICAL, f"GET {path} on port {port}: {exc}")
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    parts = status_line.decode("latin-1").split()
    code = int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else _NO_ANSWER
    if 200 <= code < 300:
        return Result(HealthState.OK, f"GET {path} -> {code}")
    shown = code or "no HTTP answer"
    return Result(HealthState.CRITICAL, f"GET {path} on port {port} -> {shown}")


async def _exec(argv: list[str], env: Mapping[str, str], cwd: str | None,
                user: str | None = None, group: str | None = None,
                codes: str = "standard") -> Result:
    try:
        # No timeout here: the caller's wait_for cancels the check, and a cancelled
        # command.run kills the check's process group (and anything it started).
        done = await command.run(argv, env=env, cwd=cwd, user=user, group=group)
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        failed = HealthState.UNKNOWN if codes == "habitat" else HealthState.CRITICAL
        return Result(failed, f"cannot run {argv[0]}: {why}")
    code = done.code if done.code is not None else KILLED_BY_SIGNAL
    text = done.output.decode(errors="replace").strip().splitlines()
    last = text[-1][:200] if text else ""
    state = exec_state(code, codes)
    return Result(state, f"check exited {code}" + (f": {last}" if last else ""))
