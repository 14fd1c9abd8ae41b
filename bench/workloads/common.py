"""Helpers shared by the workloads: markers, cold start by proc events, stats."""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from bench.peers.base import SLEEP, Peer, PeerUnavailableError, Service
from bench.procconn import ProcEvent, ProcListener

_counter = itertools.count()
_lock = threading.Lock()


def allocate_markers(n: int) -> list[int]:
    """``n`` sleep arguments no other instance in this run uses (10,000,000 + k*100,000 + i)."""
    with _lock:
        k = next(_counter)
    return [10_000_000 + k * 100_000 + i for i in range(n)]


def is_sleep_exec(ev: ProcEvent) -> bool:
    return ev.kind == "exec" and len(ev.argv) >= 2 and ev.argv[0] == SLEEP


@dataclass
class ColdStart:
    seconds: float
    pids: dict[str, int] = field(default_factory=dict)  # marker -> pid
    exec_ts: dict[str, int] = field(default_factory=dict)  # marker -> kernel ns


def cold_start(
    peer: Peer, services: Sequence[Service], listener: ProcListener, timeout: float,
    stall: float = 30.0,
) -> ColdStart:
    """prepare + start ``peer``; seconds from start until every service's sleep exec'd.

    Gives up after ``timeout`` s, or ``stall`` s without a new service once some started."""
    marks = {s.argv[-1] for s in services}
    peer.prepare(services)
    res = ColdStart(0.0)
    with listener.subscribe(lambda e: is_sleep_exec(e) and e.argv[-1] in marks) as sub:
        t0 = time.monotonic_ns()
        peer.start()
        deadline = time.monotonic() + timeout
        progress = time.monotonic()
        while len(res.pids) < len(marks):
            ev = sub.get(0.5)
            now = time.monotonic()
            if ev is not None:
                res.pids[ev.argv[-1]] = ev.pid
                res.exec_ts[ev.argv[-1]] = ev.ts_ns
                progress = now
            elif now > deadline or (res.pids and now - progress > stall):
                raise PeerUnavailableError(
                    f"only {len(res.pids)}/{len(marks)} services running after "
                    f"{now - t0 / 1e9:.0f} s: " + peer.supervisor_output()
                )
            elif not peer.alive():
                raise PeerUnavailableError("supervisor exited: " + peer.supervisor_output())
    res.seconds = (max(res.exec_ts.values()) - t0) / 1e9
    return res


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); nan for no values."""
    if not values:
        return math.nan
    s = sorted(values)
    k = max(0, math.ceil(q / 100 * len(s)) - 1)
    return s[k]


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)
