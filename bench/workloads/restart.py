"""Restart latency: SIGKILL of a long-running child -> exec of its replacement.

Every peer runs one ``sleep <marker>`` service, all peers at once, each in its own
thread. Before each kill the child has lived ``restart_min_wait`` (0.3 s; 1.1 s for
s6/runit, whose throttles target children younger than 1 s) + uniform(0, 1) s, so that
periodic loops are not hit at a fixed phase. Kills are serialized across peers: a kill
is only sent while no other kill of the last 50 ms is still waiting for its exec, so two
restarts practically never compete for the CPU (a slow peer, e.g. supervisord's 1 s loop,
releases the turn after 50 ms). Latency = kernel exec timestamp of the new ``sleep``
minus ``time.monotonic_ns()`` just before ``kill``; both are CLOCK_MONOTONIC.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
from dataclasses import dataclass, field

from bench import procs
from bench.peers.base import Peer, sleep_service
from bench.procconn import ProcEvent, ProcListener, Subscription
from bench.workloads.common import allocate_markers, cold_start, is_sleep_exec

TURN_HOLD_S = 0.05  # a kill keeps the turn at most this long
SAME_PID_GRACE_S = 0.005  # s6/runit: `sh ./run` execs `sleep` in the same pid


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


def run_peer(
    peer: Peer, listener: ProcListener, kills: int, turn: Turn, seed: int,
    stop: threading.Event,
) -> RestartSamples:
    """Start ``peer`` with one service and kill its child ``kills`` times."""
    rng = random.Random(seed)
    marker = str(allocate_markers(1)[0])
    svc = sleep_service(0, int(marker))
    out = RestartSamples()
    watch: set[int] = set()

    def accept(e: ProcEvent) -> bool:
        return (is_sleep_exec(e) and e.argv[-1] == marker) or (e.kind == "exit" and e.pid in watch)

    with listener.subscribe(accept) as sub:
        cs = cold_start(peer, [svc], listener, timeout=30)
        pid, born = cs.pids[marker], cs.exec_ts[marker]
        while len(out.latency_ms) + out.failures < kills and not stop.is_set():
            due = born / 1e9 + peer.restart_min_wait + rng.uniform(0, 1)
            time.sleep(max(0.0, due - time.monotonic()))
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
                pid, born = _refind(peer, marker, listener), time.monotonic_ns()
                continue
            out.latency_ms.append((new.ts_ns - t_kill) / 1e6)
            if exit_ts:
                out.kill_to_exit_ms.append((exit_ts - t_kill) / 1e6)
                out.exit_to_exec_ms.append((new.ts_ns - exit_ts) / 1e6)
            pid, born = new.pid, new.ts_ns
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
        elif ev.kind == "exec" and ev.pid != old and (found is None or ev.pid == found.pid):
            found = ev
            deadline = min(deadline, time.monotonic() + SAME_PID_GRACE_S)


def _refind(peer: Peer, marker: str, listener: ProcListener) -> int:
    for _ in range(100):
        pids = procs.pids_matching(lambda a: len(a) >= 2 and a[-1] == marker)
        if pids:
            return pids[0]
        time.sleep(0.05)
    return -1
