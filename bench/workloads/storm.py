"""Crash storm: 100 services that exit after 100 ms, restarted as fast as the peer allows.

Each service is ``sleep 0.1 <marker>e-12`` (GNU sleep adds its arguments; the marker
names the service and adds picoseconds). Over the storm window: CPU of the supervisor's
own processes (% of one core), restarts per second (exec events of the storm's sleeps),
and the whole-command ``status`` latency, one run every 250 ms (p50/p99/max; a run still
going 1 s after the window is cut off and counted as a failure). Peers restart at very
different rates (s6/runit wait 1 s after a death younger than 1 s), so CPU is also given
per restart.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable

from bench import procs
from bench.peers.base import SLEEP, Peer, PeerUnavailableError, Service
from bench.procconn import ProcListener
from bench.results import Results
from bench.workloads.common import allocate_markers, cold_start, median, percentile

SERVICES = 100
STATUS_EVERY_S = 0.25
COLUMNS = ["peer", "seconds", "restarts/s", "supervisor CPU %", "CPU ms/restart", "status p50 ms",
           "status p99 ms", "status max ms", "status runs", "status failures"]


def storm_services(n: int = SERVICES) -> list[Service]:
    return [Service(f"c{i}", (SLEEP, "0.1", f"{m}e-12")) for i, m in
            enumerate(allocate_markers(n))]


def run(make: Callable[[], Peer], seconds: float, listener: ProcListener,
        results: Results) -> None:
    results.table("storm", f"Crash storm ({SERVICES} services exiting every 100 ms)", COLUMNS)
    peer = make()
    services = storm_services()
    marks = {s.argv[-1] for s in services}
    try:
        with listener.subscribe(lambda e: e.kind == "exec" and bool(e.argv) and
                                e.argv[-1] in marks) as sub:
            cold_start(peer, services, listener, timeout=60)
            sub.drain()
            window = procs.CpuWindow(peer.own_pids())
            window.start()
            times, failures = [], 0
            end = window.t0 + seconds
            next_at = window.t0
            while (now := time.monotonic()) < end:
                time.sleep(max(0.0, next_at - now))
                next_at += STATUS_EVERY_S
                try:
                    dt, rc, _ = peer.status(timeout=max(1.0, end + 1.0 - time.monotonic()))
                except subprocess.TimeoutExpired:
                    failures += 1
                    continue
                times.append(dt * 1000)
                failures += rc not in peer.status_ok_rc
            cpu, elapsed = window.percent(peer.own_pids())
            restarts = len({e.pid for e in sub.drain()})
            if not peer.alive():
                raise PeerUnavailableError("supervisor died during the storm: "
                                           + peer.supervisor_output())
    except PeerUnavailableError as e:
        results.fail("storm", peer.label, str(e))
        return
    except Exception as e:
        results.fail("storm", peer.label, f"{type(e).__name__}: {e}")
        return
    finally:
        peer.cleanup()
    results.add_row("storm", {
        "peer": peer.label, "seconds": round(elapsed, 1), "restarts/s": round(restarts / elapsed),
        "supervisor CPU %": round(cpu, 1),
        "CPU ms/restart": round(cpu * 10 / (restarts / elapsed), 2) if restarts else "-",
        "status p50 ms": round(median(times), 1),
        "status p99 ms": round(percentile(times, 99), 1), "status max ms": round(max(times), 1),
        "status runs": len(times), "status failures": failures,
    })
