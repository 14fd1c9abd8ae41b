"""Readiness and health that mean what users mean: checks read commands as systemd and
Docker do, starting is not unhealthy, unhealthy restarts follow the restart policy one
instance at a time, ``readiness: started`` means the process stayed up, every restart waits
for its dependencies, and only an instance's own processes can say it is ready."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from .conftest import PY, Corral, wait_for


def load(corral: Corral, tmp_path: Path, name: str, body: str, *extra: str) -> str:
    spec = tmp_path / f"{name}.yaml"
    spec.write_text(f"name: {name}\n" + body)
    return corral.ok("svc", "load", "-f", str(spec), *extra)


def events(corral: Corral, name: str) -> list[dict[str, Any]]:
    return [json.loads(x) for x in
            corral.ok("events", "--service", name, "--json", "-n", "2000").splitlines()]


def lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


# --- checks mean what users mean ------------------------------------------------------------

def test_an_exec_check_that_exits_1_is_a_failure(corral: Corral, tmp_path: Path) -> None:
    """`redis-cli ping` exits 1 on "connection refused": that is not ready, and once the
    instance was up it makes it unhealthy and restarted, as systemd, Docker and Kubernetes
    read a command."""
    probes, up = tmp_path / "probes", tmp_path / "up"
    load(corral, tmp_path, "cache",
         f"command: [sleep, '1000']\ncwd: {tmp_path}\nreadiness: health\n"
         "health: {exec: [sh, -c, 'echo . >> probes; test -f up'], interval: 100ms,"
         " retries: 2}\n")
    wait_for(lambda: lines(probes) >= 4, what="a few checks")
    status = corral.status("cache")
    assert (status["state"], status["health"]) == ("starting", "critical")
    first = status["pid"]
    up.write_text("")
    assert corral.wait_state("cache", "up")["health"] == "ok"
    up.unlink()
    wait_for(lambda: any(e["kind"] == "health" and "unhealthy" in e["reason"]
                         for e in events(corral, "cache")), what="an unhealthy event")
    wait_for(lambda: corral.status("cache")["pid"] not in (None, first), what="a restart")


def test_habitat_codes_on_request_and_warning_is_never_ready(corral: Corral,
                                                              tmp_path: Path) -> None:
    """With `exec_codes: habitat`, 1 is a warning: not ready while starting, not unhealthy
    once up; 2 is critical."""
    code = tmp_path / "code"
    code.write_text("1")
    load(corral, tmp_path, "hab",
         f"command: [sleep, '1000']\nreadiness: health\n"
         f"health: {{exec: [sh, -c, 'exit $(cat {code})'], exec_codes: habitat,"
         " interval: 100ms, retries: 2, restart_on_unhealthy: false}\n")
    wait_for(lambda: corral.status("hab")["health"] == "warning", what="warning")
    assert corral.status("hab")["state"] == "starting"
    code.write_text("0")
    corral.wait_state("hab", "up")
    code.write_text("1")
    wait_for(lambda: corral.status("hab")["health"] == "warning", what="warning again")
    code.write_text("2")
    corral.wait_state("hab", "unhealthy")
    code.write_text("1")
    wait_for(lambda: (s := corral.status("hab"))["state"] == "up"
             and s["health"] == "warning", what="up again on a warning")


# --- starting is not unhealthy ----------------------------------------------------------------

def test_failed_checks_while_starting_do_not_restart(corral: Corral, tmp_path: Path) -> None:
    """An app that binds late is left to start: failures before its first passing check do
    not count."""
    probes = tmp_path / "probes"
    load(corral, tmp_path, "slow",
         f"command: [sleep, '1000']\ncwd: {tmp_path}\nreadiness: health\n"
         "health: {exec: [sh, -c, 'echo . >> probes; test -f bound || exit 2'],"
         " interval: 100ms, retries: 2}\n")
    first = wait_for(lambda: corral.status("slow")["pid"], what="a pid")
    wait_for(lambda: lines(probes) >= 8, what="several failed checks")
    status = corral.status("slow")
    assert (status["state"], status["pid"], status["restarts"]) == ("starting", first, 0)
    (tmp_path / "bound").write_text("")
    up = corral.wait_state("slow", "up")
    assert (up["pid"], up["restarts"]) == (first, 0)


def test_unhealthy_restarts_follow_the_restart_policy(corral: Corral, tmp_path: Path) -> None:
    """A restart for unhealthiness, and one for a start that never passed its check within
    `start_timeout`, are young deaths: they back off and count against `max_restarts`."""
    sick = tmp_path / "sick"
    load(corral, tmp_path, "flaky",
         "command: [sleep, '1000']\nreadiness: health\nstart_timeout: 2s\n"
         "restart: {max_restarts: 2, backoff_min: 100ms, backoff_max: 200ms}\n"
         f"health: {{exec: [sh, -c, 'test ! -f {sick} || exit 2'], interval: 100ms,"
         " retries: 2}\n")
    corral.wait_state("flaky", "up")
    sick.write_text("")
    failed = corral.wait_state("flaky", "failed", timeout=30)
    assert failed["restarts"] == 2
    assert "gave up after 2 quick restarts" in failed["reason"]
    evs = events(corral, "flaky")
    assert any(e["kind"] == "restart_scheduled" and e["delay_s"] for e in evs)
    assert any("not ready within 2s" in e["reason"] for e in evs)


APP = """
import os, time
open(f"pid.{os.environ['CORRAL_INSTANCE']}", "w").write(str(os.getpid()))
time.sleep(1000)
"""


def test_one_instance_at_a_time_is_restarted_for_unhealthiness(corral: Corral,
                                                               tmp_path: Path) -> None:
    """With both instances hung, one is restarted while the other keeps its place; the
    second goes once the first is back and passing."""
    (tmp_path / "app.py").write_text(APP)
    load(corral, tmp_path, "web",
         f"command: [{PY}, app.py]\ncwd: {tmp_path}\ninstances: 2\nreadiness: health\n"
         "health: {exec: [sh, -c, 'test ! -f hang.$(cat pid.$CORRAL_INSTANCE) || exit 2'],"
         " interval: 100ms, retries: 2}\n")

    def both_ok() -> list[int] | None:
        insts = corral.status("web")["instance_list"]
        ok = [i for i in insts if i["state"] == "up" and i["health"] == "ok"]
        return [i["pid"] for i in ok] if len(ok) == 2 else None

    pids = wait_for(both_ok, what="both instances up")
    mark = max(e["seq"] for e in events(corral, "web"))
    for pid in pids:
        (tmp_path / f"hang.{pid}").write_text("")
    wait_for(lambda: (now := both_ok()) and not set(now) & set(pids), 30,
             "both instances replaced and up")
    out: set[int] = set()
    most = 0
    for e in events(corral, "web"):
        if e["seq"] <= mark or e["kind"] != "state":
            continue
        if e["to"] in ("up", "unhealthy"):
            out.discard(e["instance"])
        else:
            out.add(e["instance"])
        most = max(most, len(out))
    assert most == 1
    assert any("waiting for instance" in e["reason"] for e in events(corral, "web"))


# --- readiness: started means it stayed up ---------------------------------------------------

def test_a_version_that_dies_at_once_is_not_ready_and_reverts(corral: Corral,
                                                             tmp_path: Path) -> None:
    """Under `readiness: started` an instance is ready only after `start_seconds`: a new
    version that exits at once fails its rollout and the old one keeps running (start-first,
    so the old process is never stopped and keeps its pid)."""
    out = load(corral, tmp_path, "api", "command: [sleep, '1000']\nreplace: start-first\n",
               "--wait", "10")
    assert "added" in out
    old = corral.status("api")
    assert old["state"] == "up" and "running for 1s" in old["reason"]
    spec = tmp_path / "api.yaml"
    spec.write_text("name: api\ncommand: [sh, -c, 'exit 1']\nrollout_timeout: 4s\n"
                    "replace: start-first\n")
    result = corral.run("svc", "load", "-f", str(spec))
    assert result.returncode == 1, result.stdout
    assert "the old version keeps running" in result.stderr
    now = corral.status("api")
    assert (now["state"], now["pid"], now["command"]) == ("up", old["pid"], ["sleep", "1000"])


def test_start_seconds_zero_is_ready_at_spawn(corral: Corral, tmp_path: Path) -> None:
    """`start_seconds: 0` keeps the immediate readiness of a spawned process."""
    load(corral, tmp_path, "quick", "command: [sleep, '1000']\nstart_seconds: 0\n")
    status = corral.status("quick")
    assert status["state"] == "up" and "running as pid" in status["reason"]


# --- dependencies gate every start ----------------------------------------------------------

WORKER = """
import os, time
while not os.path.exists("redis-gone"):
    time.sleep(0.05)
