"""A bad CORRAL_* variable stops ``sup run`` before anything starts, instead of failing
later (a bad shutdown bound used to be read only while stopping, and the services were
left running)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from .conftest import Corral, pid_alive, wait_for


def test_a_bad_shutdown_timeout_is_refused_at_start(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = {**os.environ, "CORRAL_SHUTDOWN_TIMEOUT": "soon"}
    result = subprocess.run([sys.executable, "-m", "corral", "sup", "run", "--state-dir",
                             str(state)], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "corral: CORRAL_SHUTDOWN_TIMEOUT='soon': give a number of seconds above 0 (default 90)"]
    assert not (state / "api.sock").exists()


def test_a_good_shutdown_timeout_bounds_the_stop(tmp_path: Path) -> None:
    """The bound is used: a supervisor that cannot stop the services (stopped with
    SIGSTOP) is overruled once it passes, and the launcher stops them itself."""
    (tmp_path / "c").mkdir()
    corral = Corral(tmp_path / "c" / "state")
    corral.start(env={"CORRAL_SHUTDOWN_TIMEOUT": "1"})
    try:
        corral.ok("svc", "load", "web", "--", "sleep", "3600")
        pid = corral.wait_state("web", "up")["pid"]
        sup = corral.sup_status()["supervisor_pid"]
        os.kill(sup, signal.SIGSTOP)  # it can no longer stop anything
        assert corral.proc is not None
        corral.proc.terminate()
        corral.proc.wait(timeout=60)
        wait_for(lambda: not pid_alive(pid), 30, "web stopped")
    finally:
        corral.stop()
