"""Launcho's deploy flow: a bundle uploaded as a resource, named through a secret, placed in
each instance's fresh working directory, unpacked by a `before` script, and a new version
rolled out health-gated by changing the secret."""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path
from typing import Any

import pytest

from .conftest import Corral, pid_alive, wait_for

pytestmark = pytest.mark.slow

TARGET = """\
processes:
  - name: app
    command: "sh app.sh"
    env: {GREETING: "hello ${WHO}"}
    resources: [{id: "${BUNDLE_ID}", file: bundle.tar}]
    before: "tar -xf bundle.tar && echo unpacked $GREETING"
    health: {exec: [test, -f, ready], interval: 100ms, retries: 1}
    rollout_timeout: 3s
    replace: start-first            # it binds no port: old and new can run side by side
"""


def bundle(tmp_path: Path, version: int) -> Path:
    """A tarball with app.sh, which says its version and greeting, then becomes healthy."""
    src = tmp_path / f"v{version}"
    src.mkdir()
    (src / "app.sh").write_text(
        f'echo "app version {version} says $GREETING"; sleep 0.2; touch ready; exec sleep 600\n')
    out = tmp_path / f"bundle-v{version}.tar"
    with tarfile.open(out, "w") as tar:
        tar.add(src / "app.sh", arcname="app.sh")
    return out


def rollout(corral: Corral) -> dict[str, Any]:
    return json.loads(corral.ok("target", "status", "--json"))["rollout"]  # type: ignore[no-any-return]


def app_pid(corral: Corral) -> int | None:
    svc = corral.status("app")
    live = [i for i in svc["instance_list"] if i["state"] == "up" and i["health"] == "ok"
            and not i.get("retiring")]
    return live[0]["pid"] if len(live) == 1 else None


def test_bundle_through_a_secret_rolls_out_health_gated(corral: Corral, tmp_path: Path) -> None:
    v1 = corral.ok("resource", "up", str(bundle(tmp_path, 1))).strip()
    assert len(v1) == 64
    corral.ok("secret", "set", "BUNDLE_ID", v1)
    corral.ok("secret", "set", "WHO", "world")
    target = tmp_path / "target.yaml"
    target.write_text(TARGET)
    corral.ok("target", "set", str(target))
    first = wait_for(lambda: app_pid(corral), what="version 1 healthy")
    logs = "\n".join(corral.log_lines("app"))
    assert "unpacked hello world" in logs and "app version 1 says hello world" in logs
    workdir = corral.state_dir / "run" / "app" / "0"
    assert (workdir / "bundle.tar").stat().st_ino == \
        (corral.state_dir / "resources" / v1).stat().st_ino   # hardlinked, not copied
    # The secret's value is in the process's environment, never in what corral shows.
    assert "${WHO}" in corral.ok("target", "get")
    assert "world" not in corral.ok("svc", "status", "--json")
    events = corral.ok("events", "--json", "-n", "1000")
    assert "world" not in events and "unpacked hello ***" in events   # output is redacted

    # A new version: upload, point the secret at it -> health-gated replacement.
    v2 = corral.ok("resource", "up", str(bundle(tmp_path, 2))).strip()
    corral.ok("secret", "set", "BUNDLE_ID", v2)
    wait_for(lambda: rollout(corral)["phase"] == "done" and rollout(corral)["id"] >= 2, 30,
             "the secret's rollout")
    second = wait_for(lambda: app_pid(corral), what="version 2 healthy")
    assert second != first and not pid_alive(first)
    assert "app version 2 says hello world" in "\n".join(corral.log_lines("app"))
    assert "secret BUNDLE_ID changed" in rollout(corral)["cause"]
    assert not workdir.exists()        # the ended instance's directory is removed

    # In-use refusals name the users; the old bundle is free to go.
    refused = corral.run("resource", "rm", v2)
    assert refused.returncode == 1 and "app" in refused.stderr
    refused = corral.run("secret", "rm", "BUNDLE_ID")
    assert refused.returncode == 1 and "app" in refused.stderr
    corral.ok("resource", "rm", v1)


