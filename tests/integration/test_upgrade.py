"""`corral sup upgrade`: the launcher re-executes itself with the installed code, keeping
its pid and every service, and no line of output is lost; installed code that cannot
work with it is refused in one line and nothing changes.

The installed code is a copy of the source tree with the protocol minor version and the
release bumped (``build`` from test_versions), named by ``CORRAL_UPGRADE_PYTHONPATH``,
which the launcher reads once when it starts."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from corral import __version__
from corral.protocol import messages as m

from .conftest import PY, Corral, pid_alive, wait_for
from .test_cgroup import _fs_path, needs_v2
from .test_reattach import COUNTER, numbers
from .test_traffic import APP, Client, free_port, get, healthy_pids, start_app
from .test_versions import build

MAJOR = m.PROTOCOL_VERSION.split(".")[0]


def started(corral_factory: object, root: Path) -> Corral:
    assert callable(corral_factory)
    corral: Corral = corral_factory()
    corral.env["CORRAL_UPGRADE_PYTHONPATH"] = str(root)
    corral.start()
    corral.ok("svc", "load", "counter", "--", PY, "-u", "-c", COUNTER)
    corral.wait_state("counter", "up")
    return corral


def assert_counted(corral: Corral) -> None:
    """The counter's log holds every number once, in order, and it still counts."""
    before = len(numbers(corral, "counter"))
    wait_for(lambda: len(numbers(corral, "counter")) > before + 100, what="more numbers")
    seen = numbers(corral, "counter")
    assert seen == list(range(seen[0], seen[0] + len(seen))), "gap or duplicate in the log"


def refusal(corral: Corral) -> str:
    """`sup upgrade`, refused: its one line on stderr (and a non-zero exit)."""
    result = corral.run("sup", "upgrade")
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_upgrade_keeps_pids_and_every_line(corral_factory: object, tmp_path: Path) -> None:
    """Under a counter writing a line a millisecond: `sup upgrade` into a build of the next
    minor version keeps the launcher's pid and the service's, restarts nothing, `sup
    status` shows the new release for every part, and the log has no gap or duplicate."""
    new = build(tmp_path, "next", f"{MAJOR}.99", "9.9.1")
    corral = started(corral_factory, new)
    pid = corral.status("counter")["pid"]
    before = corral.sup_status()
    assert before["versions"]["launcher"] == __version__
    wait_for(lambda: len(numbers(corral, "counter")) > 200, what="the counter to count")

    result = corral.run("sup", "upgrade", "--json")
    assert result.returncode == 0, result.stderr
    after = json.loads(result.stdout)
    assert after["upgraded"]["to"] == {"corral": "9.9.1", "protocol": f"{MAJOR}.99"}
    assert after["launcher_pid"] == before["launcher_pid"]
    assert after["supervisor_pid"] != before["supervisor_pid"]
    assert after["versions"]["launcher"] == after["versions"]["supervisor"] == "9.9.1"
    assert after["versions"]["protocol"] == {"launcher": f"{MAJOR}.99",
                                             "supervisor": f"{MAJOR}.99"}
    status = corral.status("counter")
    assert status["pid"] == pid and status["restarts"] == 0 and status["state"] == "up"
    assert "9.9.1" in corral.ok("sup", "status")
    assert_counted(corral)
    text = corral.output.read_text()
    assert f"upgraded in place (pid {before['launcher_pid']}) from corral {__version__} " \
           "to 9.9.1" in text

    # And once more, from the new build to itself: the hand-over state it wrote reads back.
    again = corral.run("sup", "upgrade")
    assert again.returncode == 0, again.stderr
    assert f"pid {before['launcher_pid']} kept" in again.stdout
    assert corral.status("counter")["pid"] == pid
    assert_counted(corral)
    assert corral.stop() == 0
    assert not pid_alive(pid)


