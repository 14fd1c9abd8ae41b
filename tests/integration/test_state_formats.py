"""State directories across releases, through a real `corral sup run`: the previous
release's directory (``tests/fixtures/state/v1``) runs and is migrated; a newer format is
refused in one line, before anything starts, and a running corral keeps its services."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import PY, Corral, pid_alive, wait_for

pytestmark = pytest.mark.slow

V1 = Path(__file__).parent.parent / "fixtures" / "state" / "v1"
VERSIONED = ("desired.json", "rollout.json", "secrets.json", "resources/index.json",
             "run/ports.json", "run/spawn_base.json")


def v1_state(tmp_path: Path) -> Path:
    state = tmp_path / "state"
    shutil.copytree(V1, state)
    return state


def set_format(path: Path, value: int) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), "format": value}))


def refusal(state: Path) -> str:
    return (f"corral-supervisor: {state / 'desired.json'} has format 7; this corral ")


def test_the_previous_releases_state_directory_runs_and_gets_versions(
        tmp_path: Path, corral_factory: Callable[[], Corral]) -> None:
    state = v1_state(tmp_path)
    target = (state / "target.yaml").read_text()
    corral = corral_factory()
    corral.start()
    corral.wait_state("app", "up")
    assert corral.status("idle")["desired"] == "down"  # desired.json was read
    wait_for(lambda: any(line.endswith("app hello") for line in corral.log_lines("app")),
             what="the secret in app's line")
    for name in VERSIONED:
        assert json.loads((state / name).read_text())["format"] == 1, name
    assert corral.ok("target", "get") == target
    assert (state / "target.yaml").read_text() == target


def test_sup_run_on_a_newer_state_directory_says_so_and_starts_nothing(
        tmp_path: Path) -> None:
    state = v1_state(tmp_path)
    set_format(state / "desired.json", 7)
    before = (state / "desired.json").read_bytes()
    result = subprocess.run([PY, "-m", "corral", "sup", "run", "--state-dir", str(state)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines()
             if line.startswith("corral-supervisor:")]
    assert len(lines) == 1 and lines[0].startswith(refusal(state)), result.stderr
    assert lines[0].endswith("reads up to 1: upgrade corral or use a new state directory")
    assert "Traceback" not in result.stderr + result.stdout
    assert not (state / "logs" / "app.log").exists()  # nothing started
    assert (state / "desired.json").read_bytes() == before


def test_a_running_corral_meeting_a_newer_state_directory_keeps_its_services(
        tmp_path: Path, corral_factory: Callable[[], Corral]) -> None:
    state = v1_state(tmp_path)
    corral = corral_factory()
    corral.start()
    pid = corral.wait_state("app", "up")["instance_list"][0]["pid"]
    good = (state / "desired.json").read_bytes()
    set_format(state / "desired.json", 7)

    corral.ok("sup", "restart")
    wait_for(lambda: refusal(state) in corral.output.read_text(), what="the refusal")
    wait_for(lambda: not corral.answers(), what="no supervisor")
    assert pid_alive(pid)
    assert corral.proc is not None and corral.proc.poll() is None  # the launcher stays

    # Back to a format it reads (a compatible corral installed): SIGHUP starts one again.
    (state / "desired.json").write_bytes(good)
    assert corral.proc is not None
    corral.proc.send_signal(signal.SIGHUP)
    wait_for(corral.answers, 30, "the API to answer again")
    assert corral.wait_state("app", "up")["instance_list"][0]["pid"] == pid
    assert pid_alive(pid)
