"""corral as a container's PID 1, run from the Dockerfile's own words.

No container builder is needed: the test reads the Dockerfile's ENV and ENTRYPOINT and runs
that exact command as PID 1 of a fresh PID namespace (`unshare --pid --fork --mount-proc`),
with a temporary directory mounted on the image's volume, /var/lib/corral (a tmpfs hides
the host's /var/lib inside the namespace, so nothing outside is touched).  SIGTERM is sent
from outside to the namespace's PID 1, as `docker stop` does.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import PY, python_cmd, wait_for

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
VOLUME = "/var/lib/corral"


def dockerfile() -> dict[str, object]:
    """FROM, ENV, VOLUME, ENTRYPOINT and CMD of the Dockerfile (continuations joined)."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    found: dict[str, object] = {"ENV": {}, "CMD": []}
    for line in text.splitlines():
        word, _, rest = line.strip().partition(" ")
        if word == "ENV":
            env = found["ENV"]
            assert isinstance(env, dict)
            env.update(pair.split("=", 1) for pair in shlex.split(rest))
        elif word in ("ENTRYPOINT", "CMD"):
            found[word] = json.loads(rest)  # exec form only: no shell in between
        elif word in ("FROM", "VOLUME", "COPY", "RUN"):
            found.setdefault(word, []).append(rest)  # type: ignore[union-attr]
    return found


def test_the_dockerfile_installs_corral_from_the_tree_on_a_slim_python() -> None:
    """A slim Python base; the tree copied in and installed with pip; one volume,
    /var/lib/corral, holding the state directory and the target; `corral sup run` as the
    exec-form entrypoint, so corral is PID 1; the CLI inside finds the state (CORRAL_HOME)."""
    spec = dockerfile()
    assert spec["FROM"] == ["python:3.11-slim"]
    assert spec["COPY"] == [". /usr/src/corral"]
    assert any(run.startswith("pip install /usr/src/corral") for run in spec["RUN"])  # type: ignore[attr-defined]
    assert spec["VOLUME"] == [VOLUME]
    entry = spec["ENTRYPOINT"]
    assert isinstance(entry, list) and entry[:3] == ["corral", "sup", "run"]
    assert entry[entry.index("--state-dir") + 1] == f"{VOLUME}/state"
    assert entry[entry.index("--target") + 1] == f"{VOLUME}/target.yaml"
    assert spec["ENV"]["CORRAL_HOME"] == f"{VOLUME}/state"  # type: ignore[index]
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".git" in ignored and "state" in ignored


TARGET = """\
processes:
  - name: web
    command: {web}
    stop: {{timeout: 5s}}
  - name: deaf
    command: {deaf}
    stop: {{timeout: 1s}}
"""
#: Says hello on stdout, and goodbye when TERM comes.
WEB = ("import signal, sys, time\n"
       "def bye(*a):\n    print('web says goodbye', flush=True)\n    sys.exit(0)\n"
       "signal.signal(signal.SIGTERM, bye)\n"
       "print('hello from web', flush=True)\n"
       "while True: time.sleep(1)")