raise SystemExit(1)
"""


def test_a_restart_waits_for_its_dependencies(corral: Corral, tmp_path: Path) -> None:
    """While its dependency is stopped, a crashed worker waits instead of crash-looping;
    it starts again once the dependency is ready."""
    (tmp_path / "worker.py").write_text(WORKER)
    corral.ok("svc", "load", "redis", "--wait", "10", "--", "sleep", "1000")
    load(corral, tmp_path, "worker",
         f"command: [{PY}, worker.py]\ncwd: {tmp_path}\ndepends_on: [redis]\n", "--wait", "10")
    corral.ok("svc", "stop", "redis")
    (tmp_path / "redis-gone").write_text("")
    waiting = wait_for(lambda: (s := corral.status("worker"))["state"] == "down"
                       and "waiting for redis to be ready" in s["reason"] and s,
                       what="the worker to wait for redis")
    assert waiting["restarts"] == 0
    (tmp_path / "redis-gone").unlink()
    corral.ok("svc", "start", "redis")
    back = corral.wait_state("worker", "up")
    assert back["restarts"] == 1


# --- readiness comes from the service -------------------------------------------------------

def _notify_address(pid: int) -> str:
    env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    value = next(v for v in env if v.startswith(b"NOTIFY_SOCKET=")).split(b"=", 1)[1]
    return "\0" + value.decode()[1:]


NOTIFIER = """
import os, socket, time
while not os.path.exists("go"):
    time.sleep(0.05)
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.sendto(b"READY=1", "\\0" + os.environ["NOTIFY_SOCKET"][1:])
time.sleep(1000)
"""


def test_ready_from_another_process_is_ignored(corral: Corral, tmp_path: Path) -> None:
    """A READY=1 sent by a process that is not the instance's own leaves it starting (an
    event says so); the program's own READY=1 makes it up."""
    (tmp_path / "notifier.py").write_text(NOTIFIER)
    load(corral, tmp_path, "daemon",
         f"command: [{PY}, notifier.py]\ncwd: {tmp_path}\nreadiness: notify\n")
    pid = wait_for(lambda: corral.status("daemon")["pid"], what="a pid")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(b"READY=1", _notify_address(pid))
    wait_for(lambda: any(e["kind"] == "notify" and "ignored" in e["reason"]
                         for e in events(corral, "daemon"))
             or corral.status("daemon")["state"] != "starting", what="the foreign READY=1")
    assert corral.status("daemon")["state"] == "starting"
    (tmp_path / "go").write_text("")
    assert "READY=1" in corral.wait_state("daemon", "up")["reason"]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a service as nobody")
