"""Supervisor crashes, restarts and full stops: services and logs carry on untouched."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from .conftest import PY, Corral, pid_alive, wait_for

# Prints a sequence number every millisecond: any gap or duplicate in the log is a lost
# or repeated line, and any second pid is a restart.
COUNTER = ("import sys,time\n"
           "i=0\n"
           "while True:\n"
           "    sys.stdout.write(f'{i}\\n'); sys.stdout.flush(); i+=1; time.sleep(0.001)\n")


def numbers(corral: Corral, name: str) -> list[int]:
    lines = corral.log_lines(name)
    # A line may be in flight at the end of the file; whole records only.
    return [int(line.rsplit(" ", 1)[1]) for line in lines if line.rsplit(" ", 1)[1].isdigit()]


def test_twenty_supervisor_kills_lose_and_repeat_nothing(corral: Corral) -> None:
    """kill -9 of the supervisor, 20 times: a new one reattaches each time, the service
    keeps its pid and restart count, and its log has no gap and no duplicate."""
    corral.ok("svc", "load", "counter", "--", PY, "-u", "-c", COUNTER)
    pid = corral.status("counter")["pid"]
    for _ in range(20):
        sup = corral.sup_status()["supervisor_pid"]
        os.kill(sup, signal.SIGKILL)
        wait_for(lambda s=sup: corral.answers() and corral.sup_status()["supervisor_pid"] != s,
                 30, "a new supervisor")
        status = corral.status("counter")
        assert status["pid"] == pid and status["restarts"] == 0 and status["state"] == "up"
    seen = numbers(corral, "counter")
    assert len(seen) > 100
    assert seen == list(range(seen[0], seen[0] + len(seen))), "gap or duplicate in the log"
    assert seen[0] == 0


def test_sup_restart_reattaches_gracefully(corral: Corral) -> None:
    """`corral sup restart` starts a new supervisor that adopts the running services."""
    corral.ok("svc", "load", "steady", "--", "sleep", "1000")
    pid = corral.status("steady")["pid"]
    old = corral.sup_status()["supervisor_pid"]
    corral.ok("sup", "restart")
    wait_for(lambda: corral.answers() and corral.sup_status()["supervisor_pid"] != old, 30,
             "the new supervisor")
    assert corral.status("steady")["pid"] == pid
    assert corral.status("steady")["restarts"] == 0


def test_exit_while_no_supervisor_is_replayed(corral: Corral) -> None:
    """A service that dies while the supervisor is down is restarted by the next one."""
    corral.ok("svc", "load", "victim", "--", "sleep", "1000")
    victim = corral.status("victim")["pid"]
    sup = corral.sup_status()["supervisor_pid"]
    os.kill(sup, signal.SIGSTOP)  # hold the supervisor so the exit is queued
    try:
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: not pid_alive(victim), what="the victim to die")
    finally:
        os.kill(sup, signal.SIGKILL)
    wait_for(lambda: corral.answers() and corral.status("victim")["pid"] not in (None, victim),
             30, "a restarted victim")
    corral.wait_state("victim", "up")


def test_desired_state_survives_a_full_stop_and_run(corral: Corral) -> None:
    """After `sup stop` + `sup run`: a stopped service stays stopped, an unloaded one is
    gone, the others come back; the stop left no process behind and exited 0."""
    corral.ok("svc", "load", "a", "--", "sleep", "1000")
    corral.ok("svc", "load", "b", "--", "sleep", "1001")
    corral.ok("svc", "load", "c", "--", "sleep", "1002")
    corral.ok("svc", "stop", "b")
    corral.ok("svc", "unload", "c")
    pids = [corral.status("a")["pid"], corral.sup_status()["supervisor_pid"],
            corral.sup_status()["launcher_pid"]]
    corral.ok("sup", "stop")
    assert corral.proc is not None and corral.proc.wait(60) == 0
    assert not any(pid_alive(p) for p in pids)
    corral.start()
    assert [s["name"] for s in corral.status()] == ["a", "b"]
    corral.wait_state("a", "up")
    b = corral.status("b")
    assert b["state"] == "down" and b["desired"] == "down"


def test_sigterm_stops_services_in_reverse_load_order(corral: Corral) -> None:
    """SIGTERM to the launcher stops services last-loaded first, then it exits 0."""
    for name in ("first", "second", "third"):
        corral.ok("svc", "load", name, "--", PY, "-c",
                  "import signal,sys,time,os\n"
                  "def bye(*_):\n"
                  "    print('stopping', time.monotonic_ns(), flush=True); sys.exit(0)\n"
                  "signal.signal(signal.SIGTERM, bye)\n"
                  "print('ready', flush=True)\n"
                  "time.sleep(1000)\n")
        wait_for(lambda n=name: any(" ready" in x for x in corral.log_lines(n)),
                 what=f"{name} to be ready")
    assert corral.stop() == 0
    stamps = {}
    for name in ("first", "second", "third"):
        line = next(x for x in corral.log_lines(name) if " stopping " in x)
        stamps[name] = int(line.rsplit(" ", 1)[1])
    assert stamps["third"] < stamps["second"] < stamps["first"]


def test_target_file_at_start(corral_factory, tmp_path: Path) -> None:
    """`sup run --target FILE` runs what the file lists."""
    target = tmp_path / "t.yaml"
    target.write_text("processes:\n  - {name: one, command: [sleep, '1000']}\n"
                      "  - {name: two, command: 'sleep 1001', instances: 2}\n")
    c = corral_factory()
    c.start("--target", str(target))
    assert [s["name"] for s in c.status()] == ["one", "two"]
    wait_for(lambda: c.status("two")["running"] == 2, what="two instances")
