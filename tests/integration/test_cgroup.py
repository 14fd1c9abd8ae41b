"""cgroup v2 per instance: a stop kills daemons that left the process group, the cgroup
is removed, a supervisor crash changes nothing, and the process-group fallback works."""

from __future__ import annotations

import hashlib
import json
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from corral.launcher.cgroup import own_cgroup_dir

from .conftest import PY, Corral, pid_alive, python_cmd, wait_for
from .test_launcher import DirectLauncher


def _own_dir() -> str | None:
    """This process's own v2 cgroup directory (the launcher's, which inherits it)."""
    try:
        with open("/proc/self/mountinfo") as f, open("/proc/self/cgroup") as g:
            return own_cgroup_dir(f.read(), g.read())
    except OSError:
        return None


def _v2_writable() -> bool:
    """True if we can make a child cgroup that has cgroup.kill (the root has none)."""
    own = _own_dir()
    if own is None:
        return False
    probe = os.path.join(own, f"corral-probe-{os.getpid()}")
    try:
        os.mkdir(probe)
    except OSError:
        return False
    try:
        return os.path.exists(os.path.join(probe, "cgroup.kill"))
    finally:
        os.rmdir(probe)


needs_v2 = pytest.mark.skipif(not _v2_writable(),
                              reason="cgroup v2 is not mounted writable with cgroup.kill here")


def _memory_controller() -> bool:
    own = _own_dir()
    try:
        with open(os.path.join(own or "/nonexistent", "cgroup.controllers")) as f:
            return "memory" in f.read().split()
    except OSError:
        return False


# The service forks a child that calls setsid() (leaving the service's process group and
# session) and forks the daemon, which records its pid and sleeps; the middle one exits,
# so the daemon is re-parented: only its cgroup still ties it to the service.
DAEMONIZE = """
import os, sys, time
pidfile = sys.argv[1]
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        with open(pidfile + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.rename(pidfile + ".tmp", pidfile)
        time.sleep(1000)
    os._exit(0)
time.sleep(1000)
"""


def _cgroup_of(pid: int) -> str:
    with open(f"/proc/{pid}/cgroup") as f:
        return next(line[3:].strip() for line in f if line.startswith("0::"))


def _fs_path(cgroup: str) -> Path:
    """The directory of a cgroup path as /proc/PID/cgroup shows it."""
    own = _own_dir()
    assert own is not None
    mount_root = own[: len(own) - len(_cgroup_of(os.getpid()).rstrip("/"))]
    return Path(mount_root + cgroup)


def _daemon(tmp_path: Path) -> int:
    pidfile = tmp_path / "daemon.pid"
    return int(wait_for(lambda: pidfile.exists() and pidfile.read_text(), what="the daemon"))


def _load_daemonizer(corral: Corral, tmp_path: Path,
                     limits: bool = True) -> tuple[int, int, Path]:
    """Load the service (a memory limit gets it a cgroup; without one, it needs
    CORRAL_CGROUP=all); return (service pid, daemon pid, the service's cgroup dir)."""
    spec = tmp_path / "daemonizer.yaml"
    command = [*python_cmd(DAEMONIZE), str(tmp_path / "daemon.pid")]
    spec.write_text(f"name: daemonizer\ncommand: {json.dumps(command)}\n"
                    "stop: {timeout: 5s}\n" + ("limits: {memory: 256MiB}\n" if limits else ""))
    corral.ok("svc", "load", "-f", str(spec))
    service = corral.wait_state("daemonizer", "up")["pid"]
    daemon = _daemon(tmp_path)
    assert os.getsid(daemon) != os.getsid(service), "the daemon must have left the session"
    leaf = _cgroup_of(daemon)
    assert leaf == _cgroup_of(service) and leaf.endswith("/daemonizer.0"), leaf
    return service, daemon, _fs_path(leaf)


@needs_v2
def test_stop_kills_a_daemon_that_left_the_process_group(corral: Corral,
                                                         tmp_path: Path) -> None:
    """1. a service double-forks a setsid() daemon; 2. `svc stop`; 3. the daemon is dead
    and the service's cgroup directory is gone."""
    service, daemon, leaf = _load_daemonizer(corral, tmp_path)
    assert leaf.is_dir()
    corral.ok("svc", "stop", "daemonizer")
    wait_for(lambda: not pid_alive(daemon), what="the daemon to die")
    assert not pid_alive(service)
    wait_for(lambda: not leaf.exists(), what="the cgroup to be removed")


