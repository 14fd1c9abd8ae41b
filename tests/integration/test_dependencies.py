"""depends_on: start after the dependencies are ready, stop before them."""

from __future__ import annotations

from pathlib import Path

from .conftest import PY, Corral, wait_for

STOPPABLE = ("import signal,sys,time\n"
             "def bye(*_):\n"
             "    print('stopping', time.monotonic_ns(), flush=True); sys.exit(0)\n"
             "signal.signal(signal.SIGTERM, bye)\n"
             "print('ready', flush=True)\n"
             "time.sleep(1000)\n")


def test_dependent_waits_for_its_dependency_to_be_ready(corral: Corral, tmp_path: Path) -> None:
    """A service whose dependency is not ready yet stays down and says what it waits for;
    it starts once the dependency's health check passes."""
    flag = tmp_path / "db-ready"
    (tmp_path / "db.yaml").write_text(
        "name: db\ncommand: [sleep, '1000']\nreadiness: health\n"
        f"health: {{exec: [sh, -c, 'test -f {flag} || exit 2'], interval: 200ms,"
        " retries: 1000}\n")
    (tmp_path / "app.yaml").write_text(
        "name: app\ncommand: [sleep, '1001']\ndepends_on: [db]\n")
    corral.ok("svc", "load", "-f", str(tmp_path / "db.yaml"))
    corral.ok("svc", "load", "-f", str(tmp_path / "app.yaml"))
    app = corral.status("app")
    assert app["state"] == "down" and app["pid"] is None
    assert "waiting for db" in app["reason"]
    assert corral.status("db")["state"] == "starting"
    flag.write_text("")
    corral.wait_state("db", "up")
    started = corral.wait_state("app", "up")
    assert started["pid"] is not None


def test_unknown_dependency_and_cycles_are_refused(corral: Corral, tmp_path: Path) -> None:
    """A dependency on an unknown service, or a cycle, is refused at load and named."""
    (tmp_path / "x.yaml").write_text("name: x\ncommand: [sleep, '1']\ndepends_on: [nope]\n")
    result = corral.run("svc", "load", "-f", str(tmp_path / "x.yaml"))
    assert result.returncode != 0 and "nope" in result.stderr
    target = tmp_path / "cycle.yaml"
    target.write_text("processes:\n"
                      "  - {name: a, command: [sleep, '1'], depends_on: [b]}\n"
                      "  - {name: b, command: [sleep, '1'], depends_on: [a]}\n")
    result = corral.run("sup", "run", "--target", str(target))
    assert result.returncode != 0 and "a -> b -> a" in result.stderr.replace("b -> a -> b",
                                                                             "a -> b -> a")
    assert corral.status() == []


def test_unloading_a_dependency_in_use_is_refused(corral: Corral, tmp_path: Path) -> None:
    """A service others depend on cannot be unloaded; the error names the dependents."""
    corral.ok("svc", "load", "base", "--", "sleep", "1000")
    (tmp_path / "top.yaml").write_text("name: top\ncommand: [sleep, '1']\ndepends_on: [base]\n")
    corral.ok("svc", "load", "-f", str(tmp_path / "top.yaml"))
    result = corral.run("svc", "unload", "base")
    assert result.returncode != 0 and "top" in result.stderr
    assert [s["name"] for s in corral.status()] == ["base", "top"]


def test_shutdown_stops_dependents_first(corral_factory, tmp_path: Path) -> None:
    """On shutdown a dependent stops before its dependency, whatever the load order."""
    script = tmp_path / "svc.py"
    script.write_text(STOPPABLE)
    target = tmp_path / "t.yaml"
    target.write_text("processes:\n"
                      f"  - {{name: web, command: [{PY}, {script}], depends_on: [db]}}\n"
                      f"  - {{name: db, command: [{PY}, {script}]}}\n")
    c = corral_factory()
    c.start("--target", str(target))
    for name in ("web", "db"):
        wait_for(lambda n=name: any(" ready" in x for x in c.log_lines(n)), what=f"{name}")
    assert c.stop() == 0
    stamp = {n: int(next(x for x in c.log_lines(n) if " stopping " in x).rsplit(" ", 1)[1])
             for n in ("web", "db")}
    assert stamp["web"] < stamp["db"]
