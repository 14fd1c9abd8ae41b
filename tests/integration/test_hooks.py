"""Hooks: init before a start, post_run once ready, post_stop after a stop, reload."""

from __future__ import annotations

import json
from pathlib import Path

from .conftest import PY, Corral, wait_for


def events(corral: Corral, name: str) -> list[dict]:
    return [json.loads(x) for x in
            corral.ok("events", "--service", name, "--json", "-n", "500").splitlines()]


def test_init_post_run_and_post_stop(corral: Corral, tmp_path: Path) -> None:
    """init runs before the process (in its cwd, with its env), post_run once it is ready,
    post_stop after a stop; their output lands in the service's log, their results in
    events."""
    (tmp_path / "svc.yaml").write_text(
        f"name: hooked\ncommand: 'cat ready.txt; exec sleep 1000'\ncwd: {tmp_path}\n"
        "env: {GREETING: hello}\n"
        "hooks: {init: 'echo $GREETING > ready.txt; echo init-ran',"
        " post_run: 'echo post-run for $CORRAL_PID', post_stop: 'echo post-stop-ran'}\n")
    corral.ok("svc", "load", "-f", str(tmp_path / "svc.yaml"))
    pid = corral.wait_state("hooked", "up")["pid"]
    wait_for(lambda: any(line.endswith(f"post-run for {pid}")
                         for line in corral.log_lines("hooked")), what="post_run output")
    lines = corral.log_lines("hooked")
    assert any("[hook init] init-ran" in line for line in lines)
    assert any(line.endswith(f"{pid} O hello") for line in lines)
    corral.ok("svc", "stop", "hooked")
    wait_for(lambda: any("[hook post_stop] post-stop-ran" in x
                         for x in corral.log_lines("hooked")), what="post_stop output")
    kinds = [e["reason"] for e in events(corral, "hooked") if e["kind"] == "hook"]
    assert any("init succeeded" in r for r in kinds)
    assert any("post_run succeeded" in r for r in kinds)


def test_failing_init_backs_off_and_never_starts_the_process(corral: Corral,
                                                             tmp_path: Path) -> None:
    """A failing init hook keeps the process from starting and backs off, with a reason."""
    marker = tmp_path / "started"
    (tmp_path / "svc.yaml").write_text(
        f"name: badinit\ncommand: [touch, {marker}]\n"
        "restart: {backoff_min: 200ms, backoff_max: 500ms}\n"
        "hooks: {init: 'echo cannot prepare; exit 3', timeout: 5s}\n")
    corral.ok("svc", "load", "-f", str(tmp_path / "svc.yaml"))
    status = wait_for(lambda: (s := corral.status("badinit"))["state"] == "backoff" and s,
                      what="backoff")
    assert "hook init exited 3" in status["reason"]
    assert not marker.exists()
    failed = [e for e in events(corral, "badinit") if e["kind"] == "hook"]
    assert failed and "cannot prepare" in failed[0]["last_lines"]


def test_reload_by_command_and_by_signal(corral: Corral, tmp_path: Path) -> None:
    """`svc reload` runs the reload hook, or sends the reload signal, without a restart;
    a service with neither is refused with a hint."""
    (tmp_path / "cmd.yaml").write_text(
        "name: bycmd\ncommand: [sleep, '1000']\nhooks: {reload: 'echo reloading $CORRAL_PID'}\n")
    corral.ok("svc", "load", "-f", str(tmp_path / "cmd.yaml"))
    pid = corral.status("bycmd")["pid"]
    corral.ok("svc", "reload", "bycmd")
    assert any(x.endswith(f"[hook reload] reloading {pid}") for x in corral.log_lines("bycmd"))
    assert corral.status("bycmd")["pid"] == pid
    (tmp_path / "sig.yaml").write_text(
        f"name: bysig\ncommand: [{PY}, -u, -c, 'import signal,time; signal.signal("
        "signal.SIGHUP, lambda *a: print(\"got HUP\", flush=True)); print(\"ready\", flush=True);"
        " time.sleep(1000)']\nhooks: {reload_signal: HUP}\n")
    corral.ok("svc", "load", "-f", str(tmp_path / "sig.yaml"))
    wait_for(lambda: any(x.endswith(" ready") for x in corral.log_lines("bysig")), what="ready")
    pid = corral.status("bysig")["pid"]
    corral.ok("svc", "reload", "bysig")
    wait_for(lambda: any(x.endswith(" got HUP") for x in corral.log_lines("bysig")),
             what="the HUP")
    assert corral.status("bysig")["pid"] == pid
    corral.ok("svc", "load", "plain", "--", "sleep", "1000")
    result = corral.run("svc", "reload", "plain")
    assert result.returncode == 1 and "hooks.reload" in result.stderr