@needs_v2
def test_a_supervisor_crash_does_not_disturb_the_cgroups(corral: Corral,
                                                         tmp_path: Path) -> None:
    """The launcher owns the cgroups: after a supervisor `kill -9` the service and its
    daemon run on in their cgroup, and a stop still kills both and removes it."""
    service, daemon, leaf = _load_daemonizer(corral, tmp_path)
    before = corral.sup_status()["supervisor_pid"]
    os.kill(before, signal.SIGKILL)
    wait_for(lambda: corral.answers() and corral.sup_status()["supervisor_pid"] != before,
             30, "a new supervisor")
    assert pid_alive(service) and pid_alive(daemon) and leaf.is_dir()
    assert corral.status("daemonizer")["pid"] == service
    corral.ok("svc", "stop", "daemonizer")
    wait_for(lambda: not pid_alive(daemon), what="the daemon to die")
    wait_for(lambda: not leaf.exists(), what="the cgroup to be removed")


def test_only_instances_that_ask_get_a_cgroup(tmp_path: Path) -> None:
    """By default a Spawn gets a cgroup only with cgroup: true or a memory limit (each
    costs a cgroup migration on the restart path); cgroup: false refuses one."""
    launcher = DirectLauncher(tmp_path)
    try:
        cgroups_here = _v2_writable()
        plain = launcher.spawn("plain/0", ["sleep", "1000"])
        asked = launcher.spawn("asked/0", ["sleep", "1000"], cgroup=True)
        capped = launcher.spawn("capped/0", ["sleep", "1000"], memory_max=256 << 20)
        refused = launcher.spawn("refused/0", ["sleep", "1000"], memory_max=256 << 20,
                                 cgroup=False)
        assert plain["cgroup"] is None and refused["cgroup"] is None
        assert bool(asked["cgroup"]) == bool(capped["cgroup"]) == cgroups_here
        for reply in (plain, asked, capped, refused):
            os.kill(reply["pid"], signal.SIGKILL)
        bad = launcher.spawn("bad/0", ["sleep", "1000"], cgroup="yes")
        assert (bad["code"], bad["message"]) == ("BadRequest", "'cgroup' must be true or false")
    finally:
        assert launcher.close() == 0


@needs_v2
def test_no_cgroup_directory_until_one_is_needed(tmp_path: Path) -> None:
    """A launcher whose children never ask for a cgroup makes no corral-<hash> directory
    (nothing to leave behind if it is killed); the first one that asks makes it."""
    launcher = DirectLauncher(tmp_path)
    own = _own_dir()
    assert own is not None
    digest = hashlib.sha256(str(launcher.state).encode()).hexdigest()[:12]
    base = Path(own) / f"corral-{digest}"
    try:
        plain = launcher.spawn("plain/0", ["sleep", "1000"])
        assert plain["cgroup"] is None and not base.exists()
        asked = launcher.spawn("asked/0", ["sleep", "1000"], cgroup=True)
        assert asked["cgroup"] == str(base / "asked.0")
    finally:
        assert launcher.close() == 0
    assert not base.exists()


@needs_v2
def test_cgroup_all_gives_every_instance_one(corral_factory: Callable[[], Corral],
                                            tmp_path: Path) -> None:
    """CORRAL_CGROUP=all: a service without a memory limit is in a cgroup too, and a
    stop kills its daemon."""
    corral = corral_factory()
    corral.start(env={"CORRAL_CGROUP": "all"})
    _, daemon, leaf = _load_daemonizer(corral, tmp_path, limits=False)
    corral.ok("svc", "stop", "daemonizer")
    wait_for(lambda: not pid_alive(daemon), what="the daemon to die")
    wait_for(lambda: not leaf.exists(), what="the cgroup to be removed")


@needs_v2
def test_a_crashed_service_takes_its_daemons_along(tmp_path: Path) -> None:
    """When a service's main process dies on its own, its cgroup is killed whole (the
    daemon too) before the exit is reported, and the leaf is removed; the launcher's
    own cgroup tree is gone after it exits."""
    launcher = DirectLauncher(tmp_path)
    try:
        reply = launcher.spawn("crash/0", [PY, "-c", DAEMONIZE, str(tmp_path / "daemon.pid")],
                               cgroup=True)
        assert reply["type"] == "Spawned" and reply["cgroup"], reply
        leaf = Path(reply["cgroup"])
        daemon = _daemon(tmp_path)
        os.kill(reply["pid"], signal.SIGKILL)
        exited = launcher.wait_unasked(lambda msg: msg.get("pid") == reply["pid"])
        assert exited["signal"] == "KILL"
        wait_for(lambda: not pid_alive(daemon), what="the daemon to die")
        wait_for(lambda: not leaf.exists(), what="the cgroup to be removed")
        base = leaf.parent
    finally:
        assert launcher.close() == 0
    assert not base.exists()


