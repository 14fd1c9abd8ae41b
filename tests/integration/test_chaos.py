"""A short chaos soak (``python -m bench chaos`` runs the long one): services outlive every
fault of corral's own — its supervisor killed at random moments (also mid state write,
mid rollout, mid start-up) or stopped for seconds, its log disk full, a health check
flapping — and nothing is lost, duplicated, refused or torn.

The figures come from ground truth (the services' own pid records, the log files against
the counter's own count, the HTTP client's own results, every state file loaded with
corral's readers); see ``bench/chaos/``.  The fault schedule is seeded, so a failure can be
replayed with ``python -m bench chaos --minutes 0.5 --seed 15 --no-docs``.  No timing is
asserted: how long the crash-looper stayed down is reported, not judged.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
from bench.chaos import soak

from .conftest import PY, Corral, wait_for

pytestmark = pytest.mark.slow


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs (needs root)")
@pytest.mark.timeout(150)
def test_services_outlive_supervisor_kills_stops_a_full_disk_and_flapping_health(
        tmp_path: Path) -> None:
    outcome = soak.run(soak.Options(seconds=30, seed=15, proc_connector=False,
                                    scratch=tmp_path))
    report = json.dumps({k: v for k, v in outcome.as_dict().items() if k != "fault_log"},
                        indent=1)
    # The soak did what it is for: the supervisor was killed, the disk filled.
    assert outcome.kills >= 3 and outcome.faults.get("fill", 0) >= 1, report
    assert outcome.corral_restarts == 0 and not outcome.not_running_at_end, report
    log = outcome.log
    assert log["written"] > 0 and log["present"] > 0, report
    assert log["lost"] == 0 and log["duplicated"] == 0, report
    assert log["torn"] == 0 and log["foreign"] == 0 and log["over_reported"] == 0, report
    assert outcome.requests_ok > 0 and outcome.requests_failed == 0, report
    assert outcome.state_files_loaded > 0 and outcome.state_files_unloadable == 0, report


def test_temporary_files_of_writes_cut_by_a_kill_are_removed_by_the_next_supervisor(
        corral: Corral, tmp_path: Path) -> None:
    """A supervisor killed between creating a state file's temporary file and renaming it
    leaves ``.<file>.tmp<its pid>``, which no later supervisor (another pid) would ever
    write again: the soak found one per kill mid-write.  The next supervisor removes them;
    a service's own files in its working directory are not the supervisor's and stay."""
    corral.ok("svc", "load", "sleeper", "--", "sleep", "3600")
    corral.wait_state("sleeper", "up")
    dead = _dead_pid()
    state = corral.state_dir
    leftovers = [state / f".desired.json.tmp{dead}", state / "run" / f".ports.json.tmp{dead}",
                 state / f".secrets.json.tmp{dead}", state / f".event-seq.json.tmp{dead}"]
    for path in leftovers:
        path.write_text('{"format": 1, "do')  # cut short, as a kill leaves it
    workdir = state / "run" / "sleeper" / "0"
    own = workdir / f".data.json.tmp{dead}"
    workdir.mkdir(parents=True, exist_ok=True)
    own.write_text("the service's own")
    before = corral.sup_status()["supervisor_pid"]
    os.kill(before, signal.SIGKILL)
    wait_for(lambda: corral.answers() and corral.sup_status()["supervisor_pid"] != before,
             30, "a new supervisor")
    assert [p.name for p in leftovers if p.exists()] == []
    assert own.read_text() == "the service's own"
    assert corral.status("sleeper")["restarts"] == 0


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_deep_state_directory_serves_the_api_and_the_balancer(tmp_path: Path) -> None:
    """A Unix socket's path has room for 107 bytes.  A state directory deep enough that
    ``run/balancer.sock`` passed that came up with every service "up" and a balancer that
    died at every start ("AF_UNIX path too long"), so nothing listened on any service's
    address (the soak met it through pytest's long temporary paths); ``api.sock`` 9 bytes
    further and the supervisor could not start.  Both are reached through
    ``/proc/self/fd`` now, as the CLI already connected."""
    base = tmp_path / "s"
    base.mkdir()
    state = base / ("d" * (112 - len(str(base)) - len("/api.sock")))
    assert 107 < len(str(state / "api.sock")) < len(str(state / "run" / "balancer.sock"))
    c = Corral(state)
    c.start()
    try:
        port = soak.free_port()
        target = tmp_path / "target.yaml"
        target.write_text(f"""\
processes:
  - name: web
    command: [{PY}, -m, http.server, --bind, 127.0.0.1, "${{SERVICE_PORT_WEB}}"]
    receives: [web]
services:
  - name: web
    on: 127.0.0.1:{port}
""")
        c.ok("target", "set", str(target))
        c.wait_state("web", "up")
        wait_for(lambda: soak.get_ok(port), 30, "an answer through the balancer")
    finally:
        c.stop()
