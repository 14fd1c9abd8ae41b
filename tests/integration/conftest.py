"""Fixtures that run a real corral: launcher, supervisor, CLI and children.

``corral`` starts ``corral sup run`` on a fresh state directory and stops it after the
test (SIGTERM, then SIGKILL of the whole process group if it hangs).  Helpers wait by
polling with a deadline, never by sleeping a fixed time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

PY = sys.executable


def wait_for(predicate: Callable[[], Any], timeout: float = 15.0, what: str = "condition",
             interval: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except Exception as exc:  # the system under test may be between states
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


class Corral:
    """A running corral on its own state directory, driven through its CLI."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.output = state_dir.parent / "launcher.out"
        self.env = {**os.environ, "CORRAL_HOME": str(state_dir), "NO_COLOR": "1"}

    def start(self, *extra: str, env: dict[str, str] | None = None) -> None:
        with self.output.open("ab") as out:
            self.proc = subprocess.Popen(
                [PY, "-m", "corral", "sup", "run", "--state-dir", str(self.state_dir), *extra],
                stdout=out, stderr=subprocess.STDOUT, env={**self.env, **(env or {})},
                start_new_session=True)
        wait_for(self.answers, 30, "the API to answer")

    def answers(self) -> bool:
        return self.run("sup", "status", "--json").returncode == 0

    def run(self, *args: str, input: str | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run ``corral ARGS`` and return the completed process (text)."""
        return subprocess.run([PY, "-m", "corral", *args], capture_output=True, text=True,
                              env=self.env, timeout=timeout, input=input)

    def ok(self, *args: str) -> str:
        """Run ``corral ARGS``, assert it succeeded, return stdout."""
        result = self.run(*args)
        assert result.returncode == 0, f"corral {' '.join(args)}: {result.stderr}"
        return result.stdout

    def status(self, name: str | None = None) -> Any:
        # `svc status NAME` exits 1 when the service is not running, and still prints it.
        result = self.run("svc", "status", "--json", *([name] if name else []))
        assert result.returncode in (0, 1) and result.stdout, result.stderr
        data = json.loads(result.stdout)
        return data[0] if name else data

    def sup_status(self) -> dict[str, Any]:
        return json.loads(self.ok("sup", "status", "--json"))  # type: ignore[no-any-return]

    def log_lines(self, name: str) -> list[str]:
        path = self.state_dir / "logs" / f"{name}.log"
        return path.read_text().splitlines() if path.exists() else []

    def wait_state(self, name: str, state: str, timeout: float = 15.0) -> dict[str, Any]:
        return wait_for(lambda: (s := self.status(name))["state"] == state and s,  # type: ignore[no-any-return]
                        timeout, f"{name} to be {state}")

    def stop(self) -> int | None:
        """Stop the launcher (SIGTERM) and return its exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture
def corral(tmp_path: Path) -> Iterator[Corral]:
    """A started corral; everything it runs is gone after the test."""
    instance = Corral(tmp_path / "state")
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture
def corral_factory(tmp_path: Path) -> Iterator[Callable[[], Corral]]:
    """A not-yet-started corral, for tests that control the launcher's start."""
    made: list[Corral] = []

    def make() -> Corral:
        c = Corral(tmp_path / "state")
        made.append(c)
        return c
    yield make
    for c in made:
        c.stop()


def python_cmd(code: str) -> list[str]:
    """argv running a Python snippet, unbuffered."""
    return [PY, "-u", "-c", code]


# Real etcd for tests/integration/test_etcd_*.py (single member, 3-member cluster, TLS).
from .etcd_fixtures import etcd, etcd_cluster, etcd_factory  # noqa: E402, F401

# Hosts in network namespaces on a bridge, each running a real corral (test_cluster_hosts.py).
from .netns_fixtures import cluster_hosts, netns_network  # noqa: E402, F401