def test_incompatible_upgrade_is_refused(corral_factory: object, tmp_path: Path) -> None:
    """Installed code of the next protocol major version: one line, a non-zero exit, and
    the launcher, the supervisor and the service all run on as they were."""
    new = build(tmp_path, "major", f"{int(MAJOR) + 1}.0", "9.9.2")
    corral = started(corral_factory, new)
    pid = corral.status("counter")["pid"]
    before = corral.sup_status()
    line = refusal(corral)
    assert "incompatible" in line and f"'{int(MAJOR) + 1}.0'" in line
    assert "nothing was changed" in line
    after = corral.sup_status()
    assert after["supervisor_pid"] == before["supervisor_pid"]
    assert after["launcher_pid"] == before["launcher_pid"]
    assert after["versions"] == before["versions"]
    assert corral.status("counter")["pid"] == pid
    assert_counted(corral)


def test_broken_installed_code_is_refused(corral_factory: object, tmp_path: Path) -> None:
    """Installed code that cannot even be imported: the check's last line, in one line;
    nothing changes."""
    new = build(tmp_path, "broken", f"{MAJOR}.99", "9.9.3")
    (new / "corral" / "launcher" / "pid1.py").write_text("import corral_no_such_module\n")
    corral = started(corral_factory, new)
    pid = corral.status("counter")["pid"]
    before = corral.sup_status()
    line = refusal(corral)
    assert "fails its check" in line and "ModuleNotFoundError" in line
    after = corral.sup_status()
    assert after["supervisor_pid"] == before["supervisor_pid"]
    assert corral.status("counter")["pid"] == pid
    assert_counted(corral)


def test_upgrade_replaces_the_balancer_without_refusing_a_connection(
        corral_factory: object, tmp_path: Path) -> None:
    """A proxy service under a loop of HTTP requests (a new connection each): `sup upgrade`
    replaces the balancer by one of the new build, which takes over its listening socket;
    not one request fails, the app's instances keep their pids, and `sup status` shows the
    new release for every part."""
    new = build(tmp_path, "next", f"{MAJOR}.99", "9.9.4")
    assert callable(corral_factory)
    corral: Corral = corral_factory()
    corral.env["CORRAL_UPGRADE_PYTHONPATH"] = str(new)
    corral.start()
    app = tmp_path / "app.py"
    app.write_text(APP)
    port = free_port()
    start_app(corral, tmp_path, app, port)
    pids = healthy_pids(corral)
    old_balancer = corral.sup_status()["balancer"]["pid"]
    wait_for(lambda: corral.sup_status()["versions"]["balancer"] == __version__,
             what="the balancer's version")
    client = Client(port)
    client.start()
    try:
        wait_for(lambda: client.ok > 20, what="requests through the balancer")
        result = corral.run("sup", "upgrade")
        assert result.returncode == 0, result.stderr
        assert "balancer " + __version__ + " -> 9.9.4" in result.stdout
        count = client.ok
        wait_for(lambda: client.ok > count + 50, what="requests after the upgrade")
    finally:
        client.stop()
    assert client.failures == []
    status = corral.sup_status()
    assert status["versions"]["balancer"] == "9.9.4"
    assert status["balancer"]["pid"] != old_balancer
    assert status["balancer"]["restarts"] == 0
    wait_for(lambda: not pid_alive(old_balancer), what="the old balancer to finish")
    assert healthy_pids(corral) == pids
    assert "handed 1 listening socket over to a new balancer" in \
        (corral.state_dir / "logs" / ".balancer.log").read_text()


