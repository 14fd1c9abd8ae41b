"""Standing orders: the launcher restarts a crashed service by itself, as the supervisor
decided in advance, whether or not a supervisor is there to see it; and never restarts one
the supervisor has decided to stop, to replace, or to give up on.

Processes are found by a marker in their command line (``/proc/*/cmdline``), so a test can
see what runs while the supervisor is stopped (SIGSTOP) and cannot answer.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from .conftest import PY, Corral, pid_alive, wait_for

pytestmark = pytest.mark.slow


def running(marker: str) -> list[int]:
    """Live processes whose command line holds ``marker`` as a whole argument."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            argv = Path(f"/proc/{name}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker.encode() in argv and pid_alive(int(name)):
            found.append(int(name))
    return found


def events(corral: Corral, name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in
            corral.ok("events", "--service", name, "-n", "1000", "--json").splitlines()]


def spec_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return str(path)


def test_a_service_killed_while_no_supervisor_runs_is_back_after_reattach(
        corral: Corral) -> None:
    """A service dies, is restarted by the launcher, and then the supervisor dies too: the
    next supervisor adopts the new process with the right restart count, says what
    happened, and gives it an order of its own (the next kill is restarted the same way)."""
    corral.ok("svc", "load", "victim", "--", "sleep", "4242")
    first = corral.status("victim")["pid"]
    sup = corral.sup_status()["supervisor_pid"]
    os.kill(sup, signal.SIGSTOP)
    os.kill(first, signal.SIGKILL)
    second = started_after("4242", [first], "the launcher to start victim again")
    os.kill(sup, signal.SIGKILL)
    wait_for(lambda: corral.answers() and corral.sup_status()["supervisor_pid"] != sup,
             30, "a new supervisor")
    status = corral.status("victim")
    assert (status["pid"], status["restarts"], status["state"]) == (second, 1, "up")
    assert any(e["kind"] == "exit" and e["pid"] == first and "launcher restarted it" in
               e["reason"] for e in events(corral, "victim"))

    sup = corral.sup_status()["supervisor_pid"]
    os.kill(sup, signal.SIGSTOP)
    try:
        os.kill(second, signal.SIGKILL)
        third = started_after("4242", [second], "the launcher to start victim a third time")
    finally:
        os.kill(sup, signal.SIGCONT)
    wait_for(lambda: (s := corral.status("victim"))["pid"] == third and s["restarts"] == 2,
             15, "the supervisor to count the second restart")


def started_after(marker: str, gone: list[int], what: str) -> int:
    """The pid of the process with ``marker`` that is none of ``gone``, once one runs."""
    found: list[int] = wait_for(lambda: [p for p in running(marker) if p not in gone], 15, what)
    return found[0]


def kill_while_stopped(marker: str, first: int, times: int) -> list[int]:
    """Kill the service process ``first`` (found by ``marker``), then each process the
    launcher starts in its place, ``times`` kills in all; the pids killed, in order."""
    killed, current = [], first
    for n in range(times):
        os.kill(current, signal.SIGKILL)
        killed.append(current)
        if n + 1 < times:
            current = started_after(marker, killed, f"the launcher to restart it ({n + 1})")
    return killed


def test_a_service_that_keeps_crashing_while_the_supervisor_is_stopped_keeps_coming_back(
        corral: Corral, tmp_path: Path) -> None:
    """The order covers every exit, not only the next one: killed four times in a row while
    the supervisor is stopped (each process outlived the cooldown), the service comes back
    each time.  The supervisor, running again, shows the last pid, four restarts, and every
    exit and spawn in order."""
    corral.ok("svc", "load", "-f", spec_file(tmp_path, (
        "name: victim\ncommand: [sleep, '4246']\nrestart: {cooldown: 0s}\n")))
    first = corral.wait_state("victim", "up")["pid"]
    sup = corral.sup_status()["supervisor_pid"]
    os.kill(sup, signal.SIGSTOP)
    try:
        killed = kill_while_stopped("4246", first, 4)
        last = started_after("4246", killed, "the launcher to start victim a fourth time")
    finally:
        os.kill(sup, signal.SIGCONT)
    status = wait_for(lambda: (s := corral.status("victim"))["pid"] == last
                      and s["state"] == "up" and s, 15, "the supervisor to take the chain")
    assert status["restarts"] == 4
    seen = [(e["kind"], e["pid"]) for e in events(corral, "victim")
            if e["kind"] in ("exit", "spawn")]
    pids = [*killed, last]
    assert seen == [("spawn", first)] + [step for old, new in itertools.pairwise(pids)
                                         for step in (("exit", old), ("spawn", new))]
    assert running("4246") == [last]
    # The supervisor gave the last process an order of its own: one more kill, one more run.
    os.kill(last, signal.SIGKILL)
    wait_for(lambda: (s := corral.status("victim"))["restarts"] == 5 and s["state"] == "up",
             15, "the fifth restart")


