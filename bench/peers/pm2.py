"""pm2 7 from npm, installed locally in the scratch dir, isolated ``PM2_HOME``."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from bench.peers.base import Peer, Service
from bench.peers.setup import npm_local

VERSION = "7.0.4"


class Pm2(Peer):
    name = "pm2"
    home: ClassVar[Path]

    @classmethod
    def install(cls, scratch: Path) -> str:
        cls.home = npm_local(scratch, "pm2", f"pm2@{VERSION}")
        node = subprocess.run(["node", "--version"], capture_output=True, text=True, check=False)
        return f"pm2 {VERSION} (node {node.stdout.strip()})"

    def _pm2(self) -> str:
        return str(self.home / "node_modules" / ".bin" / "pm2")

    def env(self) -> dict[str, str]:
        env = super().env()
        env["PM2_HOME"] = str(self.root / "pm2home")
        return env

    def render(self, services: Sequence[Service]) -> dict[str, str]:
        apps = []
        for s in services:
            out = str(self.root / "logs" / f"{s.name}.log") if s.capture else "/dev/null"
            apps.append({
                "name": s.name, "script": s.argv[0], "args": list(s.argv[1:]),
                "interpreter": "none", "exec_mode": "fork", "autorestart": True,
                "restart_delay": 0, "max_restarts": 1000000, "min_uptime": 1000,
                "watch": False, "vizion": False, "merge_logs": True,
                "out_file": out, "error_file": "/dev/null",
            })
        text = "module.exports = " + json.dumps({"apps": apps}, indent=1) + ";\n"
        return {"ecosystem.config.js": text, "logs/.keep": ""}

    def launch_argv(self) -> list[str]:
        return [self._pm2(), "start", str(self.root / "ecosystem.config.js")]

    def status_argv(self) -> list[str]:
        return [self._pm2(), "jlist"]

    def root_pids(self) -> list[int]:
        pids = super().root_pids()
        try:
            daemon = int((self.root / "pm2home" / "pm2.pid").read_text().strip())
        except (OSError, ValueError):
            return pids
        return [*pids, daemon] if Path(f"/proc/{daemon}").exists() else pids

    def request_stop(self) -> None:
        subprocess.run([self._pm2(), "kill"], env=self.env(), capture_output=True,
                       timeout=300, check=False)

    def supervisor_output(self, limit: int = 400) -> str:
        """The daemon's last error line (e.g. ``spawn /usr/bin/sleep EMFILE``), if any."""
        try:
            lines = (self.root / "pm2home" / "pm2.log").read_text(errors="replace").splitlines()
        except OSError:
            lines = []
        errors = [ln for ln in lines if "PM2 error: Error:" in ln]
        return (errors[-1] if errors else super().supervisor_output())[-limit:]

    def log_files(self, service: Service) -> list[Path]:
        return [self.root / "logs" / f"{service.name}.log"]
