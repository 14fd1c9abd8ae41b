"""s6 (skarnet) from Debian: ``s6-svscan`` over one service directory per service.

s6-supervise waits 1 s after a death before running ``./run`` again unless the child
announced readiness more than 1 s earlier; so every ``run`` script writes a newline to
its ``notification-fd`` (3) and then execs the service (s6's fastest restart).
"""

from __future__ import annotations

import shlex
import signal
from collections.abc import Sequence
from pathlib import Path

from bench.peers.base import Peer, Service
from bench.peers.setup import apt, dpkg_version


class S6(Peer):
    name = "s6"
    restart_min_wait = 1.1

    @property
    def label(self) -> str:
        return "s6(notification-fd)"

    @classmethod
    def install(cls, scratch: Path) -> str:
        apt(["s6-svscan", "s6-svstat", "s6-log"], ["s6", "execline"])
        return f"s6 {dpkg_version('s6')}, execline {dpkg_version('execline')}"

    def render(self, services: Sequence[Service]) -> dict[str, str]:
        files: dict[str, str] = {}
        for s in services:
            d = f"scan/{s.name}"
            files[f"{d}/run"] = (
                f"#!/bin/sh\necho >&3\nexec {shlex.join(s.argv)} 3>&-\n"
            )
            files[f"{d}/notification-fd"] = "3\n"
            if s.capture:
                files[f"{d}/log/run"] = (
                    f"#!/bin/sh\nexec s6-log n100 s100000000 {self.root}/logs/{s.name}\n"
                )
                files[f"logs/{s.name}/.keep"] = ""
        return files

    def launch_argv(self) -> list[str]:
        n = len(self.services)
        return ["s6-svscan", "-c", str(max(500, 2 * n + 10)), str(self.root / "scan")]

    def status_argv(self) -> list[str]:
        return ["sh", "-c", 'for d in "$0"/*; do s6-svstat "$d"; done', str(self.root / "scan")]

    def request_stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def log_files(self, service: Service) -> list[Path]:
        d = self.root / "logs" / service.name
        return [*sorted(d.glob("@*")), d / "current"]
