"""Resource sampling and limits on real process trees."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from .conftest import PY, Corral, wait_for
from .test_metrics import get

BURN = "import time\nwhile True:\n    pass\n"
GROW = ("import time\nblocks = []\n"
        "for _ in range(40):\n"
        "    blocks.append(bytearray(8 * 1024 * 1024)); time.sleep(0.05)\n"
        "print('grown', flush=True)\ntime.sleep(1000)\n")


def test_cpu_and_rss_of_the_whole_tree_are_shown(corral: Corral, tmp_path: Path) -> None:
    """`svc status` shows CPU % and RSS, counting the service's children too."""
    script = tmp_path / "burn.py"
    script.write_text(BURN)
    corral.ok("svc", "load", "busy", "--", "sh", "-c", f"{PY} {script} & wait")
    status = wait_for(lambda: (s := corral.status("busy"))["cpu"] is not None
                      and s["cpu"] > 30 and s, 30, "the child's CPU to show")
    assert status["rss"] > 1024 * 1024
    assert status["instance_list"][0]["cpu"] > 30


def test_memory_limit_restarts_with_an_event(corral: Corral, tmp_path: Path) -> None:
    """Past its memory limit for the grace period an instance is restarted, and the event
    names the limit and the measured value."""
    script = tmp_path / "grow.py"
    script.write_text(GROW)
    (tmp_path / "hog.yaml").write_text(
        f"name: hog\ncommand: [{PY}, {script}]\nlimits: {{memory: 100MiB, grace: 0s}}\n")
    corral.ok("svc", "load", "-f", str(tmp_path / "hog.yaml"))
    first = corral.status("hog")["pid"]
    event = wait_for(lambda: [e for e in map(json.loads, corral.ok(
        "events", "--service", "hog", "--json", "-n", "200").splitlines())
        if e["kind"] == "limit"], 60, "a limit event")[0]
    assert "memory" in event["reason"] and "100MiB" in event["reason"]
    wait_for(lambda: corral.status("hog")["pid"] not in (None, first), 30, "a new pid")


BURST = ("import signal, time\n"
         "def burn(*_):\n"
         "    end = time.time() + 4\n"
         "    while time.time() < end: pass\n"
         "signal.signal(signal.SIGUSR1, burn)\n"
         "while True: signal.pause()\n")


def test_cpu_falls_to_zero_when_a_service_goes_idle_and_history_keeps_points(
        corral: Corral, tmp_path: Path) -> None:
    """An idle service's CPU reads 0 (the sampler hands back its last reading, unread);
    a burst shows, then falls back to 0; ``/v1/services/NAME/history`` has the points."""
    script = tmp_path / "burst.py"
    script.write_text(BURST)
    corral.ok("svc", "load", "bursty", "--", PY, str(script))
    # The instance's own figure: None until two readings, then 0 while it sleeps.
    wait_for(lambda: corral.status("bursty")["instance_list"][0]["cpu"] == 0, 30,
             "an idle reading of 0 %")
    os.kill(corral.status("bursty")["pid"], signal.SIGUSR1)
    wait_for(lambda: (corral.status("bursty")["cpu"] or 0) > 30, 30, "the burst to show")
    wait_for(lambda: corral.status("bursty")["cpu"] == 0, 30, "CPU back to 0 %")
    status, _, body = get(corral, "/v1/services/bursty/history")
    assert status == 200, body
    points = json.loads(body)["instances"][0]["points"]
    assert points and all(p["rss"] > 0 for p in points), points
