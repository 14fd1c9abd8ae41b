"""circus 0.19 from PyPI, in its own venv; ``check_delay`` 0.01 s (its fastest respawn)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from bench.peers.base import Peer, Service
from bench.peers.setup import pip_venv

VERSION = "0.19.0"


class Circus(Peer):
    name = "circus"
    check_delay: ClassVar[float] = 0.01
    bin: ClassVar[Path]

    @property
    def label(self) -> str:
        return f"circus(check_delay={self.check_delay:g})"

    @classmethod
    def install(cls, scratch: Path) -> str:
        venv = pip_venv(scratch, "circus", [f"circus=={VERSION}"])
        cls.bin = venv / "bin"
        return f"circus {VERSION} ({_pkg_versions(venv)})"

    def _endpoint(self) -> str:
        return f"ipc://{self.root}/endpoint"

    def render(self, services: Sequence[Service]) -> dict[str, str]:
        r = self.root
        text = f"""[circus]
check_delay = {self.check_delay:g}
endpoint = {self._endpoint()}
pubsub_endpoint = ipc://{r}/pubsub
loglevel = warning
"""
        for s in services:
            text += f"""
[watcher:{s.name}]
cmd = {s.argv[0]}
args = {" ".join(s.argv[1:])}
numprocesses = 1
respawn = true
warmup_delay = 0
max_retry = -1
"""
            if s.capture:
                text += (
                    "stdout_stream.class = FileStream\n"
                    f"stdout_stream.filename = {r}/logs/{s.name}.log\n"
                )
        return {"circus.ini": text, "logs/.keep": ""}

    def launch_argv(self) -> list[str]:
        return [str(self.bin / "circusd"), str(self.root / "circus.ini")]

    def status_argv(self) -> list[str]:
        return [str(self.bin / "circusctl"), "--endpoint", self._endpoint(), "status"]

    def log_files(self, service: Service) -> list[Path]:
        return [self.root / "logs" / f"{service.name}.log"]


def _pkg_versions(venv: Path) -> str:
    found = []
    for dist in sorted((venv / "lib").glob("python*/site-packages/*.dist-info")):
        name, _, ver = dist.name[: -len(".dist-info")].partition("-")
        if name.lower() in {"pyzmq", "tornado", "psutil"}:
            found.append(f"{name} {ver}")
    return ", ".join(found)
