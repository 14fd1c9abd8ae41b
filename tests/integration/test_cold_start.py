"""Cold start through ``sup run --target``: what the file lists runs, and is kept.

The supervisor saves the file's target (its own text, one write) before it sends the
first Spawn, so a supervisor killed at any moment leaves a target that wants what runs;
these tests pin down that the saved state is complete.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import yaml

from .conftest import Corral, wait_for

SERVICES = 40


def _target(tmp_path: Path) -> Path:
    target = tmp_path / "many.yaml"
    entries = [{"name": f"s{i}", "command": ["sleep", str(3000 + i)]} for i in range(SERVICES)]
    target.write_text(json.dumps({"processes": entries}))
    return target


def test_target_is_saved_before_the_api_answers(corral_factory: Callable[[], Corral],
                                                tmp_path: Path) -> None:
    """Every service of the file runs, and ``target.yaml`` lists them all as soon as the
    API answers (the same processes, in the file's order)."""
    corral = corral_factory()
    corral.start("--target", str(_target(tmp_path)))
    saved = yaml.safe_load((corral.state_dir / "target.yaml").read_text())
    assert [p["name"] for p in saved["processes"]] == [f"s{i}" for i in range(SERVICES)]
    wait_for(lambda: all(s["running"] == 1 for s in corral.status()), 30,
             what=f"all {SERVICES} services running")
    assert [s["name"] for s in corral.status()] == [f"s{i}" for i in range(SERVICES)]


def test_a_supervisor_restart_keeps_the_file_services(corral_factory: Callable[[], Corral],
                                                      tmp_path: Path) -> None:
    """The launcher passes ``--target`` to the first supervisor only: the next one (after
    ``sup restart``) finds the services in the saved target and adopts them, same pids."""
    corral = corral_factory()
    corral.start("--target", str(_target(tmp_path)))
    wait_for(lambda: all(s["running"] == 1 for s in corral.status()), 30,
             what=f"all {SERVICES} services running")
    pids = {s["name"]: s["pid"] for s in corral.status()}
    old = corral.sup_status()["supervisor_pid"]
    corral.ok("sup", "restart")
    wait_for(lambda: corral.answers() and corral.sup_status()["supervisor_pid"] != old, 30,
             what="a new supervisor")
    assert {s["name"]: s["pid"] for s in corral.status()} == pids
    assert all(s["restarts"] == 0 for s in corral.status())
