"""The CLI as a real process: what a local ``svc status`` imports, and its one line when
no supervisor runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[2] / "src")


def test_real_process_unreachable_and_no_heavy_imports(tmp_path: Path) -> None:
    """As a real process: exit 111 with one line, and no http.client/asyncio/typing imported
    (nor the remote-auth and transfer code a local status never needs)."""
    probe = ("import sys; from corral.cli.main import run; code = run(sys.argv[1:]); "
             "bad = [m for m in ('http.client', 'asyncio', 'typing', 'ssl', 'yaml', 'pydantic', "
             "'httpx', 'rich', 'corral.supervisor', 'corral.launcher', 'fastapi', "
             "'corral.cli.remote', 'corral.cli.transfer') "
             "if m in sys.modules]; print(bad); sys.exit(code)")
    env = {**os.environ, "PYTHONPATH": SRC}
    env.pop("CORRAL_HOME", None)
    proc = subprocess.run([sys.executable, "-S", "-c", probe, "--state-dir", str(tmp_path),
                           "svc", "status"], capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 111
    assert proc.stdout == "[]\n"
    assert proc.stderr.count("\n") == 1
    assert proc.stderr.startswith(f"corral: cannot reach a supervisor at {tmp_path} (no api.sock)")
