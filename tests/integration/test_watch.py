"""`sup run --target FILE --watch-target` and `sup run --secrets-dir DIR`: files kept up to
date by someone else (a Kubernetes ConfigMap or Secret, a deployment tool).

The directories are laid out and updated the way the kubelet does it (see `Projected`):
the files are symlinks into a hidden `..data` directory, and an update writes a new
directory and renames a `..data` symlink over the old one.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest

from .conftest import Corral, pid_alive, python_cmd, wait_for


class Projected:
    """A directory updated as the kubelet updates a mounted ConfigMap or Secret."""

    def __init__(self, path: Path, files: dict[str, str]) -> None:
        self.path = path
        path.mkdir(parents=True)
        self._n = 0
        self.update(files)
        for name in files:
            (path / name).symlink_to(f"..data/{name}")

    def update(self, files: dict[str, str]) -> None:
        """Write a new ``..<n>`` directory, swap ``..data`` to it (a rename), drop the old."""
        self._n += 1
        fresh = self.path / f"..2026_01_01_00_00_{self._n:02d}"
        fresh.mkdir()
        for name, text in files.items():
            (fresh / name).write_text(text)
        data = self.path / "..data"
        old = os.readlink(data) if data.is_symlink() else None
        tmp = self.path / "..data_tmp"
        tmp.symlink_to(fresh.name)
        os.rename(tmp, data)
        if old is not None:
            shutil.rmtree(self.path / old)


def events(corral: Corral, kind: str | None = None) -> list[dict[str, Any]]:
    out = corral.ok("events", "--json", "-n", "2000").splitlines()
    found = [json.loads(line) for line in out]
    return [e for e in found if kind is None or e["kind"] == kind]


def reasons(corral: Corral, kind: str) -> list[str]:
    return [e["reason"] for e in events(corral, kind)]


def sleeper(tag: str) -> str:
    return json.dumps(python_cmd(f"import time\nprint({tag!r}, flush=True)\n"
                                 "while True: time.sleep(1)"))


ONE = f"""\
processes:
  - name: web
    command: {sleeper("web v1")}
"""
TWO = f"""\
processes:
  - name: web
    command: {sleeper("web v1")}
  - name: api
    command: {sleeper("api v1")}
    instances: 2
"""
BAD = f"""\
processes:
  - name: web
    command: {sleeper("web v1")}
    bogus: 1
