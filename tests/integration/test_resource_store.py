"""The resource store through the real CLI and a real supervisor: up/ls/down/rm, content
ids, refusal while in use, and a 1 GiB upload in constant memory.

(``test_resources.py`` is about CPU and memory sampling; this file is the blob store.)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import PY, Corral, wait_for
from .test_remote import start_remote


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def test_up_ls_down_rm(corral: Corral, tmp_path: Path) -> None:
    """1. up prints the sha256; 2. the same bytes again are the same resource; 3. ls lists
    it; 4. down writes identical bytes (to a file, into a directory); 5. rm."""
    data = os.urandom(3 * 1024 * 1024 + 17)
    src = tmp_path / "bundle.tar.gz"
    src.write_bytes(data)
    rid = corral.ok("resource", "up", str(src)).strip()
    assert rid == hashlib.sha256(data).hexdigest()
    assert corral.ok("resource", "up", str(src), "--name", "other.bin").strip() == rid

    entries = json.loads(corral.ok("resource", "ls", "--json"))
    assert [(e["id"], e["name"], e["size"], e["used_by"]) for e in entries] == [
        (rid, "bundle.tar.gz", len(data), [])]
    table = corral.ok("resource", "ls").splitlines()
    assert table[0].split() == ["ID", "NAME", "SIZE", "CREATED", "(UTC)", "USED", "BY"]
    assert table[1].split()[:3] == [rid, "bundle.tar.gz", "3.0M"]

    out = tmp_path / "copy.bin"
    assert corral.ok("resource", "down", rid, str(out)) == ""
    assert out.read_bytes() == data
    into = tmp_path / "into"
    into.mkdir()
    corral.ok("resource", "down", rid, str(into))
    assert (into / "bundle.tar.gz").read_bytes() == data
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert corral.ok("resource", "rm", rid) == f"removed {rid}\n"
    assert json.loads(corral.ok("resource", "ls", "--json")) == []
    assert not (corral.state_dir / "resources" / rid).exists()


def test_down_to_stdout_is_byte_identical(corral: Corral, tmp_path: Path) -> None:
    """`down ID -` writes the exact bytes to stdout (binary, not text)."""
    data = bytes(range(256)) * 4096
    src = tmp_path / "b.bin"
    src.write_bytes(data)
    rid = corral.ok("resource", "up", str(src)).strip()
    done = subprocess.run([PY, "-m", "corral", "resource", "down", rid, "-"],
                          capture_output=True, env=corral.env, timeout=60)
    assert done.returncode == 0 and done.stdout == data


def test_upload_from_stdin(corral: Corral, tmp_path: Path) -> None:
    """`up -` streams a pipe (chunked) under --name."""
    data = os.urandom(2 * 1024 * 1024 + 5)
    done = subprocess.run([PY, "-m", "corral", "resource", "up", "-", "--name", "piped.bin"],
                          input=data, capture_output=True, env=corral.env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().strip() == hashlib.sha256(data).hexdigest()
    assert json.loads(corral.ok("resource", "ls", "--json"))[0]["name"] == "piped.bin"


def test_errors_are_one_line_and_change_nothing(corral: Corral, tmp_path: Path) -> None:
    """Malformed and unknown ids, a missing file, a partly unknown rm: one line, exit 1."""
    src = tmp_path / "a.txt"
    src.write_text("a")
    rid = corral.ok("resource", "up", str(src)).strip()
    unknown = "0" * 64
    for args, words in [
        (("resource", "down", "abc", str(tmp_path / "x")), "invalid resource id 'abc'"),
        (("resource", "down", unknown, str(tmp_path / "x")), f"no resource with id {unknown}"),
        (("resource", "rm", rid, unknown), f"no resource with id {unknown}"),
        (("resource", "up", str(tmp_path / "missing")), "cannot read"),
        (("resource", "up", str(src), "--name", "a/b"), "invalid resource name 'a/b'"),
    ]:
        result = corral.run(*args)
        assert result.returncode == 1, (args, result.stderr)
        assert result.stderr.startswith("corral: ") and words in result.stderr
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "x").exists()
    assert [e["id"] for e in json.loads(corral.ok("resource", "ls", "--json"))] == [rid]


def test_a_resource_in_use_cannot_be_removed(corral: Corral, tmp_path: Path) -> None:
    """1. A process listing a resource finds it in its working directory; 2. ls names the
    process; 3. rm is refused naming it; 4. after unloading, rm works."""
    src = tmp_path / "conf.txt"
    src.write_text("hello from a resource\n")
    rid = corral.ok("resource", "up", str(src)).strip()
    seen = tmp_path / "seen"
    spec = tmp_path / "web.yaml"
    spec.write_text(
        f"name: web\ncommand: [sh, -c, 'cat etc/conf.txt > {seen}.tmp && mv {seen}.tmp {seen}"
        "; exec sleep 600']\n"
        f"resources: [{{id: {rid}, file: etc/conf.txt}}]\n")
    corral.ok("svc", "load", "-f", str(spec))
    assert wait_for(lambda: seen.exists() and seen.read_text(), 15, "the process to read it") \
        == "hello from a resource\n"
    assert json.loads(corral.ok("resource", "ls", "--json"))[0]["used_by"] == ["web"]
    result = corral.run("resource", "rm", rid)
    assert result.returncode == 1 and f"resource {rid} is used by web" in result.stderr
    corral.ok("svc", "unload", "web")
    corral.ok("resource", "rm", rid)


@pytest.fixture
def shm_corral() -> Iterator[Corral]:
    """A corral whose state directory is on tmpfs: the big upload then measures memory,
    not the disk's fsync speed."""
    base = Path(tempfile.mkdtemp(prefix="corral-big-", dir="/dev/shm"
                                 if os.path.isdir("/dev/shm") else None))
    instance = Corral(base / "state")
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()
        shutil.rmtree(base, ignore_errors=True)