def test_a_failing_before_script_keeps_the_old_version(corral: Corral, tmp_path: Path) -> None:
    """A bundle that does not unpack: the new instance never starts, the event carries the
    script's exit status and output, the old instance keeps running, and the failed run's
    directory is kept for inspection."""
    v1 = corral.ok("resource", "up", str(bundle(tmp_path, 1))).strip()
    corral.ok("secret", "set", "BUNDLE_ID", v1)
    corral.ok("secret", "set", "WHO", "world")
    target = tmp_path / "target.yaml"
    target.write_text(TARGET)
    corral.ok("target", "set", str(target))
    first = wait_for(lambda: app_pid(corral), what="version 1 healthy")

    broken = tmp_path / "broken.tar"
    broken.write_bytes(b"this is not a tarball\n" * 100)
    bad = corral.ok("resource", "up", str(broken)).strip()
    result = corral.run("secret", "set", "BUNDLE_ID", bad)   # follows the rollout: it fails
    assert result.returncode == 1 and "failed" in result.stderr
    assert "hook before exited 2" in result.stderr and "tar:" in result.stderr
    assert rollout(corral)["phase"] == "failed"
    assert app_pid(corral) == first and pid_alive(first)
    evs = [json.loads(x) for x in corral.ok("events", "--json", "--service", "app", "-n",
                                            "1000").splitlines()]
    hook = next(e for e in evs if e["kind"] == "hook" and "before" in e["reason"]
                and "succeeded" not in e["reason"])
    assert "exited 2" in hook["reason"]
    assert any("tar" in line for line in hook["last_lines"])
    kept = corral.state_dir / "run" / "app" / "last-failed"
    assert (kept / "bundle.tar").read_bytes() == broken.read_bytes()


def test_a_secret_in_a_failing_command_is_never_shown(corral: Corral, tmp_path: Path) -> None:
    """The launcher's exec error quotes the program; when a secret is in it, the error and
    the events say *** instead."""
    corral.ok("secret", "set", "TOOL", "/opt/hidden-tool-path")
    spec = tmp_path / "spec.yaml"
    spec.write_text('name: tool\ncommand: ["${TOOL}", "--version"]\n')
    result = corral.run("svc", "load", "-f", str(spec))
    assert result.returncode == 1
    assert "hidden-tool-path" not in result.stderr and "***" in result.stderr
    assert "hidden-tool-path" not in corral.ok("events", "--json", "-n", "1000")


def test_the_readme_deploy_flow_works_as_written(corral: Corral, tmp_path: Path) -> None:
    """Run the README's "Deploying a new version" commands verbatim (on a free port instead
    of 8000), with requests flowing throughout: v1 then v2 answer, none fails."""
    import re
    import shutil
    import socket
    import subprocess
    import threading
    import urllib.request

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("### Deploying a new version")[1]
    script = section.split("```sh\n")[1].split("```")[0]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    work = tmp_path / "deploy"
    shutil.copytree(Path(__file__).resolve().parents[2] / "examples" / "deploy", work,
                    ignore=shutil.ignore_patterns("bundle.tar", "VERSION"))
    target = work / "target.yaml"
    target.write_text(target.read_text().replace("127.0.0.1:8000", f"127.0.0.1:{port}"))
    lines = [line.split("  #")[0].strip() for line in script.splitlines()]
    lines = [line.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
             for line in lines if line and not line.startswith("cd ")]
    answers: list[str] = []
    failures: list[str] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
                    answers.append(r.read().decode())
            except OSError as exc:
                if answers:                      # only once it has answered at all
                    failures.append(repr(exc))

    env = {**corral.env, "PATH": f"{Path(sys_executable()).parent}:{os.environ['PATH']}"}
    client = threading.Thread(target=load, daemon=True)
    outputs = []
    for line in lines:
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", line], cwd=work, env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{line}: {done.stderr}"
        outputs.append(done.stdout)
        if line.startswith("corral target set"):
            client.start()
    stop.set()
    client.join(30)
    curls = [out for line, out in zip(lines, outputs, strict=True) if line.startswith("curl")]
    assert re.match(r"hello from v1 \(pid \d+\)", curls[0])
    assert re.match(r"hello from v2 \(pid \d+\)", curls[1])
    assert failures == []
    assert any("v1" in a for a in answers) and any("v2" in a for a in answers)


def sys_executable() -> str:
    import sys
    return sys.executable
