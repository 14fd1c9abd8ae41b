"""Log throughput: one service writes numbered 100-byte lines to stdout; MB/s into the log.

The writer (bench/writer.py) pre-builds every line, reports ready, and on SIGUSR1 writes
them in 64 KiB writes, then stays alive. Time = go -> the log file(s) hold every byte
(page cache, no fsync, as in peer-bench); MB/s counts the writer's bytes, so prefixed
formats compare directly. Before each run ``sync`` flushes the previous run's writeback.
Then the content is checked byte for byte (:mod:`bench.logcheck`). Baseline: ``writer > file``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench.logcheck import check, data_file
from bench.peers.base import Peer, PeerUnavailableError, Service
from bench.results import Results
from bench.writer import LINE_BYTES

WRITER = str(Path(__file__).resolve().parents[1] / "writer.py")
COLUMNS = ["peer", "format", "seconds", "MB/s", "writer bytes", "file bytes", "identical",
           "lost", "duplicated", "reordered", "corrupt", "bad prefix"]


def writer_service(data: Path, ready: Path) -> Service:
    return Service("w0", (sys.executable, WRITER, str(data), str(ready)), capture=True)


def wait_ready(ready: Path, timeout: float, alive: Callable[[], bool]) -> int:
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if time.monotonic() > deadline or not alive():
            raise PeerUnavailableError(f"writer not ready after {timeout:.0f} s")
        time.sleep(0.02)
    return int(ready.read_text())


def stamped_size(lines: int, pid: int) -> int:
    """Bytes of ``lines`` records ``<27-char ts> <pid> O <100-byte line>``."""
    return lines * (LINE_BYTES + 27 + 1 + len(str(pid)) + 3)


def total_size(files: Callable[[], list[Path]]) -> int:
    for _ in range(10):  # a rotation may rename a file between listing and stat
        try:
            return sum(p.stat().st_size for p in files() if p.exists())
        except FileNotFoundError:
            continue
    return 0


def wait_size(files: Callable[[], list[Path]], want: int, timeout: float) -> float | None:
    """Poll (1 ms) until the files hold ``want`` bytes; monotonic time then, or None."""
    deadline = time.monotonic() + timeout
    while True:
        if total_size(files) >= want:
            return time.monotonic()
        if time.monotonic() > deadline:
            return None
        time.sleep(0.001)


def measure(peer: Peer, lines: int, fmt: str, results: Results) -> None:
    """One log run on ``peer``; adds a row or a "not measured"."""
    ready = peer.root / "ready"
    svc = writer_service(data_file(peer.scratch, lines), ready)
    try:
        peer.prepare([svc])
        peer.start()
        pid = wait_ready(ready, 120, peer.alive)
        want = stamped_size(lines, pid) if fmt == "stamped" else lines * LINE_BYTES
        os.sync()
        t0 = time.monotonic()
        os.kill(pid, signal.SIGUSR1)
        t1 = wait_size(lambda: peer.log_files(svc), want, timeout=600)
        if t1 is None:
            raise PeerUnavailableError(
                f"log holds {total_size(lambda: peer.log_files(svc))} of {want} bytes after 600 s"
            )
        time.sleep(0.2)  # anything beyond `want` (duplicates) should show up too
        res = check(peer.log_files(svc), lines, pid if fmt == "stamped" else None)
    except PeerUnavailableError as e:
        results.fail("logs", peer.label, str(e))
        return
    except Exception as e:
        results.fail("logs", peer.label, f"{type(e).__name__}: {e}")
        return
    finally:
        peer.stop(timeout=60)
    _row(results, peer.label, fmt, t1 - t0, lines, res)


def baseline(scratch: Path, lines: int, results: Results) -> None:
    """``writer > file``: the physical limit of this machine."""
    root = scratch / "runs" / "baseline"
    root.mkdir(parents=True, exist_ok=True)
    out, ready = root / "baseline.log", root / "ready"
    for p in (out, ready):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    with open(out, "wb") as f:
        proc = subprocess.Popen([sys.executable, WRITER, str(data_file(scratch, lines)),
                                 str(ready)], stdout=f, stdin=subprocess.DEVNULL)
    try:
        pid = wait_ready(ready, 120, lambda: proc.poll() is None)
        os.sync()
        t0 = time.monotonic()
        os.kill(pid, signal.SIGUSR1)
        t1 = wait_size(lambda: [out], lines * LINE_BYTES, 600)
        assert t1 is not None
    finally:
        proc.kill()
        proc.wait()
    _row(results, "baseline `writer > file`", "raw", t1 - t0, lines, check([out], lines, None))
    out.unlink()


def _row(results: Results, label: str, fmt: str, seconds: float, lines: int, res: object) -> None:
    from bench.logcheck import LogCheck

    assert isinstance(res, LogCheck)
    results.table("logs", "Log throughput (stdout -> log file)", COLUMNS)
    results.add_row("logs", {
        "peer": label, "format": fmt, "seconds": round(seconds, 3),
        "MB/s": round(lines * LINE_BYTES / seconds / 1e6), "writer bytes": lines * LINE_BYTES,
        "file bytes": res.file_bytes, "identical": res.ok, "lost": res.lost,
        "duplicated": res.duplicated, "reordered": res.reordered, "corrupt": res.corrupt,
        "bad prefix": res.bad_prefix + res.ts_backwards,
    })
