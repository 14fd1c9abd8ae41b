"""Log throughput: one service writes numbered 100-byte lines to stdout; MB/s into the log.

The writer (bench/writer.py) pre-builds every line, reports ready, and on SIGUSR1 writes
them in 64 KiB writes, then stays alive. Time = go -> the log file(s) hold every byte
(page cache, no fsync, as in peer-bench); MB/s counts the writer's bytes, so prefixed
formats compare directly. Before each run ``sync`` flushes the previous run's writeback
and the clean page cache is dropped: on the bench host an append to a file whose earlier
600 MB are still cached runs at ~450 MB/s, after ``drop_caches`` at ~4,800 MB/s, so
without it a run's speed depended on how many bytes earlier runs had left in the same file
(and corral's stamped records, 35 % more bytes, reached the slow zone first).
Each peer gets up to 3 runs (fewer once they took 2 s: the writer streams again on each go
signal) and the median is reported; then the whole log is checked byte for byte
(:mod:`bench.logcheck`). Baseline: ``writer > file``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench.logcheck import LogCheck, check, data_file
from bench.peers.base import Peer, PeerUnavailableError, Service
from bench.results import Results
from bench.writer import LINE_BYTES

WRITER = str(Path(__file__).resolve().parents[1] / "writer.py")
COLUMNS = ["peer", "format", "seconds", "MB/s", "runs MB/s", "writer bytes", "file bytes",
           "identical",
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


def wait_size(files: Callable[[], list[Path]], want: int, timeout: float,
              stall: float = 30.0) -> float | None:
    """Poll (1 ms) until the files hold ``want`` bytes; monotonic time then, or None after
    ``timeout`` s, or after ``stall`` s without growth."""
    start = time.monotonic()
    last_size, last_change = -1, start
    while True:
        size = total_size(files)
        now = time.monotonic()
        if size >= want:
            return now
        if size != last_size:
            last_size, last_change = size, now
        if now - start > timeout or now - last_change > stall:
            return None
        time.sleep(0.001)


def _settle_page_cache() -> None:
    """Write back and drop the clean page cache (root, as the whole bench is)."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("1\n")


def timed_runs(pid: int, files: Callable[[], list[Path]], want: int, reps: int,
               budget_s: float) -> list[float]:
    """Up to ``reps`` go signals (fewer once the runs took ``budget_s``): seconds of each,
    from the signal until the files hold one more stream's worth of bytes."""
    runs: list[float] = []
    while len(runs) < reps and (not runs or sum(runs) < budget_s):
        _settle_page_cache()
        t0 = time.monotonic()
        os.kill(pid, signal.SIGUSR1)
        t1 = wait_size(files, want * (len(runs) + 1), timeout=600)
        if t1 is None:
            raise PeerUnavailableError(
                f"log holds {total_size(files)} of {want * (len(runs) + 1)} bytes: it stalled"
            )
        runs.append(t1 - t0)
    time.sleep(0.2)  # anything beyond the expected bytes (duplicates) should show up too
    return runs


def measure(peer: Peer, lines: int, fmt: str, results: Results, reps: int = 3,
            budget_s: float = 2.0) -> None:
    """Log runs on ``peer`` (median of up to ``reps``); adds a row or a "not measured"."""
    ready = peer.root / "ready"
    svc = writer_service(data_file(peer.scratch, lines), ready)
    try:
        peer.prepare([svc])
        peer.start()
        pid = wait_ready(ready, 120, peer.alive)
        want = stamped_size(lines, pid) if fmt == "stamped" else lines * LINE_BYTES
        runs = timed_runs(pid, lambda: peer.log_files(svc), want, reps, budget_s)
        res = check(peer.log_files(svc), lines, pid if fmt == "stamped" else None, len(runs))
    except PeerUnavailableError as e:
        results.fail("logs", peer.label, str(e))
        return
    except Exception as e:
        results.fail("logs", peer.label, f"{type(e).__name__}: {e}")
        return
    finally:
        peer.stop(timeout=60)
        shutil.rmtree(peer.root, ignore_errors=True)  # GBs of logs
    _row(results, peer.label, fmt, runs, lines, res)


def baseline(scratch: Path, lines: int, results: Results, reps: int = 3) -> None:
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
        runs = timed_runs(pid, lambda: [out], lines * LINE_BYTES, reps, 2.0)
    finally:
        proc.kill()
        proc.wait()
    _row(results, "baseline `writer > file`", "raw", runs, lines,
         check([out], lines, None, len(runs)))
    out.unlink()


def _row(results: Results, label: str, fmt: str, runs: list[float], lines: int,
         res: LogCheck) -> None:
    results.table("logs", "Log throughput (stdout -> log file)", COLUMNS)
    rates = sorted(round(lines * LINE_BYTES / s / 1e6) for s in runs)
    results.add_row("logs", {
        "peer": label, "format": fmt, "seconds": round(statistics.median(runs), 3),
        "MB/s": round(statistics.median(rates)), "runs MB/s": " / ".join(map(str, rates)),
        "writer bytes": lines * LINE_BYTES * len(runs),
        "file bytes": res.file_bytes, "identical": res.ok, "lost": res.lost,
        "duplicated": res.duplicated, "reordered": res.reordered, "corrupt": res.corrupt,
        "bad prefix": res.bad_prefix + res.ts_backwards,
    })