def test_systemd_notify_from_a_child_is_believed(corral: Corral, tmp_path: Path) -> None:
    """An unprivileged `systemd-notify --ready` run by the service's shell sends with its
    own pid (only root may name its parent): a child of the instance is believed."""
    load(corral, tmp_path, "child",
         "command: 'systemd-notify --ready; exec sleep 1000'\nuser: nobody\ncwd: /\n"
         "readiness: notify\n")
    assert "READY=1" in corral.wait_state("child", "up")["reason"]
    assert not any(e["kind"] == "notify" for e in events(corral, "child"))


def test_watchdog_pings_from_another_process_do_not_keep_it_alive(corral: Corral,
                                                                  tmp_path: Path) -> None:
    """A stuck process is restarted by its watchdog however often someone else pings."""
    load(corral, tmp_path, "stuck", "command: [sleep, '1000']\nwatchdog: 1s\n")
    pid = wait_for(lambda: corral.status("stuck")["pid"], what="a pid")
    pinger = subprocess.Popen(
        [PY, "-c", "import socket, sys, time\n"
                   "s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
                   "for _ in range(600):\n"
                   "    s.sendto(b'WATCHDOG=1', sys.argv[1].replace('@', '\\0', 1))\n"
                   "    time.sleep(0.05)\n",
         _notify_address(pid).replace("\0", "@", 1)])
    try:
        wait_for(lambda: any(e["kind"] == "watchdog" for e in events(corral, "stuck")), 20,
                 "a watchdog restart")
    finally:
        pinger.kill()
        pinger.wait()