"""


@pytest.fixture
def watched(tmp_path: Path) -> Any:
    """A corral whose target comes from a ConfigMap-like directory, watched."""
    config = Projected(tmp_path / "config", {"target.yaml": ONE})
    corral = Corral(tmp_path / "state")
    corral.start("--target", str(config.path / "target.yaml"), "--watch-target")
    try:
        corral.wait_state("web", "up")
        yield corral, config
    finally:
        corral.stop()


def test_a_changed_target_file_is_applied_with_its_plan_in_the_events(watched: Any) -> None:
    """1. corral runs the target of a ConfigMap-like directory with --watch-target.
    2. The directory is updated (a ..data swap) to add `api` (two instances).
    3. `api` comes up, `web` keeps its pid, and the events hold the plan and the rollout."""
    corral, config = watched
    web = corral.status("web")["pid"]
    config.update({"target.yaml": TWO})
    corral.wait_state("api", "up")
    assert corral.status("api")["running"] == 2
    assert corral.status("web")["pid"] == web
    path = config.path / "target.yaml"
    assert f"target file {path} changed: + process api" in reasons(corral, "target")
    wait_for(lambda: any("done" in r for r in reasons(corral, "rollout")), what="rollout done")


def test_an_invalid_target_file_changes_nothing_and_names_the_line(watched: Any) -> None:
    """1. The watched file turns invalid (an unknown field on line 4).
    2. One event (and one line on stderr) names the file, the line and the field; `web`
       keeps running with the same pid; `target get` is unchanged.
    3. The file is fixed (it now adds `api`): it is applied."""
    corral, config = watched
    web = corral.status("web")["pid"]
    before = corral.ok("target", "get")
    config.update({"target.yaml": BAD})
    path = config.path / "target.yaml"
    line = (f"target file {path} refused; running services keep running: {path}:4: "
            "processes[0].bogus: unknown field 'bogus'")
    wait_for(lambda: any(r.startswith(line) for r in reasons(corral, "target")),
             what="the refusal event")
    assert corral.status("web")["pid"] == web and pid_alive(web)
    assert corral.ok("target", "get") == before
    said = [ln for ln in corral.output.read_text().splitlines() if "refused" in ln]
    assert len(said) == 1 and said[0].startswith(f"corral-supervisor: {line}")
    config.update({"target.yaml": TWO})
    corral.wait_state("api", "up")
    assert corral.status("web")["pid"] == web


def test_an_emptied_target_file_is_refused(watched: Any) -> None:
    """An empty file (what a file looks like halfway through a rewrite) removes nothing:
    one event says so and `web` keeps running."""
    corral, config = watched
    web = corral.status("web")["pid"]
    config.update({"target.yaml": ""})
    wait_for(lambda: any("is empty; not applied" in r for r in reasons(corral, "target")),
             what="the refusal")
    assert corral.status("web")["pid"] == web and corral.status("web")["state"] == "up"


def test_a_plain_file_saved_by_an_editor_is_applied(tmp_path: Path) -> None:
    """A plain file in a directory (a container's volume) replaced by rename, as editors
    save: the new target is applied."""
    volume = tmp_path / "volume"
    volume.mkdir()
    target = volume / "target.yaml"
    target.write_text(ONE)
    corral = Corral(tmp_path / "state")
    corral.start("--target", str(target), "--watch-target")
    try:
        corral.wait_state("web", "up")
        (volume / ".target.yaml.swp").write_text(TWO)
        os.replace(volume / ".target.yaml.swp", target)
        corral.wait_state("api", "up")
    finally:
        corral.stop()


def test_a_change_made_while_no_supervisor_ran_is_applied_by_the_next(watched: Any) -> None:
    """1. The supervisor is frozen (SIGSTOP), the file changes, the supervisor is killed.
    2. The launcher starts a new supervisor, which adopts `web` (same pid) and applies the
       file it finds: `api` comes up."""
    corral, config = watched
    web = corral.status("web")["pid"]
    supervisor = corral.sup_status()["supervisor_pid"]
    os.kill(supervisor, signal.SIGSTOP)
    config.update({"target.yaml": TWO})
    os.kill(supervisor, signal.SIGKILL)
    wait_for(lambda: corral.sup_status()["supervisor_pid"] != supervisor, 30,
             "a new supervisor")
    corral.wait_state("api", "up")
    assert corral.status("web")["pid"] == web


ENV_TARGET = """\
processes:
  - name: app
    command: {cmd}
    env: {{PASSWORD: "${{DB_PASS}}"}}
"""
#: Prints the length and a digest of its secret (never the value) and sleeps.
SHOW = python_cmd("import hashlib, os, time\n"
                  "v = os.environ['PASSWORD']\n"
                  "print('secret', len(v), hashlib.sha256(v.encode()).hexdigest()[:8], "
                  "flush=True)\nwhile True: time.sleep(1)")


def digest(value: str) -> str:
    import hashlib
    return f"secret {len(value)} {hashlib.sha256(value.encode()).hexdigest()[:8]}"


@pytest.fixture
def with_secrets(tmp_path: Path) -> Any:
    secrets = Projected(tmp_path / "secrets", {"DB_PASS": "first\n"})
    target = tmp_path / "target.yaml"
    target.write_text(ENV_TARGET.format(cmd=json.dumps(SHOW)))
    corral = Corral(tmp_path / "state")
    corral.start("--target", str(target), "--secrets-dir", str(secrets.path))
    try:
        corral.wait_state("app", "up")
        yield corral, secrets
    finally:
        corral.stop()


def test_secrets_come_from_files_and_a_change_rolls_out(with_secrets: Any) -> None:
    """1. corral starts with --secrets-dir: `app` starts at once with DB_PASS from its file
       (one trailing newline dropped, as `secret set NAME -` does).
    2. The Secret is updated (a ..data swap): `app` is replaced (new pid) and sees the new
       value; an event names the secret, never its value; `secret ls` lists it."""
    corral, secrets = with_secrets
    wait_for(lambda: any(ln.endswith(digest("first")) for ln in corral.log_lines("app")),
             what="app's first value")
    old = corral.status("app")["pid"]
    secrets.update({"DB_PASS": "second"})
    wait_for(lambda: corral.status("app")["pid"] not in (old, None)
             and corral.status("app")["state"] == "up", what="app replaced")
    wait_for(lambda: any(ln.endswith(digest("second")) for ln in corral.log_lines("app")),
             what="app's new value")
    said = reasons(corral, "secrets")
    assert any(r.startswith("DB_PASS changed in ") for r in said), said
    assert not any("second" in json.dumps(e) for e in events(corral))
    assert "DB_PASS" in corral.ok("secret", "ls")


def test_bad_secret_files_and_a_vanished_directory_are_one_line_each(
        with_secrets: Any) -> None:
    """1. A file whose name cannot be a secret's is named once (event and stderr).
    2. The directory disappears: one line says it cannot be read; `app` keeps running
       with the value it had.  It comes back with a new value: that value rolls out."""
    corral, secrets = with_secrets
    secrets.update({"DB_PASS": "first", "db-pass": "x"})
    (secrets.path / "db-pass").symlink_to("..data/db-pass")
    bad = f"{secrets.path}/db-pass: not a secret's name"
    wait_for(lambda: any(r.startswith(bad) for r in reasons(corral, "secrets")),
             what="the bad name")
    pid = corral.status("app")["pid"]
    shutil.rmtree(secrets.path)
    gone = f"cannot read secrets directory {secrets.path} (No such file or directory)"
    wait_for(lambda: any(r.startswith(gone) for r in reasons(corral, "secrets")),
             what="the vanished directory")
    assert corral.status("app")["pid"] == pid and corral.status("app")["state"] == "up"
    Projected(secrets.path, {"DB_PASS": "third"})
    wait_for(lambda: any(ln.endswith(digest("third")) for ln in corral.log_lines("app")),
             30, "the new value after the directory came back")
    out = corral.output.read_text().splitlines()
    assert len([ln for ln in out if bad in ln]) == 1
    assert len([ln for ln in out if gone in ln]) == 1


@pytest.mark.parametrize("make", ["missing", "file"])
def test_an_unreadable_secrets_directory_is_refused_at_start(tmp_path: Path,
                                                             make: str) -> None:
    """`sup run --secrets-dir` on a path that is not a readable directory: one line, exit
    1, nothing started (no state directory is even made)."""
    path = tmp_path / "secrets"
    if make == "file":
        path.write_text("x")
    corral = Corral(tmp_path / "state")
    result = corral.run("sup", "run", "--state-dir", str(corral.state_dir),
                        "--secrets-dir", str(path))
    why = "No such file or directory" if make == "missing" else "Not a directory"
    assert result.returncode == 1
    assert result.stderr == f"corral: cannot read secrets directory {path}: {why}\n"
    assert not corral.state_dir.exists()


def test_watch_target_needs_a_target(tmp_path: Path) -> None:
    """--watch-target without --target, and --health-public without --listen-http, are
    usage errors (exit 100) in one line."""
    corral = Corral(tmp_path / "state")
    for args, needle in ((["--watch-target"], "--watch-target watches the --target file"),
                         (["--health-public"], "--health-public applies to the --listen-http")):
        result = corral.run("sup", "run", "--state-dir", str(corral.state_dir), *args)
        assert result.returncode == 100 and result.stderr.startswith(f"corral: {needle}")
        assert len(result.stderr.splitlines()) == 1


def test_a_bad_target_at_start_is_one_line(tmp_path: Path) -> None:
    """With --watch-target, a --target file that is invalid at start is still refused
    before anything runs (as without it): one line per problem, exit 1."""
    target = tmp_path / "target.yaml"
    target.write_text(BAD)
    corral = Corral(tmp_path / "state")
    result = corral.run("sup", "run", "--state-dir", str(corral.state_dir),
                        "--target", str(target), "--watch-target")
    assert result.returncode == 1, result.stderr
    assert f"{target}:4: processes[0].bogus: unknown field" in result.stderr
    assert not corral.state_dir.exists()


def test_a_target_waiting_for_a_secret_is_applied_once_its_file_comes(tmp_path: Path) -> None:
    """1. corral watches a target file and a secrets directory.
    2. The target gains a process that uses API_KEY, which is not set: refused, the event
       names the line; nothing changes.
    3. The Secret gains API_KEY: the waiting target is applied without being touched."""
    secrets = Projected(tmp_path / "secrets", {"DB_PASS": "first"})
    config = Projected(tmp_path / "config", {"target.yaml": ONE})
    corral = Corral(tmp_path / "state")
    corral.start("--target", str(config.path / "target.yaml"), "--watch-target",
                 "--secrets-dir", str(secrets.path))
    try:
        corral.wait_state("web", "up")
        config.update({"target.yaml": ONE + "  - name: api\n    command: "
                       + json.dumps(SHOW) + '\n    env: {PASSWORD: "${API_KEY}"}\n'})
        path = config.path / "target.yaml"
        wait_for(lambda: any(r.startswith(f"target file {path} refused") and
                             f"{path}:6: processes[1].env.PASSWORD: secret 'API_KEY' is not set"
                             in r for r in reasons(corral, "target")), what="the refusal")
        assert [s["name"] for s in corral.status()] == ["web"]
        secrets.update({"DB_PASS": "first", "API_KEY": "k"})
        (secrets.path / "API_KEY").symlink_to("..data/API_KEY")
        corral.wait_state("api", "up")
        wait_for(lambda: any(ln.endswith(digest("k")) for ln in corral.log_lines("api")),
                 what="api with its secret")
    finally:
        corral.stop()
