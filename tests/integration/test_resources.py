"""Resource sampling and limits on real process trees."""

from __future__ import annotations

import json
from pathlib import Path

from .conftest import PY, Corral, wait_for

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
