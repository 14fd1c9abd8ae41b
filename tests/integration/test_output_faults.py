"""Faults of corral's own output: a full disk under the logs or the state, and a stdout
or terminal that goes away.  Services must neither block nor stop, no file may be torn,
and the launcher must never die of what it prints."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import pty
import re
import signal
import subprocess
import termios
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import PY, Corral, pid_alive, wait_for
from .test_metrics import scrape

RECORD = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z (\d+) ([OE]) (.*)$")
NOTE = re.compile(r"^\[corral\] dropped (\d+) bytes \((\d+) records\) of output from \S+ to "
                  r"\S+: (.+)$")

# Writes numbered lines until told to stop; says how far it got (outside the full disk).
WRITER = """
import os, sys
stop, progress = sys.argv[1], sys.argv[2]
n = 0
while not os.path.exists(stop):
    for _ in range(500):
        sys.stdout.write("%08d " % n + "p" * 90 + "\\n")
        n += 1
    sys.stdout.flush()
    with open(progress + ".tmp", "w") as f:
        f.write(str(n))
    os.replace(progress + ".tmp", progress)
"""


def quiet_env(corral: Corral) -> None:
    """No systemd markers: `sup run` keeps its defaults of an interactive run."""
    for name in ("INVOCATION_ID", "NOTIFY_SOCKET"):
        corral.env.pop(name, None)


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str = "2m") -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                   check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(directory: Path) -> Path:
    """Fill the file system under ``directory`` to the last byte; return the filler."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    block = b"\0" * 65536
    try:
        while True:
            try:
                if os.write(fd, block) == 0:
                    break
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                if len(block) == 1:
                    break
                block = block[:len(block) // 2]
    finally:
        os.close(fd)
    return filler


def progress(path: Path) -> int:
    return int(path.read_text()) if path.exists() else 0


def events(corral: Corral, service: str | None = None) -> list[dict[str, Any]]:
    args = ["events", "--json", "-n", "1000", *(["--service", service] if service else [])]
    return [json.loads(line) for line in corral.ok(*args).splitlines()]


def test_a_full_log_disk_never_blocks_a_service_nor_tears_a_record(tmp_path: Path) -> None:
    """With the log directory's file system full, the service keeps writing (the launcher
    keeps draining its pipe), the file holds only whole records, and once there is room
    again one record says how many were dropped; an event and /metrics say so too."""
    state = tmp_path / "state"
    with small_tmpfs(state / "logs") as logs:
        corral = Corral(state)
        quiet_env(corral)
        corral.start()
        try:
            stop, done = tmp_path / "stop", tmp_path / "progress"
            corral.ok("svc", "load", "w", "--restart", "never", "--", PY, "-c", WRITER,
                      str(stop), str(done))
            wait_for(lambda: progress(done) >= 5000, what="the writer to get going")
            filler = fill(logs)
            wait_for(lambda: any("dropping" in e["reason"] for e in events(corral, "w")),
                     what="the event saying the log is dropping output")
            # Far more than the pipe holds (1 MiB, 10,000 lines): it was drained all along.
            reached = progress(done)
            wait_for(lambda: progress(done) >= reached + 50_000, 60,
                     "the writer to go on while the disk is full")
            stop.write_text("")
            corral.wait_state("w", "down")
            total = progress(done)  # every line it wrote
            filler.unlink()  # no output comes any more: the launcher retries on its own

            def settled() -> bool:
                # The file ends with the note of the last drop, or (when room came back
                # before the writer stopped, e.g. from a rotation) with its last line.
                text = (logs / "w.log").read_text()
                last = RECORD.match(text.rstrip("\n").rsplit("\n", 1)[-1])
                return "[corral] dropped" in text and last is not None and (
                    last.group(3).startswith(("[corral] dropped", f"{total - 1:08d} ")))
            wait_for(settled, what="the record saying what was dropped")
            lines = (logs / "w.log").read_text().splitlines()
            numbers: list[int] = []
            noted, after_note = 0, False
            for line in lines:
                match = RECORD.match(line)
                assert match, f"torn or foreign line: {line[:120]!r}"
                text = match.group(3)
                note = NOTE.match(text)
                if note:
                    assert int(match.group(1)) == corral.sup_status()["launcher_pid"]
                    assert "No space left on device" in note.group(3)
                    noted += int(note.group(2))
                    after_note = True
                    continue
                assert re.fullmatch(r"\d{8} p{90}", text), f"torn record: {text[:120]!r}"
                n = int(text[:8])
                if numbers and n != numbers[-1] + 1:
                    assert n > numbers[-1] and after_note, f"a gap without a note before {n}"
                numbers.append(n)
                after_note = False
            assert numbers[0] == 0 and (numbers[-1] == total - 1 or after_note)
            assert noted == total - len(numbers) > 50_000  # each line is there or counted
            samples = scrape(corral)
            assert samples[("corral_log_dropped_records_total", (("service", "w"),))] == noted
            assert samples[("corral_log_dropped_bytes_total", (("service", "w"),))] > 0
            reasons = [e["reason"] for e in events(corral, "w") if e["kind"] == "output"]
            assert any("writing w.log again; dropped" in r for r in reasons), reasons
        finally:
            corral.stop()


def test_a_failed_state_write_refuses_the_change_and_keeps_the_old_state(
        tmp_path: Path) -> None:
    """With the state directory's file system full, a change is refused in one line, the
    state files are untouched (no temp file left), and what runs stays as it was; once
    there is room again the same change goes through."""
    state = tmp_path / "state"
    with small_tmpfs(state, "4m") as where:
        corral = Corral(state)
        quiet_env(corral)
        corral.start()
        try:
            corral.ok("svc", "load", "web", "--", "sleep", "1000")
            pid = corral.wait_state("web", "up")["instance_list"][0]["pid"]
            before = {name: (state / name).read_bytes()
                      for name in ("target.yaml", "desired.json")}
            filler = fill(where)
            for args in (["svc", "stop", "web"], ["svc", "load", "db", "--", "sleep", "1000"],
                         ["secret", "set", "TOKEN", "s3cret"]):
                result = corral.run(*args)
                assert result.returncode != 0, args
                lines = result.stderr.strip().splitlines()
                assert len(lines) == 1 and "No space left on device" in lines[0], lines
                assert "Traceback" not in result.stderr
            web = corral.status("web")
            assert web["state"] == "up" and web["instance_list"][0]["pid"] == pid
            assert [s["name"] for s in corral.status()] == ["web"]
            assert {name: (state / name).read_bytes() for name in before} == before
            assert not list(state.glob(".*.tmp*"))
            filler.unlink()
            corral.ok("svc", "stop", "web")
            assert corral.wait_state("web", "down")
            assert b'"web"' in (state / "desired.json").read_bytes()
        finally:
            corral.stop()


def test_a_refused_state_write_starts_no_rollout(tmp_path: Path) -> None:
    """A target change and a new value of a secret in use, refused for a full disk: one
    line each, the process keeps running as it was (same pid, old secret), the rollout
    record and state files are untouched; with room again the same change rolls out."""
    state = tmp_path / "state"
    spec = "processes:\n  - name: web\n    command: [sleep, '{n}']\n    env: {{T: '${{TOKEN}}'}}\n"
    v1, v2 = tmp_path / "v1.yaml", tmp_path / "v2.yaml"
    v1.write_text(spec.format(n=1000))
    v2.write_text(spec.format(n=2000))
    with small_tmpfs(state, "4m") as where:
        corral = Corral(state)
        quiet_env(corral)
        corral.start()
        try:
            corral.ok("secret", "set", "TOKEN", "one")
            corral.ok("target", "set", str(v1))
            pid = corral.wait_state("web", "up")["instance_list"][0]["pid"]
            wait_for(lambda: (state / "rollout.json").exists()
                     and json.loads((state / "rollout.json").read_text())["phase"] != "running",
                     30, "the first rollout to end")
            names = ("target.yaml", "desired.json", "rollout.json", "secrets.json")
            before = {name: (state / name).read_bytes() for name in names}
            shown = json.loads(corral.ok("target", "status", "--json"))["rollout"]
            filler = fill(where)
            for args in (["target", "set", str(v2)], ["secret", "set", "TOKEN", "two"]):
                result = corral.run(*args)
                assert result.returncode != 0, args
                lines = result.stderr.strip().splitlines()
                assert len(lines) == 1 and "No space left on device" in lines[0], lines
            web = corral.status("web")
            assert web["state"] == "up" and web["instance_list"][0]["pid"] == pid
            assert {name: (state / name).read_bytes() for name in names} == before
            assert corral.ok("secret", "get", "TOKEN") == "one\n"
            # The rollouts that were refused never began: the last one is still the record.
            assert json.loads(corral.ok("target", "status", "--json"))["rollout"] == shown
            filler.unlink()
            corral.ok("target", "set", str(v2))
            wait_for(lambda: (inst := corral.status("web")["instance_list"])
                     and inst[0]["pid"] not in (None, pid), 60, "web replaced")
        finally:
            corral.stop()


def ticker(corral: Corral) -> int:
    corral.ok("svc", "load", "ticker", "--", PY, "-u", "-c",
              "import time\nwhile True:\n    print('tick'); time.sleep(0.05)")
    return int(corral.wait_state("ticker", "up")["instance_list"][0]["pid"])


@pytest.mark.parametrize("kind", ["pipe", "terminal"])
def test_the_launcher_outlives_a_closed_stdout(tmp_path: Path, kind: str) -> None:
    """`sup run 2>&1 | head -c 10`, or a foreground `sup run` whose terminal is closed:
    what the launcher prints next fails (EPIPE, EIO), and it goes on: services keep
    running, a killed supervisor is replaced, `svc status` answers, `sup stop` stops
    everything and the launcher exits 0.  The drops are counted in its own log."""
    corral = Corral(tmp_path / "state")
    quiet_env(corral)
    if kind == "pipe":
        reader, writer = os.pipe()
        setup = None
    else:
        reader, writer = pty.openpty()

        def setup() -> None:  # the terminal becomes the launcher's controlling terminal
            fcntl.ioctl(1, termios.TIOCSCTTY, 0)
    corral.proc = subprocess.Popen(
        [PY, "-m", "corral", "sup", "run", "--state-dir", str(corral.state_dir),
         "--log-stdout"], stdin=subprocess.DEVNULL, stdout=writer, stderr=writer,
        env=corral.env, start_new_session=True, preexec_fn=setup)
    os.close(writer)
    try:
        wait_for(corral.answers, 30, "the API to answer")
        pid = ticker(corral)
        os.set_blocking(reader, False)
        with contextlib.suppress(BlockingIOError):
            os.read(reader, 10)
        os.close(reader)  # head -c 10 exits; or the terminal is closed (SIGHUP, then EIO)
        reader = -1
        supervisor = corral.sup_status()["supervisor_pid"]
        os.kill(supervisor, signal.SIGKILL)  # the launcher says so: its next message
        wait_for(lambda: corral.answers()
                 and corral.sup_status()["supervisor_pid"] != supervisor, 30,
                 "a new supervisor")
        assert corral.proc.poll() is None, "the launcher died"
        assert corral.status("ticker")["instance_list"][0]["pid"] == pid and pid_alive(pid)
        own = corral.state_dir / "logs" / ".launcher.log"
        wait_for(lambda: "the supervisor died" in own.read_text()
                 and re.search(r"dropped \d+ records \(\d+ bytes\) of output on the "
                               r"launcher's stdout", own.read_text()),
                 what="the launcher's own log to count the drops")
        assert corral.ok("sup", "stop").strip() == "stopped"
        assert corral.proc.wait(30) == 0
        assert not pid_alive(pid) and not pid_alive(supervisor)
    finally:
        if reader >= 0:
            os.close(reader)
        corral.stop()
