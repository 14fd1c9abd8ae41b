"""Services through the CLI: load, status, logs, restart policy, stop, bad input."""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

from .conftest import PY, Corral, pid_alive, wait_for

STAMPED = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z (\d+) ([OE]) (.*)$")


def test_load_status_and_logs(corral: Corral) -> None:
    """A loaded service runs as the launcher's child with stdin /dev/null, its own process
    group, and its output stamped in its log; `svc status --json` has DESIGN's fields."""
    code = ("import os,sys; print('out', os.getpgid(0)==os.getpid(), flush=True); "
            "print('err', file=sys.stderr, flush=True); "
            "print('stdin', os.readlink('/proc/self/fd/0'), flush=True); "
            "import time; time.sleep(1000)")
    out = corral.ok("svc", "load", "web", "--env", "GREETING=hi", "--", PY, "-c", code)
    assert "web" in out and "added" in out
    status = corral.wait_state("web", "up")  # ready once it has run start_seconds
    for field in ("name", "state", "desired", "pid", "instances", "restarts", "health",
                  "uptime_s"):
        assert field in status
    assert status["state"] == "up" and status["desired"] == "up" and status["restarts"] == 0
    assert status["health"] in ("ok", "warning", "critical", "unknown")
    pid = status["pid"]
    with open(f"/proc/{pid}/stat") as f:
        ppid = int(f.read().rsplit(")", 1)[1].split()[1])
    assert ppid == corral.sup_status()["launcher_pid"]
    lines = wait_for(lambda: len(corral.log_lines("web")) >= 3 and corral.log_lines("web"),
                     what="three log records")
    records = [STAMPED.match(line) for line in lines]
    assert all(records), lines
    texts = {(r.group(2), r.group(3)) for r in records if r}
    assert ("O", "out True") in texts and ("E", "err") in texts and ("O", "stdin /dev/null") in texts
    assert all(int(r.group(1)) == pid for r in records if r)
    shown = corral.ok("logs", "web", "-n", "2").splitlines()
    assert shown == lines[-2:]


def test_loading_a_missing_command_fails_at_once(corral: Corral) -> None:
    """A command that does not exist is refused with the spawn error; nothing is loaded."""
    result = corral.run("svc", "load", "ghost", "--", "/no/such/binary", "--flag")
    assert result.returncode != 0
    assert "/no/such/binary" in result.stderr and result.stderr.count("\n") == 1
    assert corral.status() == []


def test_killed_service_restarts_at_once(corral: Corral) -> None:
    """SIGKILL of a service: a new process runs, restarts counts it, an event says why."""
    corral.ok("svc", "load", "sleeper", "--", "sleep", "1000")
    first = corral.status("sleeper")["pid"]
    os.kill(first, signal.SIGKILL)
    status = wait_for(lambda: (s := corral.status("sleeper"))["pid"] not in (None, first)
                      and s["state"] == "up" and s, what="a new pid")
    assert status["restarts"] == 1
    assert status["last_exit"]["signal"] == "KILL"
    events = [json.loads(line) for line in
              corral.ok("events", "--service", "sleeper", "--json").splitlines()]
    assert any(e["kind"] == "exit" and "SIGKILL" in e["reason"] for e in events)


def test_crash_loop_backs_off_then_fails_at_max_restarts(corral: Corral, tmp_path: Path) -> None:
    """A service that keeps dying young backs off (next_restart_at visible) and is marked
    failed, with the reason, once max_restarts is reached."""
    spec = tmp_path / "crash.yaml"
    spec.write_text(f"name: crasher\ncommand: [{PY}, -c, 'raise SystemExit(3)']\n"
                    "restart: {backoff_min: 1s, backoff_max: 2s, max_restarts: 3}\n")
    corral.ok("svc", "load", "-f", str(spec))

    def backing_off() -> bool:
        # Backoff windows of a second or more: a status poll on a loaded machine (about
        # 0.1 s a call) still lands inside one.
        now = corral.status("crasher")
        return now["state"] == "backoff" and bool(now["next_restart_at"])

    wait_for(backing_off, what="backoff with a next restart")
    failed = corral.wait_state("crasher", "failed")
    assert "gave up" in failed["reason"] and "code 3" in failed["reason"]
    assert failed["restarts"] == 3
    human = corral.ok("svc", "status")
    assert "crasher" in human and "failed" in human


def test_a_user_starts_a_failed_service_again(corral: Corral, tmp_path: Path) -> None:
    """A service the restart policy gave up on stays failed until a user starts it: then
    it runs again (here it has been fixed meanwhile: a file it needs is there)."""
    needed = tmp_path / "config"
    spec = tmp_path / "flaky.yaml"
    spec.write_text(f"name: flaky\ncommand: [{PY}, -c, 'import os, sys, time; "
                    f"sys.exit(3) if not os.path.exists(\"{needed}\") else time.sleep(1000)']\n"
                    "restart: {backoff_min: 0s, backoff_max: 0s, max_restarts: 1}\n")
    corral.ok("svc", "load", "-f", str(spec))
    corral.wait_state("flaky", "failed")
    needed.write_text("fixed\n")
    corral.ok("svc", "start", "flaky")
    assert corral.wait_state("flaky", "up")["pid"]


