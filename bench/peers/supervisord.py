"""supervisord 4.3 from PyPI, in its own venv, at its fastest restart settings."""

from __future__ import annotations

import resource
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from bench.peers.base import Peer, Service
from bench.peers.setup import pip_venv

VERSION = "4.3.0"


class Supervisord(Peer):
    name = "supervisord"
    bin: ClassVar[Path]
    status_ok_rc = frozenset({0, 3})

    @classmethod
    def install(cls, scratch: Path) -> str:
        venv = pip_venv(scratch, "supervisord", [f"supervisor=={VERSION}"])
        cls.bin = venv / "bin"
        return f"supervisor {VERSION}"

    def render(self, services: Sequence[Service]) -> dict[str, str]:
        r = self.root
        head = f"""[unix_http_server]
file={r}/supervisor.sock

[supervisord]
nodaemon=true
loglevel=warn
logfile={r}/supervisord.log
pidfile={r}/supervisord.pid
childlogdir={r}
minfds={_minfds(len(services))}

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{r}/supervisor.sock
"""
        progs = []
        for s in services:
            out = (
                f"stdout_logfile={r}/logs/{s.name}.log\nstdout_logfile_maxbytes=0\n"
                "stdout_logfile_backups=0\nstderr_logfile=NONE"
                if s.capture
                else "stdout_logfile=NONE\nstderr_logfile=NONE"
            )
            progs.append(
                f"""
[program:{s.name}]
command={" ".join(s.argv)}
autostart=true
autorestart=true
startsecs=0
startretries=1000000
stopwaitsecs=5
{out}
"""
            )
        return {"supervisord.conf": head + "".join(progs), "logs/.keep": ""}

    def launch_argv(self) -> list[str]:
        return [str(self.bin / "supervisord"), "-c", str(self.root / "supervisord.conf")]

    def status_argv(self) -> list[str]:
        return [str(self.bin / "supervisorctl"), "-c", str(self.root / "supervisord.conf"), "status"]

    def log_files(self, service: Service) -> list[Path]:
        return [self.root / "logs" / f"{service.name}.log"]


def _minfds(n: int) -> int:
    """peer-bench's max(1024, 8N), but no more than this host's hard RLIMIT_NOFILE
    (supervisord refuses to start when it cannot get minfds; it needs ~3 per child)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    want = max(1024, 8 * n)
    return want if hard == resource.RLIM_INFINITY else min(want, hard)
