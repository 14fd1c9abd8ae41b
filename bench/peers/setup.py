"""Installing peers into the scratch directory: venvs, npm, apt (idempotent)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from bench.peers.base import PeerUnavailableError


def _run(argv: list[str], cwd: Path | None = None, timeout: float = 600) -> None:
    r = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    if r.returncode != 0:
        tail = " ".join((r.stderr or r.stdout).strip().splitlines()[-2:])
        raise PeerUnavailableError(f"`{' '.join(argv[:4])}` failed: {tail[-300:]}")


def pip_venv(scratch: Path, name: str, requirements: list[str]) -> Path:
    """A venv at ``scratch/peers/<name>-venv`` holding ``requirements``; returns its path."""
    venv = scratch / "peers" / f"{name}-venv"
    stamp = venv / ".bench-installed"
    want = "\n".join(requirements)
    if stamp.exists() and stamp.read_text() == want:
        return venv
    venv.parent.mkdir(parents=True, exist_ok=True)
    _run([sys.executable, "-m", "venv", "--clear", str(venv)])
    _run([str(venv / "bin" / "pip"), "install", "-q", *requirements])
    stamp.write_text(want)
    return venv


def npm_local(scratch: Path, name: str, package: str) -> Path:
    """``npm install package`` into ``scratch/peers/<name>``; returns that directory."""
    where = scratch / "peers" / name
    stamp = where / ".bench-installed"
    if stamp.exists() and stamp.read_text() == package:
        return where
    if shutil.which("npm") is None:
        raise PeerUnavailableError("npm is not installed")
    where.mkdir(parents=True, exist_ok=True)
    _run(["npm", "install", "--no-audit", "--no-fund", "--silent", package], cwd=where)
    stamp.write_text(package)
    return where


def apt(binaries: list[str], packages: list[str]) -> None:
    """Make sure ``binaries`` exist, apt-installing ``packages`` if one is missing."""
    if all(shutil.which(b) for b in binaries):
        return
    if shutil.which("apt-get") is None:
        raise PeerUnavailableError(f"{', '.join(binaries)} missing and no apt-get")
    _run(["apt-get", "update"], timeout=900)
    _run(["apt-get", "install", "-y", "--no-install-recommends", *packages], timeout=900)
    missing = [b for b in binaries if not shutil.which(b)]
    if missing:
        raise PeerUnavailableError(f"still missing after apt-get: {', '.join(missing)}")


def dpkg_version(package: str) -> str:
    r = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True, check=False
    )
    return r.stdout.strip() or "?"