def test_a_crash_loop_stops_at_its_restart_limit_while_the_supervisor_is_stopped(
        corral: Corral, tmp_path: Path) -> None:
    """Quick deaths while the supervisor is stopped follow the policy the supervisor drew
    in advance: `max_restarts: 3` restarts three of them and not the fourth, and the
    supervisor, running again, shows the service failed after three restarts."""
    corral.ok("svc", "load", "-f", spec_file(tmp_path, (
        "name: fragile\ncommand: [sleep, '4247']\n"
        "restart: {max_restarts: 3, backoff_min: 0s, backoff_max: 0s}\n")))
    first = corral.wait_state("fragile", "up")["pid"]
    sup = corral.sup_status()["supervisor_pid"]
    os.kill(sup, signal.SIGSTOP)
    try:
        killed = kill_while_stopped("4247", first, 4)
    finally:
        os.kill(sup, signal.SIGCONT)
    status = corral.wait_state("fragile", "failed")
    assert (status["restarts"], status["pid"]) == (3, None)
    assert running("4247") == []
    exits = [e["pid"] for e in events(corral, "fragile") if e["kind"] == "exit"]
    assert exits == killed
    assert {e["pid"] for e in events(corral, "fragile")} == {None, *killed}


def test_restarts_made_while_no_supervisor_ran_are_told_after_reattach(
        corral: Corral, tmp_path: Path) -> None:
    """Three restarts by the launcher, then the supervisor is killed: the next one adopts
    the fourth process with three restarts and says what became of each of the three."""
    corral.ok("svc", "load", "-f", spec_file(tmp_path, (
        "name: victim\ncommand: [sleep, '4248']\nrestart: {cooldown: 0s}\n")))
    first = corral.wait_state("victim", "up")["pid"]
    sup = corral.sup_status()["supervisor_pid"]
    os.kill(sup, signal.SIGSTOP)
    killed = kill_while_stopped("4248", first, 3)
    last = started_after("4248", killed, "the launcher to start victim a third time")
    os.kill(sup, signal.SIGKILL)
    wait_for(lambda: corral.answers() and corral.sup_status()["supervisor_pid"] != sup,
             30, "a new supervisor")
    status = corral.status("victim")
    assert (status["pid"], status["restarts"], status["state"]) == (last, 3, "up")
    told = [e["pid"] for e in events(corral, "victim")
            if e["kind"] == "exit" and "launcher restarted it" in e["reason"]]
    assert told == killed


def test_a_new_supervisor_waits_for_the_respawn_the_launcher_is_about_to_make(
        corral: Corral, tmp_path: Path) -> None:
    """A quick second death is restarted by the launcher after the backoff the supervisor
    drew; the supervisor is killed during that wait.  The next one shows the service in
    backoff (it does not start a second process beside the one on its way), then takes the
    launcher's process: one process, two restarts, nothing stopped as unwanted."""
    corral.ok("svc", "load", "-f", spec_file(tmp_path, (
        "name: slow\ncommand: [sleep, '4249']\n"
        "restart: {backoff_min: 8s, backoff_max: 8s}\n")))
    first = corral.wait_state("slow", "up")["pid"]
    os.kill(first, signal.SIGKILL)  # a young death: at once
    second = started_after("4249", [first], "the first restart")
    corral.wait_state("slow", "up")
    os.kill(second, signal.SIGKILL)  # the second: after 8 s
    corral.wait_state("slow", "backoff")
    sup = corral.sup_status()["supervisor_pid"]
    os.kill(sup, signal.SIGKILL)
    wait_for(lambda: corral.answers() and corral.sup_status()["supervisor_pid"] != sup,
             30, "a new supervisor")
    status = corral.status("slow")
    assert status["state"] == "backoff" and running("4249") == []
    third = corral.wait_state("slow", "up", timeout=30)["pid"]
    assert running("4249") == [third] and third not in (first, second)
    assert corral.status("slow")["restarts"] == 2
    assert not [e for e in events(corral, "slow") if e["kind"] == "stop"]


