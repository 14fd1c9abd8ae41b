"""runit from Debian: ``runsvdir`` run by hand (not as init), one ``runsv`` per service."""

from __future__ import annotations

import shlex
import signal
from collections.abc import Sequence
from pathlib import Path

from bench.peers.base import Peer, Service
from bench.peers.setup import apt, dpkg_version


class Runit(Peer):
    name = "runit"
    restart_min_wait = 1.1

    @classmethod
    def install(cls, scratch: Path) -> str:
        apt(["runsvdir", "runsv", "sv", "svlogd"], ["runit"])
        return f"runit {dpkg_version('runit')}"

    def render(self, services: Sequence[Service]) -> dict[str, str]:
        files: dict[str, str] = {}
        for s in services:
            d = f"scan/{s.name}"
            files[f"{d}/run"] = f"#!/bin/sh\nexec {shlex.join(s.argv)}\n"
            if s.capture:
                files[f"{d}/log/run"] = f"#!/bin/sh\nexec svlogd {self.root}/logs/{s.name}\n"
                files[f"logs/{s.name}/config"] = "s100000000\nn100\n"
        return files

    def launch_argv(self) -> list[str]:
        return ["runsvdir", str(self.root / "scan")]

    def status_argv(self) -> list[str]:
        return ["sv", "status", *(str(self.root / "scan" / s.name) for s in self.services)]

    def request_stop(self) -> None:
        # runsvdir on HUP sends TERM to every runsv, which stops its service and exits
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGHUP)

    def log_files(self, service: Service) -> list[Path]:
        d = self.root / "logs" / service.name
        return [*sorted(d.glob("@*")), d / "current"]
