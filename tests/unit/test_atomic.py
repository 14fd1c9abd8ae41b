"""The one atomic write: the old content or the new, never a torn file or a temp left over."""

from __future__ import annotations

import errno
import os
import resource
import stat
from pathlib import Path

import pytest

from corral import atomic


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_a_write_replaces_the_file_with_its_mode(tmp_path: Path) -> None:
    """The new content is in place with the asked mode, and nothing else is left."""
    path = tmp_path / "state.json"
    path.write_bytes(b"old")
    atomic.write(path, b"new", 0o600)
    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert leftovers(tmp_path) == []


def test_a_missing_directory_is_made_unless_asked_not_to(tmp_path: Path) -> None:
    """``run/`` of a fresh state directory is made; ``make_dirs=False`` fails instead."""
    atomic.write(tmp_path / "run" / "ports.json", b"{}")
    assert (tmp_path / "run" / "ports.json").read_bytes() == b"{}"
    with pytest.raises(FileNotFoundError):
        atomic.write(tmp_path / "nowhere" / "file", b"x", make_dirs=False)
    assert not (tmp_path / "nowhere").exists()


def test_a_write_that_fails_midway_keeps_the_old_file_and_leaves_no_temp(
        tmp_path: Path) -> None:
    """A write cut short by the file system (here the file-size limit: EFBIG, as ENOSPC
    would be) raises the OSError; the old content is intact and the temp file is gone."""
    path = tmp_path / "secrets.json"
    path.write_bytes(b"old content")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))  # Python ignores SIGXFSZ
    try:
        with pytest.raises(OSError) as failed:
            atomic.write(path, b"x" * 100_000)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert failed.value.errno == errno.EFBIG
    assert path.read_bytes() == b"old content"
    assert leftovers(tmp_path) == []


def test_a_check_that_refuses_the_content_removes_the_temp(tmp_path: Path) -> None:
    """An exception inside ``replacing`` (a digest that does not match) goes on, and the
    target keeps its old content."""
    path = tmp_path / "download"
    path.write_bytes(b"old")
    with pytest.raises(ValueError, match="digest"), atomic.replacing(path, 0o644) as f:
        f.write(b"half of it")
        raise ValueError("digest does not match")
    assert path.read_bytes() == b"old"
    assert leftovers(tmp_path) == []


def test_a_temp_left_by_a_killed_writer_is_replaced(tmp_path: Path) -> None:
    """A temp file of this pid's name (a killed process that had the pid) does not stop
    the write, and is not left behind."""
    path = tmp_path / "desired.json"
    (tmp_path / f".desired.json.tmp{os.getpid()}").write_bytes(b"stale")
    atomic.write(path, b"{}")
    assert path.read_bytes() == b"{}"
    assert leftovers(tmp_path) == []
