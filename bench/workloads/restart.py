"""Restart latency: SIGKILL of a long-running child -> exec of its replacement.

Every peer runs ``services`` ``sleep <marker>`` services (1 as in peer-bench; 2 in
``--quick``, killed in turn, one restart in flight per peer), all peers at once, each in
its own thread. Before each kill the child has lived ``restart_min_wait`` (0.3 s; 1.1 s for
s6/runit, whose throttles target children younger than 1 s) + uniform(0, 1) s, so that
periodic loops are not hit at a fixed phase. Kills are serialized across peers: a kill
is only sent while no other kill of the last 50 ms is still waiting for its exec, so two
restarts practically never compete for the CPU (a slow peer, e.g. supervisord's 1 s loop,
releases the turn after 50 ms). Latency = kernel exec timestamp of the new ``sleep``
minus ``time.monotonic_ns()`` just before ``kill``; both are CLOCK_MONOTONIC.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import signal
import threading
import time
from dataclasses import dataclass, field

from bench import procs
from bench.peers.base import Peer, PeerUnavailableError, sleep_service
from bench.procconn import ProcEvent, ProcListener, Subscription
from bench.results import Results
from bench.workloads.common import (
    ColdStart,
    allocate_markers,
    cold_start,
    is_sleep_exec,
    percentile,
)

TURN_HOLD_S = 0.05  # a kill keeps the turn at most this long
SAME_PID_GRACE_S = 0.005
MAX_FAILURES = 3  # kills with no restart within 10 s before the peer is given up  # s6/runit: `sh ./run` execs `sleep` in the same pid


@dataclass
class RestartSamples:
    latency_ms: list[float] = field(default_factory=list)
    kill_to_exit_ms: list[float] = field(default_factory=list)
    exit_to_exec_ms: list[float] = field(default_factory=list)
    failures: int = 0


class Turn:
    """One kill in flight at a time, across every peer's thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()


COLUMNS = ["peer", "samples", "p50 ms", "p90 ms", "p99 ms", "max ms", "min ms",
           "kill->exit p50 ms", "exit->exec p50 ms", "exit->exec p99 ms", "failures"]


def run(peers: list[Peer], listener: ProcListener, kills: dict[str, int], seed: int,
        results: Results, services: int = 1) -> None:
    """Every peer at once, ``services`` sleeps each; ``kills[label]`` kills per peer."""
    results.table("restart", "Restart latency (SIGKILL -> exec of the new child)", COLUMNS)
    started: list[tuple[Peer, ColdStart]] = []
    for peer in peers:
        svcs = [sleep_service(i, m) for i, m in enumerate(allocate_markers(services))]
        try:
            cs = cold_start(peer, svcs, listener, timeout=60)
        except Exception as e:
            results.fail("restart", peer.label, f"{type(e).__name__}: {e}")
            peer.cleanup()
            continue
        started.append((peer, cs))
    time.sleep(1.0)
    turn = Turn()
    out: dict[str, RestartSamples | str] = {}

    def one(k: int, peer: Peer, cs: ColdStart) -> None:
        try:
            out[peer.label] = run_peer(peer, cs, listener, kills[peer.label], turn, seed + k)
        except Exception as e:
            out[peer.label] = f"{type(e).__name__}: {e}"

    threads = [threading.Thread(target=one, args=(k, *it)) for k, it in enumerate(started)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for peer, _ in started:
        peer.stop(timeout=60)
        r = out.get(peer.label, "no result")
        if isinstance(r, str):
            results.fail("restart", peer.label, r)
        else:
            results.add_row("restart", _row(peer.label, r))


def _row(label: str, r: RestartSamples) -> dict[str, object]:
    lat = r.latency_ms

    def q(v: list[float], p: float) -> float:
        return round(percentile(v, p), 2)

    return {
        "peer": label, "samples": len(lat), "p50 ms": q(lat, 50), "p90 ms": q(lat, 90),
        "p99 ms": q(lat, 99), "max ms": round(max(lat, default=math.nan), 2),
        "min ms": round(min(lat, default=math.nan), 2),
        "kill->exit p50 ms": q(r.kill_to_exit_ms, 50),
        "exit->exec p50 ms": q(r.exit_to_exec_ms, 50),
        "exit->exec p99 ms": q(r.exit_to_exec_ms, 99), "failures": r.failures,
    }


def run_peer(
    peer: Peer, cs: ColdStart, listener: ProcListener, kills: int, turn: Turn, seed: int
) -> RestartSamples:
    """Kill the running children of ``peer`` ``kills`` times, the most overdue first."""
    rng = random.Random(seed)
    out = RestartSamples()
    watch: set[int] = set()
    marks = set(cs.pids)

    def accept(e: ProcEvent) -> bool:
        return (is_sleep_exec(e) and e.argv[-1] in marks) or (e.kind == "exit" and e.pid in watch)

    def due(born_ns: int) -> float:
        return born_ns / 1e9 + peer.restart_min_wait + rng.uniform(0, 1)

    # marker -> (pid, when it may be killed)
    kids = {m: (cs.pids[m], due(cs.exec_ts[m])) for m in sorted(marks)}
    with listener.subscribe(accept) as sub:
        while len(out.latency_ms) + out.failures < kills:
            marker = min(kids, key=lambda m: kids[m][1])
            pid, when = kids[marker]
            time.sleep(max(0.0, when - time.monotonic()))
            watch.add(pid)
            sub.drain()
            got_turn = turn.lock.acquire(timeout=30)
            try:
                t_kill = time.monotonic_ns()
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                new, exit_ts = _await_exec(sub, pid, marker, TURN_HOLD_S)
            finally:
                if got_turn:
                    turn.lock.release()
            if new is None:
                new, more_exit = _await_exec(sub, pid, marker, 10.0)
                exit_ts = exit_ts or more_exit
            watch.discard(pid)
            if new is None:
                out.failures += 1
                if not peer.alive() or out.failures >= MAX_FAILURES:
                    raise PeerUnavailableError(
                        f"no restart after {out.failures} kill(s); supervisor "
                        f"{'alive' if peer.alive() else 'gone'}: {peer.supervisor_output()}")
                kids[marker] = (_refind(marker), due(time.monotonic_ns()))
                continue
            out.latency_ms.append((new.ts_ns - t_kill) / 1e6)
            if exit_ts:
                out.kill_to_exit_ms.append((exit_ts - t_kill) / 1e6)
                out.exit_to_exec_ms.append((new.ts_ns - exit_ts) / 1e6)
            kids[marker] = (new.pid, due(new.ts_ns))
    return out


def _await_exec(
    sub: Subscription, old: int, marker: str, timeout: float
) -> tuple[ProcEvent | None, int]:
    """The new child's exec (the last one of its pid) and the old child's exit time."""
    deadline = time.monotonic() + timeout
    exit_ts, found = 0, None
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return found, exit_ts
        ev = sub.get(left)
        if ev is None:
            continue
        if ev.kind == "exit" and ev.pid == old:
            exit_ts = ev.ts_ns
        elif (ev.kind == "exec" and ev.argv[-1] == marker and ev.pid != old
              and (found is None or ev.pid == found.pid)):
            found = ev
            deadline = min(deadline, time.monotonic() + SAME_PID_GRACE_S)


def _refind(marker: str) -> int:
    for _ in range(100):
        pids = procs.pids_matching(lambda a: len(a) >= 2 and a[-1] == marker)
        if pids:
            return pids[0]
        time.sleep(0.05)
    return -1
