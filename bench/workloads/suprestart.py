"""Supervisor restart (corral only): ``kill -9`` of the supervisor under the log workload.

The writer service streams its lines; once the log holds 10 % of them the supervisor
(``sup status --json`` field ``supervisor_pid``) gets SIGKILL. Measured: time from the
kill until a whole ``corral svc status`` command answers (exit 0) again, the service's
restarts (``svc status --json`` field ``restarts``, and exec events of a new writer on the
proc connector; both must stay 0), and the log checked line by line (lost must be 0).
Then the supervisor is killed again ``extra_kills`` times with the writer idle, to get
more recovery samples.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

from bench.logcheck import check, data_file
from bench.peers.base import PeerUnavailableError
from bench.peers.corral import Corral
from bench.procconn import ProcListener
from bench.results import Results
from bench.workloads.common import median
from bench.workloads.logs import stamped_size, total_size, wait_ready, wait_size, writer_service

COLUMNS = ["peer", "kills", "recovery median ms", "recovery max ms", "service restarts",
           "new writer execs", "lines lost", "log identical", "MB/s under the kill"]


def _recover(peer: Corral, old_sup: int, timeout: float = 30) -> float:
    """SIGKILL the supervisor; seconds until ``svc status`` exits 0 from a new one."""
    t0 = time.monotonic()
    os.kill(old_sup, signal.SIGKILL)
    while time.monotonic() - t0 < timeout:
        r = subprocess.run(peer.status_argv(), capture_output=True, timeout=timeout,
                           check=False)
        if r.returncode == 0:
            return time.monotonic() - t0
    raise PeerUnavailableError(f"`svc status` did not answer within {timeout:.0f} s")


def _restarts(peer: Corral) -> int:
    return sum(int(s.get("restarts", 0)) for s in peer.json("svc", "status"))


def run(peer: Corral, lines: int, extra_kills: int, listener: ProcListener,
        results: Results) -> None:
    results.table("suprestart", "Supervisor kill -9 under the log workload (corral)", COLUMNS)
    ready = peer.root / "ready"
    svc = writer_service(data_file(peer.scratch, lines), ready)
    try:
        with listener.subscribe(lambda e: e.kind == "exec" and str(ready) in e.argv) as sub:
            peer.prepare([svc])
            peer.start()
            pid = wait_ready(ready, 120, peer.alive)
            sub.drain()
            before = _restarts(peer)
            want = stamped_size(lines, pid)
            os.sync()
            t0 = time.monotonic()
            os.kill(pid, signal.SIGUSR1)
            if wait_size(lambda: peer.log_files(svc), want // 10, 120) is None:
                raise PeerUnavailableError("the writer's first 10 % never reached the log")
            recovery = [_recover(peer, peer.json("sup", "status")["supervisor_pid"])]
            t1 = wait_size(lambda: peer.log_files(svc), want, 600)
            if t1 is None:
                raise PeerUnavailableError(
                    f"log holds {total_size(lambda: peer.log_files(svc))} of {want} bytes")
            for _ in range(extra_kills):
                time.sleep(0.3)
                recovery.append(_recover(peer, peer.json("sup", "status")["supervisor_pid"]))
            time.sleep(0.3)
            restarts = _restarts(peer) - before
            execs = len(sub.drain())
        res = check(peer.log_files(svc), lines, pid)
    except (PeerUnavailableError, subprocess.SubprocessError, OSError, KeyError,
            ValueError) as e:
        results.fail("suprestart", peer.label, f"{type(e).__name__}: {e}")
        return
    finally:
        peer.stop(timeout=60)
        shutil.rmtree(peer.root / "state" / "logs", ignore_errors=True)
    results.add_row("suprestart", {
        "peer": peer.label, "kills": len(recovery),
        "recovery median ms": round(median(recovery) * 1000),
        "recovery max ms": round(max(recovery) * 1000), "service restarts": restarts,
        "new writer execs": execs, "lines lost": res.lost, "log identical": res.ok,
        "MB/s under the kill": round(lines * 100 / (t1 - t0) / 1e6),
    })
