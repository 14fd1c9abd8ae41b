"""Protocol versions between the launcher and the supervisor: an incompatible pair says so
in one line and the services keep running; a supervisor that never says Hello is killed
and started again; `sup status` shows each part's version.

The builds: a copy of the source tree with the protocol version (and the release) bumped,
chosen per supervisor start by a wrapper (``CORRAL_SUP_BINARY``) that reads the build's
path from a file the test writes."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

from corral import __version__
from corral.protocol import messages as m

from .conftest import PY, Corral, pid_alive, wait_for
from .test_launcher import FAKE
from .test_reattach import COUNTER, numbers

SRC = Path(__file__).resolve().parents[2] / "src"


def build(tmp_path: Path, name: str, protocol: str, release: str) -> Path:
    """A copy of ``src/`` whose launcher protocol is ``protocol`` and release ``release``."""
    root = tmp_path / name
    shutil.copytree(SRC / "corral", root / "corral",
                    ignore=shutil.ignore_patterns("__pycache__"))
    messages = root / "corral" / "protocol" / "messages.py"
    text, count = re.subn(r'^PROTOCOL_VERSION = ".*"$', f'PROTOCOL_VERSION = "{protocol}"',
                          messages.read_text(), flags=re.M)
    assert count == 1
    messages.write_text(text)
    (root / "corral" / "__init__.py").write_text(f'__version__ = "{release}"\n')
    return root


def supervisor_switch(tmp_path: Path) -> tuple[Path, str]:
    """A file naming the build the next supervisor runs from, and the command that reads it."""
    which = tmp_path / "supervisor-build"
    which.write_text(str(SRC))
    wrapper = tmp_path / "supervisor.sh"
    wrapper.write_text(f'#!/bin/sh\nPYTHONPATH="$(cat {which})" exec {PY} -m corral.supervisor "$@"\n')
    wrapper.chmod(0o755)
    return which, str(wrapper)


def fake_launcher(tmp_path: Path, codes: str, versions: str,
                  env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], Path]:
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "exit_codes").write_text(codes)
    (fake / "versions").write_text(versions)
    (fake / "spawn").write_text(json.dumps(["sleep", "1000"]))
    (fake / "wait").write_text("")
    full = {**os.environ, "CORRAL_SUP_BINARY": f"{PY} {FAKE}", "FAKE_SUP_DIR": str(fake),
            **(env or {})}
    with (tmp_path / "launcher.err").open("wb") as err:
        proc = subprocess.Popen([PY, "-m", "corral", "sup", "run", "--state-dir",
                                 str(tmp_path / "state")], env=full, stderr=err)
    return proc, fake


def test_incompatible_supervisor_is_refused_and_services_keep_running(tmp_path: Path) -> None:
    """A supervisor of another major version is refused with Error{Incompatible} naming both
    versions, in one line; the service keeps running, no supervisor is started again until
    SIGHUP, and then a compatible one is."""
    proc, fake = fake_launcher(tmp_path, "0 85 -1", f"{m.PROTOCOL_VERSION} 2.0")
    pid = int(json.loads(wait_for(lambda: (fake / "spawned").exists()
                                  and (fake / "spawned").read_text()))["pid"])
    (fake / "wait").unlink()  # the first supervisor exits 0: the next one says 2.0
    refused = json.loads(wait_for(lambda: (fake / "refused2").exists()
                                  and (fake / "refused2").read_text(), what="the refusal"))
    assert refused["code"] == m.E_INCOMPATIBLE
    assert "'2.0'" in refused["message"] and repr(m.PROTOCOL_VERSION) in refused["message"]
    second = int((fake / "starts").read_text().split()[1])
    wait_for(lambda: not pid_alive(second), what="the refused supervisor to exit")
    err = tmp_path / "launcher.err"
    # The launcher's line may reach its stderr a moment after the supervisor is gone.
    lines = wait_for(lambda: [line for line in err.read_text().splitlines()
                              if "incompatible" in line], what="the launcher's line")
    assert len(lines) == 1 and "'2.0'" in lines[0] and "services keep running" in lines[0]
    assert pid_alive(pid)
    # A compatible supervisor is installed; SIGHUP tells the launcher to try again.
    (fake / "versions").write_text(f"{m.PROTOCOL_VERSION} 2.0 {m.PROTOCOL_VERSION}")
    proc.send_signal(signal.SIGHUP)
    wait_for(lambda: (fake / "greeted3").exists(), what="a compatible supervisor")
    assert not (fake / "refused3").exists(), "the launcher kept restarting the refused one"
    assert len((fake / "starts").read_text().split()) == 3
    assert pid_alive(pid)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    assert not pid_alive(pid)


def test_supervisor_without_hello_is_killed_and_restarted(tmp_path: Path) -> None:
    """A supervisor that never says Hello is killed after the timeout and a new one started;
    the service keeps running."""
    proc, fake = fake_launcher(tmp_path, "0 0 -1", f"1.0 silent {m.PROTOCOL_VERSION}",
                               env={m.ENV_HELLO_TIMEOUT: "0.5"})
    pid = int(json.loads(wait_for(lambda: (fake / "spawned").exists()
                                  and (fake / "spawned").read_text()))["pid"])
    (fake / "wait").unlink()
    wait_for(lambda: (fake / "greeted3").exists(), what="the supervisor after the silent one")
    silent = int((fake / "starts").read_text().split()[1])
    assert not pid_alive(silent)
    text = (tmp_path / "launcher.err").read_text()
    assert f"the supervisor (pid {silent}) did not say Hello within 0.5 s; killing it" in text
    assert pid_alive(pid)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0


def test_supervisor_of_another_build(corral_factory: object, tmp_path: Path) -> None:
    """With a running counter service: a supervisor of the next minor version (another
    release) reattaches, and `sup status` shows each part's version; one of the next major
    version is refused in one line while the counter runs on untouched; the compatible one
    comes back on SIGHUP and finds the same service."""
    which, wrapper = supervisor_switch(tmp_path)
    minor = build(tmp_path, "minor", "1.99", "9.9.1")
    major = build(tmp_path, "major", "2.0", "9.9.2")
    assert callable(corral_factory)
    corral: Corral = corral_factory()
    corral.env["CORRAL_SUP_BINARY"] = wrapper
    corral.start()
    corral.ok("svc", "load", "counter", "--", PY, "-u", "-c", COUNTER)
    pid = corral.status("counter")["pid"]
    status = corral.sup_status()
    assert status["versions"]["launcher"] == __version__
    assert status["versions"]["supervisor"] == __version__
    assert status["versions"]["protocol"]["launcher"] == m.PROTOCOL_VERSION
    launcher_pid = status["launcher_pid"]

    def restart_into(root: Path) -> None:
        old = corral.sup_status()["supervisor_pid"]
        which.write_text(str(root))
        corral.ok("sup", "restart")
        wait_for(lambda: corral.answers() and corral.sup_status()["supervisor_pid"] != old, 30,
                 "the new supervisor")

    restart_into(minor)
    status = corral.sup_status()
    assert status["versions"]["supervisor"] == "9.9.1"
    assert status["versions"]["launcher"] == __version__
    assert status["versions"]["protocol"] == {"launcher": m.PROTOCOL_VERSION,
                                              "supervisor": "1.99"}
    shown = corral.ok("sup", "status")
    assert f"launcher {__version__}, supervisor 9.9.1" in shown
    assert corral.status("counter")["pid"] == pid

    # The next major version: refused, in one line, and the counter keeps counting.
    old = corral.sup_status()["supervisor_pid"]
    which.write_text(str(major))
    corral.ok("sup", "restart")
    wait_for(lambda: "incompatible" in corral.output.read_text(), 30, "the refusal")
    wait_for(lambda: not pid_alive(old) and not corral.answers(), 30, "no supervisor")
    lines = [line for line in corral.output.read_text().splitlines() if "incompatible" in line]
    assert len(lines) == 1 and "'2.0'" in lines[0] and repr(m.PROTOCOL_VERSION) in lines[0]
    before = len(numbers(corral, "counter"))
    wait_for(lambda: len(numbers(corral, "counter")) > before + 50, what="the counter to go on")
    assert pid_alive(pid)

    # Back to a compatible build; SIGHUP to the launcher starts it.
    which.write_text(str(SRC))
    assert corral.proc is not None
    os.kill(launcher_pid, signal.SIGHUP)
    wait_for(corral.answers, 30, "the compatible supervisor")
    status = corral.status("counter")
    assert status["pid"] == pid and status["restarts"] == 0 and status["state"] == "up"
    seen = numbers(corral, "counter")
    assert seen == list(range(seen[0], seen[0] + len(seen))), "gap or duplicate in the log"
    assert corral.sup_status()["versions"]["supervisor"] == __version__