def test_restart_policies(corral: Corral) -> None:
    """`never` leaves a finished service down; `on-failure` restarts only failures."""
    corral.ok("svc", "load", "once", "--restart", "never", "--", PY, "-c", "pass")
    down = corral.wait_state("once", "down")
    assert down["last_exit"]["exit_code"] == 0 and "never" in down["reason"]
    corral.ok("svc", "load", "okjob", "--restart", "on-failure", "--", PY, "-c", "pass")
    assert corral.wait_state("okjob", "down")["restarts"] == 0
    corral.ok("svc", "load", "badjob", "--restart", "on-failure", "--", PY, "-c",
              "import os,time; p='/tmp/' + os.environ['CORRAL_SERVICE'] + str(os.getppid());"
              "n=os.path.exists(p); open(p,'a').close(); time.sleep(0.1);"
              "raise SystemExit(0 if n else 1)")
    restarted = corral.wait_state("badjob", "down")
    assert restarted["restarts"] == 1 and restarted["last_exit"]["exit_code"] == 0


def test_stop_start_and_stop_results(corral: Corral) -> None:
    """`svc stop` signals the whole group (grandchildren too); a process that ignores TERM
    is killed after stop_timeout; the result is shown; `svc start` brings it back."""
    code = ("import os,signal,subprocess,sys,time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
            "c=subprocess.Popen(['sleep','1000']); print('child', c.pid, flush=True);"
            "time.sleep(1000)")
    corral.ok("svc", "load", "deaf", "--stop-timeout", "0.5s", "--", PY, "-c", code)
    line = wait_for(lambda: [x for x in corral.log_lines("deaf") if " child " in x],
                    what="the grandchild's pid")[0]
    grandchild = int(line.rsplit(" ", 1)[1])
    parent = corral.status("deaf")["pid"]
    corral.wait_state("deaf", "up")
    corral.ok("svc", "stop", "deaf")
    status = corral.status("deaf")
    assert status["state"] == "down" and status["desired"] == "down"
    assert status["last_exit"]["stop"] == "killed"
    assert not pid_alive(parent) and not pid_alive(grandchild)
    corral.ok("svc", "load", "polite", "--", "sleep", "1000")
    corral.ok("svc", "stop", "polite")
    assert corral.status("polite")["last_exit"]["stop"] == "graceful"
    corral.ok("svc", "start", "polite", "--wait", "10")
    assert corral.status("polite")["state"] == "up"
    first = corral.status("polite")["pid"]
    corral.ok("svc", "restart", "polite")
    assert corral.status("polite")["pid"] != first


def test_load_again_updates_only_on_change(corral: Corral, tmp_path: Path) -> None:
    """Loading the same spec again changes nothing; a changed spec restarts it."""
    spec = tmp_path / "svc.yaml"
    spec.write_text("name: app\ncommand: [sleep, '1000']\n")
    corral.ok("svc", "load", "-f", str(spec))
    pid = corral.status("app")["pid"]
    assert "unchanged" in corral.ok("svc", "load", "-f", str(spec))
    assert corral.status("app")["pid"] == pid
    spec.write_text("name: app\ncommand: [sleep, '2000']\n")
    assert "updated" in corral.ok("svc", "load", "-f", str(spec))
    assert corral.status("app")["pid"] != pid
    assert corral.status("app")["command"] == ["sleep", "2000"]


def test_bad_input_is_one_line_and_changes_nothing(corral: Corral, tmp_path: Path) -> None:
    """Invalid names, unknown services, bad signals, negative timeouts, bad YAML: one clear
    line (or one line per problem), non-zero exit, no traceback, nothing changed."""
    corral.ok("svc", "load", "keep", "--", "sleep", "1000")
    before = (corral.state_dir / "target.yaml").read_bytes()
    pid = corral.status("keep")["pid"]
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("name: x\ncommand: [sleep\n")
    unknown_field = tmp_path / "unknown.yaml"
    unknown_field.write_text("name: x\ncommand: [sleep, '1']\nrestrat: {policy: never}\n")
    cases = [
        ("svc", "load", "Bad_Name!", "--", "sleep", "1"),
        ("svc", "stop", "nosuch"),
        ("svc", "start", "nosuch"),
        ("svc", "status", "nosuch"),
        ("logs", "nosuch"),
        ("svc", "load", "x", "--stop-signal", "SIGNOPE", "--", "sleep", "1"),
        ("svc", "load", "x", "--stop-timeout", "-3s", "--", "sleep", "1"),
        ("svc", "load", "-f", str(bad_yaml)),
        ("svc", "load", "-f", str(unknown_field)),
    ]
    for args in cases:
        result = corral.run(*args)
        assert result.returncode != 0, args
        assert "Traceback" not in result.stderr, args
        assert result.stderr.startswith("corral: "), (args, result.stderr)
        assert result.stdout == "", args
    unknown = corral.run("svc", "load", "-f", str(unknown_field)).stderr
    assert "unknown.yaml:3" in unknown and "restrat" in unknown
    assert "bad.yaml:" in corral.run("svc", "load", "-f", str(bad_yaml)).stderr
    assert (corral.state_dir / "target.yaml").read_bytes() == before
    assert [s["name"] for s in corral.status()] == ["keep"]
    assert corral.status("keep")["pid"] == pid