def test_a_service_being_stopped_is_not_restarted(corral: Corral, tmp_path: Path) -> None:
    """A service that ignores SIGTERM is being stopped (`svc stop` waits out its stop
    timeout) when it is killed: it stays down, no new process is started."""
    code = "import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(1000)"
    corral.ok("svc", "load", "-f", spec_file(tmp_path, (
        f"name: deaf\ncommand: [{PY}, -c, '{code}', marker-4243]\n"
        "stop: {timeout: 60s}\n")))
    pid = corral.wait_state("deaf", "up")["pid"]
    stopping = subprocess.Popen([PY, "-m", "corral", "svc", "stop", "deaf"], env=corral.env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        corral.wait_state("deaf", "stopping")
        os.kill(pid, signal.SIGKILL)
        assert stopping.wait(30) == 0
    finally:
        if stopping.poll() is None:
            stopping.kill()
            stopping.wait()
    status = corral.wait_state("deaf", "down")
    assert status["pid"] is None and status["restarts"] == 0
    assert running("marker-4243") == []
    # A respawn would have been stopped at once, but it would show in the events.
    assert {e["pid"] for e in events(corral, "deaf")} == {None, pid}


def test_a_service_past_its_restart_limit_is_not_restarted(corral: Corral,
                                                           tmp_path: Path) -> None:
    """`max_restarts: 1`: the first quick death is restarted (by the launcher), the second
    is not: the service is failed with one restart and no process left."""
    corral.ok("svc", "load", "-f", spec_file(tmp_path, (
        "name: fragile\ncommand: [sleep, '4244']\n"
        "restart: {max_restarts: 1, backoff_min: 0s}\n")))
    first = corral.wait_state("fragile", "up")["pid"]
    os.kill(first, signal.SIGKILL)
    second = wait_for(lambda: (p := corral.status("fragile")["pid"]) not in (None, first)
                      and p, 15, "the first restart")
    corral.wait_state("fragile", "up")
    os.kill(second, signal.SIGKILL)
    status = corral.wait_state("fragile", "failed")
    assert status["restarts"] == 1 and status["pid"] is None
    assert running("4244") == []
    assert {e["pid"] for e in events(corral, "fragile")} == {None, first, second}


def test_an_instance_being_replaced_is_not_restarted(corral: Corral, tmp_path: Path) -> None:
    """During a start-first rollout the old instance runs beside its replacement until
    that one is ready; killed meanwhile, it is not started again: only the new version
    runs afterwards."""
    text = ("processes:\n  - name: api\n    command: [sleep, '{marker}']\n"
            "    replace: start-first\n    readiness: started\n    start_seconds: {ready}\n"
            "    rollout_timeout: 60s\n")
    v1 = tmp_path / "v1.yaml"
    v1.write_text(text.format(marker="4245", ready="0s"))
    corral.ok("target", "set", str(v1))
    old = corral.wait_state("api", "up")["pid"]
    v2 = tmp_path / "v2.yaml"
    v2.write_text(text.format(marker="4246", ready="3s"))
    corral.ok("target", "set", "--no-wait", str(v2))
    wait_for(lambda: any(i.get("retiring") and i["pid"] == old
                         for i in corral.status("api")["instance_list"]), 15,
             "the old instance to be retiring")
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: any(e["kind"] == "exit" and e["pid"] == old
                         for e in events(corral, "api")), 15, "the old instance's exit")
    new = corral.wait_state("api", "up", timeout=30)["pid"]
    assert running("4246") == [new] and running("4245") == []
    assert {e["pid"] for e in events(corral, "api")} == {None, old, new}
