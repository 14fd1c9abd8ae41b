"""``python -m bench busy [--kills N] [--runs R]``: restart latency with every CPU busy.

The launcher runs ``SCHED_BATCH`` (``src/corral/launcher/sched.py``): it never preempts a
dying service, which takes ~0.1 ms off an idle host's restart, but on a CPU that a busy
task holds it waits for the end of that task's slice.  This measures that price: one
corral from this tree with one ``sleep`` service, one busy loop per CPU started outside
it (``python -c "while 1: pass"``), then ``--kills`` SIGKILLs of the service (0.2 s +
uniform(0, 0.3) s apart), latency = the kernel's exec timestamp of the new ``sleep`` minus
``time.monotonic_ns()`` just before the kill, as in the restart workload.  Runs alternate
between the default (``batch``) and ``CORRAL_LAUNCHER_SCHED=inherit`` (the launcher keeps
the default policy), ``--runs`` of each.  Needs root (proc connector).

Writes ``bench/results/busy-<stamp>.json`` and the "Restart with every CPU busy" section of
``docs/benchmarks.md`` (replacing only that section).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import sysinfo
from bench.page import ROOT, publish
from bench.peers.base import sleep_service
from bench.peers.corral import Corral
from bench.procconn import ProcListener
from bench.workloads.common import allocate_markers, cold_start, is_sleep_exec, percentile

BEGIN = "<!-- busy:begin -->"
END = "<!-- busy:end -->"
POLICIES = ("batch", "inherit")


class _Corral(Corral):
    """corral with ``CORRAL_LAUNCHER_SCHED`` set for its launcher."""

    def __init__(self, scratch: Path, tag: str, policy: str) -> None:
        self.policy = policy
        super().__init__(scratch, tag)

    def env(self) -> dict[str, str]:
        return {**super().env(), "CORRAL_LAUNCHER_SCHED": self.policy}


def one_run(scratch: Path, listener: ProcListener, policy: str, kills: int,
            seed: int) -> list[float]:
    """Restart latencies (ms) of ``kills`` kills with one busy loop per CPU."""
    peer = _Corral(scratch, f"busy-{policy}-{seed}", policy)
    marker = str(allocate_markers(1)[0])
    cs = cold_start(peer, [sleep_service(0, int(marker))], listener, timeout=60)
    pid = cs.pids[marker]
    hogs = [subprocess.Popen([sys.executable, "-c", "while 1: pass"])
            for _ in range(os.cpu_count() or 1)]
    rng = random.Random(seed)
    out: list[float] = []
    try:
        time.sleep(1.0)  # the loops settle on their CPUs
        with listener.subscribe(lambda e: is_sleep_exec(e) and e.argv[-1] == marker) as sub:
            for _ in range(kills):
                time.sleep(0.2 + rng.uniform(0, 0.3))
                sub.drain()
                t_kill = time.monotonic_ns()
                os.kill(pid, signal.SIGKILL)
                ev = sub.get(10)
                if ev is None:
                    raise RuntimeError(f"no restart within 10 s ({policy}): "
                                       + peer.supervisor_output())
                out.append((ev.ts_ns - t_kill) / 1e6)
                pid = ev.pid
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
        peer.stop(timeout=60)
        peer.cleanup()
    return out


def run(kills: int, runs: int) -> dict[str, Any]:
    scratch = Path(tempfile.mkdtemp(prefix="busy-", dir="/tmp"))
    machine = sysinfo.machine()
    Corral.install(scratch)
    samples: dict[str, list[list[float]]] = {p: [] for p in POLICIES}
    with ProcListener() as listener:
        for k in range(runs):
            for policy in POLICIES:
                samples[policy].append(one_run(scratch, listener, policy, kills, k))
    return {"machine": machine, "kills": kills, "runs": runs, "samples": samples,
            "load_at_end": sysinfo.load_now()}


def render(res: dict[str, Any]) -> str:
    def q(values: list[float], p: float) -> str:
        return f"{percentile(values, p):.2f}"

    out = [BEGIN, "## Restart with every CPU busy (the launcher's SCHED_BATCH)", "",
           f"One busy loop per CPU outside corral, {res['kills']} kills of a `sleep` service "
           "per run; runs alternate between the launcher's default policy (`batch`) and "
           "`CORRAL_LAUNCHER_SCHED=inherit`.", "",
           "| launcher | run | p50 ms | p90 ms | max ms |", "|---|---:|---:|---:|---:|"]
    for k in range(res["runs"]):
        for policy in POLICIES:
            v = res["samples"][policy][k]
            out.append(f"| {policy} | {k + 1} | {q(v, 50)} | {q(v, 90)} | {max(v):.2f} |")
    m = res["machine"]
    out += ["", "Machine: " + ", ".join(f"{k} {m[k]}" for k in (
        "date (UTC)", "nproc", "cpu", "kernel", "python", "git") if k in m)
        + f"; load average at start {m.get('load average at start')}, at end "
        f"{res.get('load_at_end')}.", "",
        f"Command: `python -m bench busy --kills {res['kills']} --runs {res['runs']}`.", END]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench busy",
        description="restart latency with every CPU held by a busy loop: the launcher's "
                    "SCHED_BATCH against CORRAL_LAUNCHER_SCHED=inherit",
        epilog="example:\n  python -m bench busy --kills 40 --runs 2",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=40, help="kills per run (default 40)")
    ap.add_argument("--runs", type=int, default=2, help="runs of each policy (default 2)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench busy: needs root (netlink proc connector)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    res = run(args.kills, args.runs)
    publish("busy", res, render(res), args.out, BEGIN, END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
