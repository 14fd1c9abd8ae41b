"""Scale: N ``sleep`` services in one config, supervisor started cold.

- all running: supervisor launch -> the last of the N execs (proc connector);
- status: whole command, 1 warm-up + 5 timed runs, median (right after all running);
- after a 3 s settle: CPU (schedstat run time of the supervisor's own processes) over the idle
  window, then RSS/PSS (smaps_rollup) summed over its own processes (tree minus services);
- stop: graceful stop until no service and no supervisor process remains.

Jobs (peer, N) run one after the other, but a job's settle and idle window overlap the
next jobs' cold starts (an idle supervisor's own CPU time does not depend on what else
runs). Only the timed parts (cold start + status, graceful stop) are exclusive: they hold
``busy``. Jobs above 1,000 services are not overlapped (pid_max). Busy-idle peers (circus
at check_delay 0.01 burns 50-100 % of a core) should be queued last by the caller.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bench import procs
from bench.peers.base import Peer, PeerUnavailableError, sleep_service
from bench.procconn import ProcListener
from bench.results import Results, say
from bench.workloads.common import allocate_markers, cold_start, median

SETTLE_S = 3.0
STATUS_RUNS = 5
OVERLAP_MAX_N = 1000
COLUMNS = ["peer", "N", "all running s", "own procs", "RSS MB", "PSS MB", "idle CPU %",
           "status median ms", "status rc", "stop s"]


@dataclass
class Job:
    make: Callable[[], Peer]
    n: int
    row: dict[str, object] = field(default_factory=dict)
    thread: threading.Thread | None = None


def run(jobs: list[tuple[Callable[[], Peer], int]], listener: ProcListener, idle_s: float,
        results: Results, quick: bool = False) -> None:
    """Measure every (peer factory, N) job, adding rows to ``results``.

    ``quick``: above N = 100 the peers are killed instead of stopped (no "stop s"):
    pm2 alone takes 15-90 s to stop 1,000 apps.
    """
    results.table("scale", "Scale (N x sleep)", COLUMNS)
    busy = threading.Lock()
    running: list[Job] = []
    for make, n in jobs:
        job = Job(make, n)
        with busy:
            peer = _start(job, listener, results)
        if peer is None:
            continue
        timed_stop = not quick or n <= 100
        job.thread = threading.Thread(target=_idle_then_stop,
                                      args=(job, peer, idle_s, busy, timed_stop, results))
        job.thread.start()
        running.append(job)
        if n > OVERLAP_MAX_N:
            job.thread.join()
    for job in running:
        assert job.thread is not None
        job.thread.join()
        if job.row:
            results.add_row("scale", job.row)


def _start(job: Job, listener: ProcListener, results: Results) -> Peer | None:
    peer, n = job.make(), job.n
    services = [sleep_service(i, m) for i, m in enumerate(allocate_markers(n))]
    t0 = time.monotonic()
    try:
        cs = cold_start(peer, services, listener, timeout=max(60.0, n * 0.1))
        times, rc = [], 0
        for k in range(STATUS_RUNS + 1):
            dt, rc, _ = peer.status(timeout=120)
            if k:
                times.append(dt)
    except Exception as e:  # a peer's failure or crash must not stop the run
        why = str(e) if isinstance(e, PeerUnavailableError) else f"{type(e).__name__}: {e}"
        results.fail("scale", f"{peer.label} N={n}", why)
        peer.cleanup()
        return None
    say(f"scale: {peer.label} N={n}: all running {cs.seconds:.2f} s, status "
        f"{median(times) * 1000:.0f} ms, {time.monotonic() - t0:.1f} s in all")
    job.row = {
        "peer": peer.label, "N": n, "all running s": round(cs.seconds, 2),
        "status median ms": round(median(times) * 1000, 1), "status rc": rc,
    }
    return peer


def _idle_then_stop(job: Job, peer: Peer, idle_s: float, busy: threading.Lock,
                    timed_stop: bool, results: Results) -> None:
    try:
        time.sleep(SETTLE_S)
        window = procs.CpuWindow(peer.own_pids())
        window.start()
        time.sleep(idle_s)
        own = peer.own_pids()
        cpu, elapsed = window.percent(own)
        pss = rss = 0
        for pid in own:
            p, r = procs.pss_rss_kib(pid)
            pss, rss = pss + p, rss + r
        job.row.update({
            "own procs": len(own), "RSS MB": round(rss / 1024, 1),
            "PSS MB": round(pss / 1024, 1), "idle CPU %": round(cpu, 2),
            "idle window s": round(elapsed, 1),
        })
        if timed_stop:
            with busy:
                stop = peer.stop(timeout=300)
            job.row["stop s"] = round(stop, 2) if stop is not None else "timeout"
        else:
            job.row["stop s"] = "-"
    except Exception as e:
        results.fail("scale", f"{peer.label} N={job.n}", f"{type(e).__name__}: {e}")
        job.row = {}
    finally:
        peer.cleanup()
