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
from pathlib import Path

import pytest
from bench.chaos import soak

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs (needs root)")]


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
