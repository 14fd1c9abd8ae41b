"""Service output through the launcher: rotation, long lines, raw format, following."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .conftest import PY, Corral, wait_for


def all_records(corral: Corral, name: str) -> list[str]:
    """Every line of the log and its rotations, oldest first."""
    logs = corral.state_dir / "logs"
    files = sorted(logs.glob(f"{name}.log.*"), key=lambda p: -int(p.suffix[1:]))
    files.append(logs / f"{name}.log")
    return [line for f in files if f.exists() for line in f.read_text().splitlines()]


def test_rotation_keeps_every_line(corral: Corral, tmp_path: Path) -> None:
    """With a small max_bytes the log rotates into `keep` files and, while they hold it
    all, no line is lost or reordered (a file may pass max_bytes by one read)."""
    script = tmp_path / "chatty.py"
    script.write_text("import time\nfor i in range(300):\n"
                      "    print(f'{i:05d}' + 'z' * 500, flush=True); time.sleep(0.001)\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"name: chatty\ncommand: [{PY}, {script}]\n"
                    "restart: {policy: never}\nlogs: {max_bytes: 16KiB, keep: 20}\n")
    corral.ok("svc", "load", "-f", str(spec))
    corral.wait_state("chatty", "down")
    wait_for(lambda: len(all_records(corral, "chatty")) == 300, what="300 records")
    texts = [line.rsplit(" ", 1)[1][:5] for line in all_records(corral, "chatty")]
    assert texts == [f"{i:05d}" for i in range(300)]
    rotated = list((corral.state_dir / "logs").glob("chatty.log.*"))
    assert 2 <= len(rotated) <= 20


def test_long_lines_are_split_not_dropped(corral: Corral) -> None:
    """A 200 KiB line becomes several records whose texts add up to the whole line."""
    corral.ok("svc", "load", "longline", "--restart", "never", "--", PY, "-c",
              "import sys; sys.stdout.write('x'*204800 + '\\nend\\n')")
    corral.wait_state("longline", "down")
    records = wait_for(lambda: (r := corral.log_lines("longline")) and r[-1].endswith(" end")
                       and r, what="the end record")
    pieces = [line.split(" ", 3)[3] for line in records[:-1]]
    assert len(pieces) == 4 and all(len(p) <= 65536 for p in pieces)
    assert "".join(pieces) == "x" * 204800


def test_raw_format_passes_bytes_through(corral: Corral) -> None:
    """`logs: {format: raw}` writes the program's bytes unchanged."""
    corral.ok("svc", "load", "rawsvc", "--log-format", "raw", "--restart", "never", "--", PY,
              "-c", "import sys; sys.stdout.write('already stamped line\\npartial')")
    corral.wait_state("rawsvc", "down")
    wait_for(lambda: (corral.state_dir / "logs" / "rawsvc.log").read_text()
             == "already stamped line\npartial", what="the raw bytes")


def test_logs_follow_across_rotation(corral: Corral, tmp_path: Path) -> None:
    """`corral logs -f` keeps showing new lines after the file rotates."""
    script = tmp_path / "ticker.py"
    script.write_text("import time\nfor i in range(100000):\n"
                      "    print('line-%06d' % i + 'y' * 200); time.sleep(0.002)\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"name: ticker\ncommand: [{PY}, -u, {script}]\n"
                    "restart: {policy: never}\nlogs: {max_bytes: 8KiB, keep: 50}\n")
    corral.ok("svc", "load", "-f", str(spec))
    follower = subprocess.Popen([sys.executable, "-m", "corral", "logs", "ticker", "-f", "-n",
                                 "1"], stdout=subprocess.PIPE, text=True, env=corral.env)
    try:
        assert follower.stdout is not None
        seen = []
        for line in follower.stdout:
            assert "line-" in line, repr(line)
            seen.append(int(line.split("line-")[1][:6]))
            if len(seen) >= 300:
                break
        assert len(list((corral.state_dir / "logs").glob("ticker.log.*"))) >= 3
        missing = sorted(set(range(seen[1], seen[-1])) - set(seen))
        assert not missing, f"missing {missing[:10]}; seen {seen[:5]}..."
        assert seen[1:] == list(range(seen[1], seen[1] + len(seen) - 1))
    finally:
        follower.terminate()
        follower.wait(10)
        if follower.stdout is not None:
            follower.stdout.close()
