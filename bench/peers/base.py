"""The interface every supervisor under test implements.

A :class:`Peer` instance owns one scratch directory (``root``) and at most one running
supervisor. The workloads only use this interface, so every peer gets the same
service (``sleep <marker>`` or the log writer) and the same measurement.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from bench import procs

SLEEP = "/usr/bin/sleep"


class PeerUnavailableError(Exception):
    """The peer could not be installed or started; the message is the reason."""


@dataclass(frozen=True)
class Service:
    """One supervised program. ``capture``: its stdout goes to the peer's log file."""

    name: str
    argv: tuple[str, ...]
    capture: bool = False


def sleep_service(i: int, marker: int) -> Service:
    return Service(f"s{i}", (SLEEP, str(marker)))


class Peer(ABC):
    """A supervisor under test. Subclasses set ``name`` and implement the hooks."""

    name: ClassVar[str]
    #: minimum life of a child before it is killed (s6/runit throttle younger ones)
    restart_min_wait: ClassVar[float] = 0.3
    #: exit codes of the status command that are an answer (supervisorctl: 3 = not all up)
    status_ok_rc: ClassVar[frozenset[int]] = frozenset({0})

    def __init__(self, scratch: Path, tag: str) -> None:
        self.scratch = scratch
        self.root = scratch / "runs" / f"{re.sub(r'[^A-Za-z0-9_.=-]+', '-', self.label)}-{tag}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.services: list[Service] = []
        self.started_at = 0.0

    # ----- description -------------------------------------------------------
    @property
    def label(self) -> str:
        """Name in tables; variants add their setting, e.g. ``corral(raw)``."""
        return self.name

    @classmethod
    @abstractmethod
    def install(cls, scratch: Path) -> str:
        """Install or find the peer; return its version. Raise PeerUnavailableError."""

    @abstractmethod
    def render(self, services: Sequence[Service]) -> dict[str, str]:
        """Config files (path relative to root -> text) for these services."""

    @abstractmethod
    def launch_argv(self) -> list[str]:
        """The command that starts the supervisor in the foreground (or daemonizes)."""

    @abstractmethod
    def status_argv(self) -> list[str]:
        """The whole-command status of every service."""

    def env(self) -> dict[str, str]:
        """Environment for the supervisor and its commands."""
        return dict(os.environ)

    def log_files(self, service: Service) -> list[Path]:
        """The service's captured output, oldest first (rotated files, then current)."""
        raise NotImplementedError

    # ----- life cycle ----------------------------------------------------------
    def prepare(self, services: Sequence[Service]) -> None:
        """Write a fresh root with the config files (not timed)."""
        if self.root.exists():
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True)
        self.services = list(services)
        for rel, text in self.render(services).items():
            path = self.root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            if text.startswith("#!"):
                path.chmod(0o755)

    def start(self) -> None:
        """Start the supervisor cold (call :meth:`prepare` first)."""
        self.started_at = time.monotonic()
        out = open(self.root / "supervisor.out", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            self.launch_argv(), env=self.env(), cwd=self.root, stdin=subprocess.DEVNULL,
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
        out.close()

    def root_pids(self) -> list[int]:
        """The supervisor's top processes (daemonizing peers override this)."""
        return [self.proc.pid] if self.proc and self.proc.poll() is None else []

    def own_pids(self) -> list[int]:
        return procs.own_processes(self.root_pids())

    def alive(self) -> bool:
        return bool(self.root_pids())

    def status(self, timeout: float = 60) -> tuple[float, int, str]:
        """Run the status command: (seconds, exit code, first output line)."""
        t0 = time.perf_counter()
        r = subprocess.run(
            self.status_argv(), env=self.env(), cwd=self.root, capture_output=True,
            timeout=timeout, check=False,
        )
        dt = time.perf_counter() - t0
        first = (r.stdout or r.stderr).decode(errors="replace").strip().splitlines()
        return dt, r.returncode, first[0] if first else ""

    def request_stop(self) -> None:
        """Ask for a graceful stop of everything (default: SIGTERM the supervisor)."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 60) -> float | None:
        """Graceful stop; seconds until no service and no supervisor process remain."""
        t0 = time.monotonic()
        everything = procs.tree(self.root_pids())
        self.request_stop()
        ok = procs.wait_gone(everything, timeout)
        if self.proc:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
        dt = time.monotonic() - t0
        self.cleanup()
        return dt if ok else None

    def cleanup(self) -> None:
        """Kill whatever is left of this instance (never fails)."""
        procs.kill_tree(self.root_pids())
        if self.proc:
            with contextlib.suppress(OSError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
        marks = {s.argv[-1] for s in self.services if s.argv and s.argv[0] == SLEEP}
        for pid in procs.pids_matching(lambda a: len(a) >= 2 and a[0] == SLEEP and a[-1] in marks):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)

    def supervisor_output(self, limit: int = 400) -> str:
        """Tail of the supervisor's own stdout/stderr, for error reports."""
        try:
            text = (self.root / "supervisor.out").read_text(errors="replace")
        except OSError:
            return ""
        return " ".join(text.strip().splitlines()[-3:])[-limit:]
