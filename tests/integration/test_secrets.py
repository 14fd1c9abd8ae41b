"""Secrets through the real CLI and a real supervisor: set/get/ls/rm, stdin, refusal while
in use, substitution into a real process, and no value anywhere it must not be."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from .conftest import PY, Corral, wait_for

VALUE = "pa55-Wörd-7f3e9c1b"  # distinctive, so a leak anywhere is found by grep


def test_set_get_ls_rm(corral: Corral) -> None:
    """1. set from an argument and from stdin; 2. get one, several, JSON; 3. ls shows names
    only; 4. rm removes; the file is 0600 throughout."""
    assert corral.ok("secret", "ls") == "no secrets (set one with: corral secret set NAME -)\n"
    assert corral.ok("secret", "set", "LOG_LEVEL", "debug") == "LOG_LEVEL: added\n"
    result = corral.run("secret", "set", "DB_PASS", "-", input=VALUE + "\n")
    assert result.returncode == 0 and result.stdout == "DB_PASS: added\n", result.stderr
    result = corral.run("secret", "set", "DB_PASS", "-", input=VALUE + "\n")
    assert result.stdout == "DB_PASS: unchanged\n"  # the trailing newline was dropped

    assert corral.ok("secret", "get", "DB_PASS") == VALUE + "\n"
    assert corral.ok("secret", "get", "DB_PASS", "LOG_LEVEL") == \
        f"DB_PASS={VALUE}\nLOG_LEVEL=debug\n"
    assert json.loads(corral.ok("secret", "get", "DB_PASS", "--json")) == {"DB_PASS": VALUE}

    listing = corral.ok("secret", "ls")
    assert listing.split() == ["NAME", "USED", "BY", "DB_PASS", "-", "LOG_LEVEL", "-"]
    assert json.loads(corral.ok("secret", "ls", "--json")) == [
        {"name": "DB_PASS", "used_by": []}, {"name": "LOG_LEVEL", "used_by": []}]
    path = corral.state_dir / "secrets.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    assert corral.ok("secret", "rm", "LOG_LEVEL", "DB_PASS") == "removed DB_PASS, LOG_LEVEL\n"
    assert corral.ok("secret", "ls", "--json") == "[]\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_multi_line_values_are_kept_exactly(corral: Corral) -> None:
    """A value of several lines (a PEM key) keeps every byte, its last newline included."""
    pem = "-----BEGIN KEY-----\nAAAA\nBBBB\n-----END KEY-----\n"
    corral.run("secret", "set", "TLS_KEY", "-", input=pem)
    assert json.loads(corral.ok("secret", "get", "TLS_KEY", "--json")) == {"TLS_KEY": pem}
    assert corral.ok("secret", "get", "TLS_KEY") == pem


def test_errors_are_one_line_and_change_nothing(corral: Corral) -> None:
    """Bad names, unknown names and partly unknown lists fail with one line, exit 1, and
    leave the store as it was."""
    corral.ok("secret", "set", "A", "1")
    for args, words in [
        (("secret", "set", "9LIVES", "x"), "invalid secret name '9LIVES'"),
        (("secret", "get", "A", "NOPE"), "no secret named 'NOPE' (set: A)"),
        (("secret", "rm", "A", "NOPE"), "no secret named 'NOPE' (set: A)"),
    ]:
        result = corral.run(*args)
        assert result.returncode == 1 and result.stdout == ""
        assert result.stderr.startswith("corral: ") and words in result.stderr
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert corral.ok("secret", "get", "A") == "1\n"


def test_a_secret_in_use_is_substituted_and_cannot_be_removed(corral: Corral,
                                                              tmp_path: Path) -> None:
    """1. A process whose env uses ${DB_PASS} gets the value; 2. ls names it as a user;
    3. rm is refused naming it; 4. once it is unloaded, rm works."""
    out = tmp_path / "seen"
    corral.run("secret", "set", "DB_PASS", "-", input=VALUE)
    script = tmp_path / "web.py"
    script.write_text("import os, sys, time\n"
                      "with open(sys.argv[1] + '.tmp', 'w') as f:\n"
                      "    f.write(os.environ['DATABASE_URL'] + '|' + os.environ['LITERAL'])\n"
                      "os.rename(sys.argv[1] + '.tmp', sys.argv[1])\n"
                      "time.sleep(600)\n")
    spec = tmp_path / "web.yaml"
    spec.write_text(
        f"name: web\ncommand: [{PY}, {script}, {out}]\n"
        "env: {DATABASE_URL: 'postgres://app:${DB_PASS}@db/app', LITERAL: '$${DB_PASS}'}\n")
    corral.ok("svc", "load", "-f", str(spec))
    assert wait_for(lambda: out.exists() and out.read_text(), 15, "the process to write") \
        == f"postgres://app:{VALUE}@db/app|${{DB_PASS}}"
    assert json.loads(corral.ok("secret", "ls", "--json")) == [
        {"name": "DB_PASS", "used_by": ["web"]}]

    result = corral.run("secret", "rm", "DB_PASS")
    assert result.returncode == 1
    assert "secret 'DB_PASS' is used by web" in result.stderr
    assert corral.ok("secret", "get", "DB_PASS") == VALUE + "\n"

    corral.ok("svc", "unload", "web")
    assert corral.ok("secret", "rm", "DB_PASS") == "removed DB_PASS\n"


def test_the_value_appears_nowhere_else(corral: Corral, tmp_path: Path) -> None:
    """With a process using the secret (argv and env) and a change of its value, neither
    value is in ls, svc status, events, target.yaml, any other state file, or the
    supervisor's output."""
    corral.run("secret", "set", "API_TOKEN", "-", input=VALUE)
    spec = tmp_path / "api.yaml"
    spec.write_text(f"name: api\ncommand: [{PY}, -c, 'import time; time.sleep(600)', "
                    "'--token=${API_TOKEN}']\nenv: {TOKEN: '${API_TOKEN}'}\n")
    corral.ok("svc", "load", "-f", str(spec))
    corral.wait_state("api", "up")
    second = VALUE[::-1]
    corral.run("secret", "set", "API_TOKEN", "-", input=second)
    corral.ok("svc", "restart", "api")
    pid = corral.wait_state("api", "up")["pid"]
    with open(f"/proc/{pid}/cmdline", "rb") as f:  # the process did get the value
        assert f"--token={second}".encode() in f.read().split(b"\0")
    corral.run("secret", "get", "NOPE")  # an error path too

    shown = [corral.ok("secret", "ls"), corral.ok("secret", "ls", "--json"),
             corral.ok("svc", "status"), corral.ok("svc", "status", "--json"),
             corral.ok("events", "--json", "-n", "500"), corral.ok("events", "-n", "500"),
             corral.ok("sup", "status", "--json"), corral.output.read_text(errors="replace")]
    target = corral.run("target", "get")
    if target.returncode == 0:
        shown.append(target.stdout)
    for path in corral.state_dir.rglob("*"):
        if path.is_file() and path.name != "secrets.json" and not path.is_socket():
            shown.append(path.read_text(errors="replace"))
    for value in (VALUE, second):
        for text in shown:
            assert value not in text