def test_installed_code_that_breaks_after_its_check_falls_back(corral_factory: object,
                                                               tmp_path: Path) -> None:
    """Installed code that passes its check but cannot start for real (it changed since):
    the launcher goes back to the code it ran, with the same pid and every service; `sup
    upgrade` says so in one line and exits non-zero."""
    new = build(tmp_path, "flaky", f"{MAJOR}.99", "9.9.6")
    main = new / "corral" / "launcher" / "__main__.py"
    # Only when imported with a hand-over state (the check runs it as __main__ and exits
    # before the end of the file).
    main.write_text(main.read_text() + '\nif os.environ.get("CORRAL_UPGRADE_STATE_FD"):\n'
                    '    raise ImportError("this build cannot start")\n')
    corral = started(corral_factory, new)
    pid = corral.status("counter")["pid"]
    before = corral.sup_status()
    wait_for(lambda: len(numbers(corral, "counter")) > 200, what="the counter to count")
    result = corral.run("sup", "upgrade")
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"could not start corral 9.9.6 and went back to corral {__version__}" in lines[0]
    after = corral.sup_status()
    assert after["launcher_pid"] == before["launcher_pid"]
    assert after["versions"] == before["versions"]
    status = corral.status("counter")
    assert status["pid"] == pid and status["restarts"] == 0
    assert_counted(corral)
    assert "this build cannot start" in corral.output.read_text()


@needs_v2
def test_upgrade_keeps_held_sockets_and_cgroups(corral_factory: object,
                                                tmp_path: Path) -> None:
    """Socket mode, every instance in a cgroup (CORRAL_CGROUP=all): after `sup upgrade` the
    instances are in the same cgroups, a restart hands the socket the launcher held across
    the exec to the new instances, which serve it, and a stop removes the cgroups."""
    new = build(tmp_path, "next", f"{MAJOR}.99", "9.9.7")
    assert callable(corral_factory)
    corral: Corral = corral_factory()
    corral.env["CORRAL_UPGRADE_PYTHONPATH"] = str(new)
    corral.start(env={"CORRAL_CGROUP": "all"})
    app = tmp_path / "app.py"
    app.write_text(APP)
    port = free_port()
    start_app(corral, tmp_path, app, port, mode="socket")
    pids = healthy_pids(corral)
    groups = {pid: Path(f"/proc/{pid}/cgroup").read_text() for pid in pids}
    assert all("/corral-" in text for text in groups.values()), groups
    result = corral.run("sup", "upgrade")
    assert result.returncode == 0, result.stderr
    assert {pid: Path(f"/proc/{pid}/cgroup").read_text() for pid in pids} == groups
    corral.ok("svc", "restart", "app")
    wait_for(lambda: len(fresh := healthy_pids(corral)) == 2 and not set(fresh) & set(pids),
             30, "new instances")
    assert get(port).startswith("version 1")
    base = _fs_path(next(iter(groups.values())).strip().split("::", 1)[1]).parent
    assert base.is_dir()
    assert corral.stop() == 0
    wait_for(lambda: not base.exists(), what="corral's cgroups to be removed")


def test_upgrade_keeps_a_respawn_waiting_for_its_delay(corral_factory: object,
                                                        tmp_path: Path) -> None:
    """A quick second death waits out its backoff in the launcher when `sup upgrade`
    re-executes it: the respawn survives the exec with its order, the new supervisor shows
    the service in backoff meanwhile, and then takes the one process the launcher starts."""
    new = build(tmp_path, "next", f"{MAJOR}.99", "9.9.1")
    corral = started(corral_factory, new)
    spec = tmp_path / "slow.yaml"
    spec.write_text("name: slow\ncommand: [sleep, '4250']\n"
                    "restart: {backoff_min: 8s, backoff_max: 8s}\n")
    corral.ok("svc", "load", "-f", str(spec))
    first = corral.wait_state("slow", "up")["pid"]
    os.kill(first, signal.SIGKILL)  # a young death: at once
    second = wait_for(lambda: (p := corral.status("slow")["pid"]) not in (None, first) and p,
                      what="the first restart")
    corral.wait_state("slow", "up")
    os.kill(second, signal.SIGKILL)  # the second waits 8 s in the launcher
    corral.wait_state("slow", "backoff")
    result = corral.run("sup", "upgrade", "--json")
    assert result.returncode == 0, result.stderr
    assert corral.status("slow")["state"] == "backoff"
    third = corral.wait_state("slow", "up", timeout=30)["pid"]
    assert third not in (first, second) and pid_alive(third)
    status = corral.status("slow")
    assert status["restarts"] == 2
    assert corral.sup_status()["versions"]["launcher"] == "9.9.1"
