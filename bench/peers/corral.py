"""corral itself, from this tree (``pip install -e``) in the bench's own venv.

Settings: ``restart: {policy: always, cooldown: 50ms, backoff_min: 0s}`` (a death after
50 ms is not "young", so it restarts at once) and ``logs: {max_bytes: 8GiB}`` (no rotation
during the log test). Cold start goes through ``sup run --target``; if this corral has no
``--target`` yet, the services are loaded one by one with ``svc load -f`` instead.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from bench.peers.base import Peer, PeerUnavailableError, Service
from bench.peers.setup import pip_venv

TREE = Path(__file__).resolve().parents[2]


class Corral(Peer):
    name = "corral"
    bin: ClassVar[Path]
    has_target_flag: ClassVar[bool] = True

    def __init__(self, scratch: Path, tag: str, log_format: str = "stamped") -> None:
        self.log_format = log_format
        super().__init__(scratch, tag)

    @property
    def label(self) -> str:
        return f"corral({self.log_format})" if self.log_format != "stamped" else "corral"

    @classmethod
    def install(cls, scratch: Path) -> str:
        override = os.environ.get("CORRAL_BENCH_BIN")
        if override:
            cls.bin = Path(override)
        else:
            venv = pip_venv(scratch, "corral", ["-e", str(TREE)])
            cls.bin = venv / "bin" / "corral"
            # An editable install has no bytecode until first import, and with
            # PYTHONDONTWRITEBYTECODE set (as on this host) never: every command would
            # compile corral from source, which the peers' installed packages never do.
            subprocess.run([str(venv / "bin" / "python"), "-m", "compileall", "-q",
                            str(TREE / "src")], capture_output=True, timeout=300, check=False)
        r = subprocess.run([str(cls.bin), "--help"], capture_output=True, text=True,
                           timeout=60, check=False)
        if r.returncode != 0:
            raise PeerUnavailableError(f"`corral --help` failed: {(r.stderr or r.stdout)[-300:]}")
        r = subprocess.run([str(cls.bin), "sup", "run", "--help"], capture_output=True,
                           text=True, timeout=60, check=False)
        cls.has_target_flag = "--target" in r.stdout
        rev = subprocess.run(["git", "-C", str(TREE), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, check=False).stdout.strip()
        return f"corral {_version(cls.bin)} (tree {rev or '?'} + working changes)"

    @property
    def state(self) -> Path:
        return self.root / "state"

    def entry(self, s: Service) -> dict[str, Any]:
        return {
            "name": s.name,
            "command": list(s.argv),
            "restart": {"policy": "always", "cooldown": "50ms", "backoff_min": "0s"},
            "logs": {"format": self.log_format, "max_bytes": "8GiB"},
        }

    def render(self, services: Sequence[Service]) -> dict[str, str]:
        entries = ",\n".join("  " + json.dumps(self.entry(s)) for s in services)
        files = {"target.yaml": '{"processes": [\n' + entries + "\n]}\n"}
        for s in services:
            files[f"specs/{s.name}.yaml"] = json.dumps(self.entry(s)) + "\n"
        return files

    def cli(self, *args: str) -> list[str]:
        return [str(self.bin), "--state-dir", str(self.state), *args]

    def launch_argv(self) -> list[str]:
        argv = [str(self.bin), "sup", "run", "--state-dir", str(self.state)]
        if self.has_target_flag:
            argv += ["--target", str(self.root / "target.yaml")]
        return argv

    def start(self) -> None:
        # Returns once the API answers, with or without --target: services start before
        # the API stack is imported, so a caller must not take a running service for a
        # supervisor that answers.  (Cold-start times come from the kernel's exec events,
        # so waiting here does not change them.)
        super().start()
        deadline = time.monotonic() + 30
        while subprocess.run(self.cli("sup", "status"), capture_output=True,
                             check=False).returncode != 0:
            if time.monotonic() > deadline or not self.alive():
                raise PeerUnavailableError("corral sup run did not answer within 30 s: "
                                      + self.supervisor_output())
            time.sleep(0.05)
        if self.has_target_flag:
            return
        for s in self.services:
            r = subprocess.run(self.cli("svc", "load", "-f", str(self.root / "specs" /
                               f"{s.name}.yaml")), capture_output=True, text=True, check=False)
            if r.returncode != 0:
                raise PeerUnavailableError(f"svc load failed: {r.stderr.strip()[-300:]}")

    def status_argv(self) -> list[str]:
        return self.cli("svc", "status")

    def json(self, *args: str) -> Any:
        """``corral <args> --json`` parsed (raises on failure)."""
        r = subprocess.run(self.cli(*args, "--json"), capture_output=True, text=True,
                           timeout=30, check=True)
        return json.loads(r.stdout)

    def log_files(self, service: Service) -> list[Path]:
        d = self.state / "logs"
        rotated = sorted(d.glob(f"{service.name}.log.*"), key=_rotation_key, reverse=True)
        return [*rotated, d / f"{service.name}.log"]


def _rotation_key(p: Path) -> int:
    suffix = p.name.rsplit(".", 1)[-1]
    return int(suffix) if suffix.isdigit() else 0


def _version(binary: Path) -> str:
    py = binary.parent / "python"
    if not py.exists():
        return "?"
    r = subprocess.run([str(py), "-c", "import corral; print(corral.__version__)"],
                       capture_output=True, text=True, check=False)
    return r.stdout.strip() or "?"