#: Ignores TERM: only the KILL after its stop timeout ends it.
DEAF_TO_TERM = ("import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "print('deaf is up', flush=True)\nwhile True: time.sleep(1)")


class Pod:
    """The Dockerfile's entrypoint as PID 1 of a new PID namespace."""

    def __init__(self, volume: Path, output: Path, extra_env: dict[str, str] | None = None) -> None:
        spec = dockerfile()
        entry = [*spec["ENTRYPOINT"], *spec["CMD"]]  # type: ignore[misc]
        env = {**os.environ, **spec["ENV"], **(extra_env or {})}  # type: ignore[dict-item]
        # Inside: hide the host's /var/lib, put our directory where the volume goes, then
        # exec the entrypoint, which becomes PID 1 (sh was, until the exec).
        script = (f"mount -t tmpfs tmpfs /var/lib && mkdir {VOLUME} && "
                  f'mount --bind "$0" {VOLUME} && exec "$@"')
        argv = ["unshare", "--pid", "--fork", "--mount-proc", "--propagation", "private",
                "sh", "-c", script, str(volume), *entry]
        self.out = output
        self.err = output.with_name("stderr")
        with output.open("wb") as sink, self.err.open("wb") as errors:
            self.proc = subprocess.Popen(argv, env=env, stdout=sink, stderr=errors,
                                         start_new_session=True)
        self.env = {**os.environ, "CORRAL_HOME": str(volume / "state")}

    def pid1(self) -> int:
        """The host pid of the namespace's PID 1 (unshare's child), once it runs corral."""
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        pid = int(children.split()[0])
        status = Path(f"/proc/{pid}/status").read_text()
        nspid = next(ln for ln in status.splitlines() if ln.startswith("NSpid:")).split()
        assert nspid[-1] == "1", nspid
        return pid

    def corral(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([PY, "-m", "corral", *args], capture_output=True, text=True,
                              env=self.env, timeout=60)

    def status(self) -> list[dict[str, object]]:
        result = self.corral("svc", "status", "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)  # type: ignore[no-any-return]

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
def pod(tmp_path: Path) -> Iterator[Pod]:
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is needed: .ci/run installs it")
    volume = tmp_path / "volume"
    volume.mkdir()
    (volume / "target.yaml").write_text(TARGET.format(web=json.dumps(python_cmd(WEB)),
                                                      deaf=json.dumps(python_cmd(DEAF_TO_TERM))))
    started = Pod(volume, tmp_path / "stdout")
    try:
        yield started
    finally:
        started.kill()


def up(pod: Pod) -> bool:
    return all(s["state"] == "up" for s in pod.status()) and len(pod.status()) == 2


def test_entrypoint_as_pid1_starts_services_and_stops_on_sigterm(pod: Pod) -> None:
    """1. The image's entrypoint runs as PID 1 (NSpid 1) with the target from the volume.
    2. Both services come up; the state is on the volume.
    3. SIGTERM to PID 1 from outside (`docker stop`): web says goodbye (graceful), the
       deaf one is killed after its 1 s stop timeout, and PID 1 exits 0 well within
       the sum of the stop timeouts plus the launcher's start-up."""
    wait_for(lambda: pod.proc.poll() is not None or up(pod), 60, "both services up")
    assert pod.proc.poll() is None, pod.err.read_text()
    pid1 = pod.pid1()
    assert Path(f"/proc/{pid1}/cmdline").read_bytes().split(b"\0")[1:3] == \
        [b"-m", b"corral.launcher"]
    assert (pod.out.parent / "volume" / "state" / "target.yaml").exists()
    os.kill(pid1, signal.SIGTERM)
    assert pod.proc.wait(30) == 0
    web = (pod.out.parent / "volume" / "state" / "logs" / "web.log").read_text()
    assert "hello from web" in web and "web says goodbye" in web
    errors = pod.err.read_text()
    assert "Traceback" not in errors
    # The supervisor stopped them in time; the launcher's own fallback never ran.
    assert "did not finish stopping" not in errors and "forced shutdown" not in errors


def test_service_output_reaches_the_containers_stdout(pod: Pod) -> None:
    """As PID 1, corral copies each service's output to its own stdout (what `docker logs`
    shows), prefixed with the service and instance; and the files keep it too."""
    # Two services start side by side: wait for both lines, in whatever order they come.
    wait_for(lambda: "hello from web" in (text := pod.out.read_text())
             and "deaf is up" in text, 60, "both services' lines on stdout")
    lines = pod.out.read_text().splitlines()
    assert any(ln.startswith("web[0]") and ln.endswith("hello from web") for ln in lines), lines
    assert any(ln.startswith("deaf[0]") and ln.endswith("deaf is up") for ln in lines)
    os.kill(pod.pid1(), signal.SIGTERM)
    assert pod.proc.wait(30) == 0
    logs = pod.out.parent / "volume" / "state" / "logs"
    assert "hello from web" in (logs / "web.log").read_text()
    assert "deaf is up" in (logs / "deaf.log").read_text()


def test_pid1_upgrades_in_place(tmp_path: Path) -> None:
    """As PID 1: `sup upgrade` into another build keeps PID 1 and both services (same
    pids), their output still reaches the container's stdout, and SIGTERM afterwards still
    stops them gracefully with exit 0."""
    from corral.protocol import messages as m

    from .test_versions import build

    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is needed: .ci/run installs it")
    major = m.PROTOCOL_VERSION.split(".")[0]
    new = build(tmp_path, "next", f"{major}.99", "9.9.5")
    volume = tmp_path / "volume"
    volume.mkdir()
    (volume / "target.yaml").write_text(TARGET.format(web=json.dumps(python_cmd(WEB)),
                                                      deaf=json.dumps(python_cmd(DEAF_TO_TERM))))
    pod = Pod(volume, tmp_path / "stdout", {"CORRAL_UPGRADE_PYTHONPATH": str(new)})
    try:
        wait_for(lambda: pod.proc.poll() is not None or up(pod), 60, "both services up")
        assert pod.proc.poll() is None, pod.err.read_text()
        pid1 = pod.pid1()
        pids = {str(s["name"]): s["pid"] for s in pod.status()}
        result = pod.corral("sup", "upgrade")
        assert result.returncode == 0, result.stderr
        assert "upgraded to corral 9.9.5" in result.stdout
        assert pod.pid1() == pid1
        assert {str(s["name"]): s["pid"] for s in pod.status()} == pids
        status = json.loads(pod.corral("sup", "status", "--json").stdout)
        assert status["versions"]["launcher"] == "9.9.5"
        os.kill(pid1, signal.SIGTERM)
        assert pod.proc.wait(30) == 0
        web = (volume / "state" / "logs" / "web.log").read_text()
        assert "web says goodbye" in web
        assert any(ln.startswith("web[0]") and ln.endswith("web says goodbye")
                   for ln in pod.out.read_text().splitlines())
        assert "Traceback" not in pod.err.read_text()
    finally:
        pod.kill()
