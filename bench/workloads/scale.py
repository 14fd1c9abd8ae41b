"""Scale: N ``sleep`` services in one config, supervisor started cold.

- all running: supervisor launch -> the last of the N execs (proc connector);
- status: whole command, 1 warm-up + 5 timed runs, median (right after all running);
- after a 3 s settle: CPU (utime+stime of the supervisor's own processes) over the idle
  window, then RSS/PSS (smaps_rollup) summed over its own processes (tree minus services);
- stop: graceful stop until no service and no supervisor process remains.

Up to 1,000 services the peers are started one after the other and then left idling
together, so their idle windows overlap (an idle supervisor's own CPU time does not depend
on what else runs); above that each peer is stopped before the next starts (pid_max).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from bench import procs
from bench.peers.base import Peer, PeerUnavailableError, sleep_service
from bench.procconn import ProcListener
from bench.results import Results
from bench.workloads.common import allocate_markers, cold_start, median

SETTLE_S = 3.0
STATUS_RUNS = 5
PIPELINE_MAX_N = 1000
COLUMNS = ["peer", "N", "all running s", "own procs", "RSS MB", "PSS MB", "idle CPU %",
           "status median ms", "status rc", "stop s"]


@dataclass
class Idling:
    peer: Peer
    row: dict[str, object]
    window: procs.CpuWindow | None = None
    timer: threading.Timer | None = None


def run(peers: list[Callable[[], Peer]], n: int, listener: ProcListener, idle_s: float,
        results: Results) -> None:
    """Measure every peer (a factory each) at N = n, adding rows to ``results``."""
    results.table("scale", "Scale (N x sleep)", COLUMNS)
    pipelined = n <= PIPELINE_MAX_N
    pending: list[Idling] = []
    for make in peers:
        peer = make()
        idling = _start(peer, n, listener, results)
        if idling is None:
            continue
        pending.append(idling)
        if not pipelined:
            _finish(pending, idle_s, results)
            pending = []
    _finish(pending, idle_s, results)


def _start(peer: Peer, n: int, listener: ProcListener, results: Results) -> Idling | None:
    services = [sleep_service(i, m) for i, m in enumerate(allocate_markers(n))]
    try:
        cs = cold_start(peer, services, listener, timeout=max(60.0, n * 0.1))
        times, rc = [], 0
        for k in range(STATUS_RUNS + 1):
            dt, rc, _ = peer.status(timeout=120)
            if k:
                times.append(dt)
    except (PeerUnavailableError, OSError, TimeoutError) as e:
        results.fail("scale", f"{peer.label} N={n}", str(e))
        peer.cleanup()
        return None
    except Exception as e:  # a peer's crash must not stop the run
        results.fail("scale", f"{peer.label} N={n}", f"{type(e).__name__}: {e}")
        peer.cleanup()
        return None
    row: dict[str, object] = {
        "peer": peer.label, "N": n, "all running s": round(cs.seconds, 2),
        "status median ms": round(median(times) * 1000, 1), "status rc": rc,
    }
    idling = Idling(peer, row)

    def begin() -> None:
        idling.window = procs.CpuWindow(peer.own_pids())
        idling.window.start()

    idling.timer = threading.Timer(SETTLE_S, begin)
    idling.timer.start()
    return idling


def _finish(pending: list[Idling], idle_s: float, results: Results) -> None:
    for it in pending:
        assert it.timer is not None
        it.timer.join()
        assert it.window is not None
        time.sleep(max(0.0, it.window.t0 + idle_s - time.monotonic()))
        own = it.peer.own_pids()
        cpu, elapsed = it.window.percent(own)
        pss = rss = 0
        for pid in own:
            p, r = procs.pss_rss_kib(pid)
            pss, rss = pss + p, rss + r
        it.row.update({
            "own procs": len(own), "RSS MB": round(rss / 1024, 1), "PSS MB": round(pss / 1024, 1),
            "idle CPU %": round(cpu, 2),
        })
        it.row["idle window s"] = round(elapsed, 1)
    for it in pending:
        stop = it.peer.stop(timeout=300)
        it.row["stop s"] = round(stop, 2) if stop is not None else "timeout"
        results.add_row("scale", it.row)