def test_unload_stops_and_forgets(corral: Corral) -> None:
    """`svc unload` stops the service's processes and removes it from the target."""
    corral.ok("svc", "load", "temp", "--", "sleep", "1000")
    pid = corral.status("temp")["pid"]
    corral.ok("svc", "unload", "temp")
    assert not pid_alive(pid)
    assert corral.status() == []
    assert "temp" not in (corral.state_dir / "target.yaml").read_text()


def test_scale_keeps_the_instances_that_stay(corral: Corral) -> None:
    """`svc scale` adds or removes instances without touching the ones that stay; each
    instance has CORRAL_INSTANCE in its env."""
    corral.ok("svc", "load", "pool", "--instances", "2", "--", PY, "-u", "-c",
              "import os,time; print('instance', os.environ['CORRAL_INSTANCE']); time.sleep(1000)")
    wait_for(lambda: corral.status("pool")["running"] == 2, what="two instances")
    before = {i["index"]: i["pid"] for i in corral.status("pool")["instance_list"]}
    corral.ok("svc", "scale", "pool", "3")
    status = wait_for(lambda: (s := corral.status("pool"))["running"] == 3 and s,
                      what="three instances")
    after = {i["index"]: i["pid"] for i in status["instance_list"]}
    assert after[0] == before[0] and after[1] == before[1]
    corral.ok("svc", "scale", "pool", "1")
    status = wait_for(lambda: (s := corral.status("pool"))["running"] == 1 and s,
                      what="one instance")
    assert status["instance_list"][0]["pid"] == before[0]
    assert not pid_alive(before[1]) and not pid_alive(after[2])
    texts = {line.split(" ", 3)[3] for line in corral.log_lines("pool")}
    assert {"instance 0", "instance 1", "instance 2"} <= texts


def test_events_follow_streams_new_events(corral: Corral) -> None:
    """`corral events -f` prints events as they happen.  `-n` asks for the recent history
    too, so the spawn is printed whether it happens before or after the follower has
    subscribed (without `-n` a follower shows only what comes after it subscribed)."""
    import subprocess
    import sys
    follower = subprocess.Popen([sys.executable, "-m", "corral", "events", "-f", "-n", "1000",
                                 "--json"],
                                stdout=subprocess.PIPE, text=True, env=corral.env)
    try:
        corral.ok("svc", "load", "watched", "--", "sleep", "1000")
        assert follower.stdout is not None
        for line in follower.stdout:
            event = json.loads(line)
            if event["service"] == "watched" and event["kind"] == "spawn":
                assert event["pid"] == corral.status("watched")["pid"]
                break
    finally:
        follower.terminate()
        follower.wait(10)
        if follower.stdout is not None:
            follower.stdout.close()


def test_exit_event_carries_the_last_lines(corral: Corral) -> None:
    """The exit event says how the process ended and shows its last output lines."""
    corral.ok("svc", "load", "dies", "--restart", "never", "--", PY, "-c",
              "import sys; print('starting up'); print('config missing', file=sys.stderr);"
              " sys.exit(4)")
    corral.wait_state("dies", "down")
    exits = [json.loads(x) for x in corral.ok("events", "--service", "dies", "--json")
             .splitlines() if json.loads(x)["kind"] == "exit"]
    assert exits[-1]["exit_code"] == 4
    assert "config missing" in exits[-1]["last_lines"], exits
    assert "starting up" in exits[-1]["last_lines"]


def test_a_process_that_dies_at_once_is_never_lost(corral: Corral, tmp_path: Path) -> None:
    """An exit read before the spawn's reply is handled: a process dying instantly and
    restarted at once (cooldown 0) keeps being restarted, never stuck "up" on a dead pid."""
    spec = tmp_path / "flash.yaml"
    spec.write_text("name: flash\ncommand: [/bin/true]\nrestart: {cooldown: 0s}\n")
    corral.ok("svc", "load", "-f", str(spec))
    seen = wait_for(lambda: (r := corral.status("flash")["restarts"]) >= 200 and r, 60,
                    "200 restarts of a process that exits at once")
    # Still moving: a lost exit would freeze the count with the state "up".
    wait_for(lambda: corral.status("flash")["restarts"] > seen + 50, 60, "restarts to go on")
    corral.ok("svc", "stop", "flash")
    assert corral.status("flash")["state"] == "down"