def _rss_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


@pytest.mark.slow
def test_a_1gib_upload_streams_in_constant_memory(shm_corral: Corral, tmp_path: Path) -> None:
    """A 1 GiB upload (a sparse file: fast to read) grows the supervisor's peak RSS by less
    than 50 MiB, and the stored blob has the right id."""
    corral = shm_corral
    big = corral.state_dir.parent / "big.bin"
    with big.open("wb") as f:
        f.truncate(1 << 30)
    expected = hashlib.sha256()
    zeros = bytes(1 << 20)
    for _ in range(1024):
        expected.update(zeros)
    pid = corral.sup_status()["supervisor_pid"]
    before = _rss_kib(pid, "VmRSS")
    rid = corral.ok("resource", "up", str(big)).strip()
    peak = _rss_kib(pid, "VmHWM")  # the high-water mark covers the whole upload
    assert rid == expected.hexdigest()
    assert (peak - before) < 50 * 1024, f"RSS grew by {(peak - before) / 1024:.1f} MiB"
    assert json.loads(corral.ok("resource", "ls", "--json"))[0]["size"] == 1 << 30


def test_transfers_over_the_remote_tls_api(corral_factory: Any, tmp_path: Path) -> None:
    """`--remote` uploads and downloads stream over TLS with the token, and secrets travel
    the same way."""
    remote = start_remote(corral_factory())
    remote.auth_file(tmp_path)
    data = os.urandom(3 * 1024 * 1024 + 1)
    src = tmp_path / "r.bin"
    src.write_bytes(data)
    up = remote.cli(tmp_path, "resource", "up", str(src))
    assert up.returncode == 0, up.stderr
    rid = up.stdout.strip()
    assert rid == hashlib.sha256(data).hexdigest()
    out = tmp_path / "back.bin"
    down = remote.cli(tmp_path, "resource", "down", rid, str(out))
    assert down.returncode == 0, down.stderr
    assert out.read_bytes() == data
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path), "CORRAL_REMOTE": "test",
           "CORRAL_HOME": str(tmp_path / "none")}
    done = subprocess.run([PY, "-m", "corral", "secret", "set", "K", "-"], input=b"v4lue\n",
                          capture_output=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert remote.cli(tmp_path, "secret", "get", "K").stdout == "v4lue\n"


def test_a_refused_upload_reports_the_refusal(corral: Corral, tmp_path: Path) -> None:
    """An upload the server refuses before reading the body (a bad name) reports the
    server's one-line reason, not a broken pipe, and stores nothing."""
    big = tmp_path / "big.bin"
    with big.open("wb") as f:
        f.truncate(64 * 1024 * 1024)
    result = corral.run("resource", "up", str(big), "--name", "x" * 2000)
    assert result.returncode == 1 and result.stderr.startswith("corral: ")
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1
    assert json.loads(corral.ok("resource", "ls", "--json")) == []


def test_an_upload_cut_short_leaves_nothing(corral: Corral, tmp_path: Path) -> None:
    """1. Start uploading a large file; 2. once the store holds part of it, kill the client;
    3. the partial file goes, nothing is listed, and the supervisor logs no error."""
    big = tmp_path / "big.bin"
    with big.open("wb") as f:
        f.truncate(8 << 30)  # sparse: nothing to write, far longer than the test waits
    partial = corral.state_dir / "resources" / ".partial"
    with subprocess.Popen([PY, "-m", "corral", "resource", "up", str(big)], env=corral.env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as proc:
        try:
            wait_for(lambda: any(p.stat().st_size > 0 for p in partial.glob("upload-*")),
                     30, "part of the upload to be stored")
        finally:
            proc.kill()
    wait_for(lambda: partial.is_dir() and not list(partial.iterdir()), 15,
             "the partial upload to be removed")
    assert json.loads(corral.ok("resource", "ls", "--json")) == []
    assert "internal error" not in corral.output.read_text(errors="replace")