@needs_v2
def test_leftovers_of_a_dead_launcher_are_killed_at_start(tmp_path: Path) -> None:
    """A launcher killed with SIGKILL leaves its services orphaned in their cgroups; the
    next launcher on the same state directory kills them and removes the cgroups."""
    first = DirectLauncher(tmp_path)
    reply = first.spawn("orphan/0", [PY, "-c", DAEMONIZE, str(tmp_path / "daemon.pid")],
                        cgroup=True)
    leaf = Path(reply["cgroup"])
    daemon = _daemon(tmp_path)
    os.killpg(first.proc.pid, signal.SIGKILL)  # the launcher and its relay, not the services
    first.proc.wait()
    first.close()
    assert pid_alive(reply["pid"]) and pid_alive(daemon)
    (tmp_path / "relay.sock").unlink()
    second = DirectLauncher(tmp_path)
    try:
        wait_for(lambda: not pid_alive(daemon) and not pid_alive(reply["pid"]),
                 what="the orphans to be killed")
        wait_for(lambda: not leaf.exists(), what="the stale cgroup to be removed")
    finally:
        second.close()


def test_without_cgroups_services_run_in_process_groups(tmp_path: Path) -> None:
    """CORRAL_CGROUP=off (as on a host without a writable cgroup v2): one line says so,
    spawns carry no cgroup, and a crashed service's process group is still killed."""
    launcher = DirectLauncher(tmp_path, env={"CORRAL_CGROUP": "off"})
    try:
        script = ("import os, sys, time\n"
                  "if os.fork() == 0:\n"
                  "    open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(1000)\n"
                  "time.sleep(1000)\n")
        pidfile = tmp_path / "kid.pid"
        reply = launcher.spawn("pg/0", [PY, "-c", script, str(pidfile)], cgroup=True)
        assert reply["type"] == "Spawned" and reply["cgroup"] is None, reply
        kid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text(), what="the kid"))
        os.kill(reply["pid"], signal.SIGKILL)
        launcher.wait_unasked(lambda msg: msg.get("pid") == reply["pid"])
        wait_for(lambda: not pid_alive(kid), what="the process group to be killed")
    finally:
        assert launcher.close() == 0
    assert "process groups, not cgroups: CORRAL_CGROUP=off" in launcher.stderr.read_text()


@needs_v2
@pytest.mark.skipif(not _memory_controller(),
                    reason="the cgroup v2 memory controller is not available here "
                           "(hybrid host: memory is on cgroup v1)")
def test_memory_limit_becomes_memory_max_and_an_oom_kill_is_reported(tmp_path: Path) -> None:
    """Spawn{memory_max} writes memory.max; a child that outgrows it is OOM-killed and
    the Exited message says so."""
    launcher = DirectLauncher(tmp_path)
    try:
        limit = 64 * 1024 * 1024
        reply = launcher.spawn("hog/0", [PY, "-c", "b = b'x' * (512 << 20)"],
                               memory_max=limit)
        if reply.get("memory_max") is None:
            pytest.skip("the memory controller could not be enabled for corral's cgroup "
                        "(the launcher's own cgroup has other processes)")
        exited = launcher.wait_unasked(lambda msg: msg.get("pid") == reply["pid"])
        assert exited["signal"] == "KILL" and exited["oom_killed"] is True, exited
    finally:
        launcher.close()



@needs_v2
def test_the_supervisor_sends_limits_memory_to_the_launcher(corral: Corral,
                                                            tmp_path: Path) -> None:
    """`limits.memory` of a loaded process reaches the launcher as Spawn.memory_max: it is
    the leaf's memory.max where the controller exists; elsewhere (this hybrid host) the
    launcher says once that memory limits stay the supervisor's."""
    spec = tmp_path / "capped.yaml"
    spec.write_text(f"name: capped\ncommand: [{PY!r}, '-c', 'import time; time.sleep(1000)']\n"
                    "limits: {memory: 64MiB}\n")
    corral.ok("svc", "load", "-f", str(spec))
    pid = corral.wait_state("capped", "up")["pid"]
    leaf = _cgroup_of(pid)
    assert leaf.endswith("/capped.0"), leaf
    memory_max = _fs_path(leaf) / "memory.max"
    if memory_max.exists():
        assert memory_max.read_text().strip() == str(64 * 1024 * 1024)
    else:
        wait_for(lambda: "memory limits stay the supervisor's (for capped/0"
                 in corral.output.read_text(), what="the launcher's note")
