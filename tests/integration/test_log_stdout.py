"""Service output on corral's own stdout (`sup run --log-stdout`): what `docker logs`,
`kubectl logs` and `journalctl` show, and a stdout nobody reads never slowing a service."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from .conftest import PY, Corral, pid_alive, wait_for
from .test_metrics import scrape
from .test_output_faults import events, quiet_env

# Writes LINES numbered lines of 200 bytes to stdout and LINES//10 to stderr, then exits.
CHATTY = """
import sys
n = int(sys.argv[1])
for i in range(n):
    sys.stdout.write("%s out %07d " % (sys.argv[2], i) + "o" * 180 + "\\n")
    if i % 10 == 0:
        sys.stderr.write("%s err %07d\\n" % (sys.argv[2], i))
"""


def stdout_lines(path: Path) -> list[str]:
    return path.read_text(errors="replace").splitlines() if path.exists() else []


def test_two_services_show_on_stdout_with_their_prefixes(tmp_path: Path) -> None:
    """Each record is one line on stdout after `service[instance] O|E`; the log files get
    the same records; `logs: {stdout: false}` keeps a process off stdout."""
    corral = Corral(tmp_path / "state")
    quiet_env(corral)
    corral.start("--log-stdout")
    try:
        corral.ok("svc", "load", "web", "--instances", "2", "--restart", "never", "--", PY,
                  "-c", "import os, sys; i = os.environ['CORRAL_INSTANCE']; "
                  "print('hello from web', i); print('oops', i, file=sys.stderr)")
        corral.ok("svc", "load", "db", "--restart", "never", "--", PY, "-c",
                  "print('ready to accept connections')")
        spec = tmp_path / "quiet.yaml"
        spec.write_text(f"name: quiet\ncommand: [{PY}, -c, \"print('not on stdout')\"]\n"
                        "restart: {policy: never}\nlogs: {stdout: false}\n")
        corral.ok("svc", "load", "-f", str(spec))
        want = {"web[0] O hello from web 0", "web[1] O hello from web 1",
                "web[0] E oops 0", "web[1] E oops 1", "db[0] O ready to accept connections"}
        wait_for(lambda: want <= set(stdout_lines(corral.output)), what="the prefixed lines")
        assert [line for line in corral.log_lines("db") if "ready to accept" in line]
        corral.wait_state("quiet", "down")
        wait_for(lambda: corral.log_lines("quiet"), what="quiet's log")
        assert not [line for line in stdout_lines(corral.output) if "not on stdout" in line]
    finally:
        corral.stop()


@pytest.mark.parametrize(("extra", "env", "shown"), [
    ([], {}, False),
    ([], {"INVOCATION_ID": "0123abcd"}, True),
    ([], {"NOTIFY_SOCKET": "@corral-test-none"}, True),
    (["--no-log-stdout"], {"INVOCATION_ID": "0123abcd"}, False),
], ids=["interactive", "systemd", "notify-socket", "forced-off"])
def test_stdout_is_off_by_default_and_on_under_systemd(
        tmp_path: Path, extra: list[str], env: dict[str, str], shown: bool) -> None:
    """An interactive `sup run` keeps services off its stdout; under systemd
    (INVOCATION_ID or NOTIFY_SOCKET set) it puts them there, unless --no-log-stdout."""
    corral = Corral(tmp_path / "state")
    quiet_env(corral)
    corral.start(*extra, env=env)
    try:
        corral.ok("svc", "load", "hi", "--restart", "never", "--", "echo", "hi there")
        corral.wait_state("hi", "down")
        wait_for(lambda: corral.log_lines("hi"), what="the log record")
        if shown:
            wait_for(lambda: "hi[0] O hi there" in stdout_lines(corral.output),
                     what="the line on stdout")
        assert corral.ok("sup", "stop").strip() == "stopped"
        assert corral.proc is not None and corral.proc.wait(30) == 0
        assert ("hi[0] O hi there" in stdout_lines(corral.output)) == shown
    finally:
        corral.stop()


def test_an_unread_stdout_never_slows_a_service(tmp_path: Path) -> None:
    """`sup run --log-stdout` whose stdout is a pipe nobody reads: services write all
    they have and exit, their log files hold every line, and the launcher counts the
    records it dropped on stdout (its stderr, an event and /metrics say so)."""
    corral = Corral(tmp_path / "state")
    quiet_env(corral)
    reader, writer = os.pipe()  # kept open, never read: a full pipe, not a broken one
    err = tmp_path / "launcher.err"
    with err.open("wb") as stderr:
        corral.proc = subprocess.Popen(
            [PY, "-m", "corral", "sup", "run", "--state-dir", str(corral.state_dir),
             "--log-stdout"], stdin=subprocess.DEVNULL, stdout=writer, stderr=stderr,
            env=corral.env, start_new_session=True)
    os.close(writer)
    try:
        wait_for(corral.answers, 30, "the API to answer")
        lines = 20_000  # 4 MB each: many times what the stdout pipe holds
        for name in ("a", "b"):
            corral.ok("svc", "load", name, "--restart", "never", "--", PY, "-c", CHATTY,
                      str(lines), name)
        for name in ("a", "b"):
            assert corral.wait_state(name, "down", 120)["last_exit"]["exit_code"] == 0
            wait_for(lambda n=name: len(corral.log_lines(n)) == lines + lines // 10,
                     what=f"{name}'s {lines + lines // 10} records")
            records = corral.log_lines(name)
            outs = [r.split(" out ")[1][:7] for r in records if " O " in r]
            assert outs == [f"{i:07d}" for i in range(lines)]
        said = wait_for(lambda: [line for line in err.read_text().splitlines()
                                 if "of output on the launcher's stdout" in line],
                        what="the launcher's report of dropped records")
        assert "dropped" in said[0]
        samples = wait_for(lambda: (s := scrape(corral)).get(
            ("corral_output_dropped_records_total", (("stream", "stdout"),))) and s,
            what="the dropped records in /metrics")
        dropped = samples[("corral_output_dropped_records_total", (("stream", "stdout"),))]
        assert 0 < dropped <= 2 * (lines + lines // 10)
        assert any("on corral's stdout" in e["reason"] for e in events(corral))
        pid = corral.sup_status()["supervisor_pid"]
        assert corral.ok("sup", "stop").strip() == "stopped"
        assert corral.proc.wait(30) == 0 and not pid_alive(pid)
    finally:
        os.close(reader)
        corral.stop()
