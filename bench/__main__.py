"""``python -m bench all [--quick] [--only W,...] [--peers P,...]`` (run from the repo root).

``python -m bench balancer [--quick]``: corral's load balancer against HAProxy (see
bench/balancer.py); it rewrites only its own section of docs/benchmarks.md.

``python -m bench chaos [--minutes N]`` (bench/chaos/: the chaos soak) prints its table and
rewrites its own section.

``python -m bench target [--quick]`` (bench/target.py: ``target plan/set`` at 1,000 processes),
``python -m bench api [--quick]`` (bench/api.py: ``GET /v1/services`` latency, supervisor
RSS under followers) and ``python -m bench cluster [--quick]`` (bench/cluster.py: hosts in
network namespaces joining and leaving the census, RSS with 100 members) likewise rewrite
only their own sections.

``python -m bench busy [--kills N] [--runs R]`` (bench/busy.py: restart latency with every
CPU held by a busy loop, the launcher's SCHED_BATCH against ``CORRAL_LAUNCHER_SCHED=inherit``)
rewrites its own section.

Installs or finds the peers under /tmp/corral-bench (supervisor and circus in their own
venvs, pm2 from npm, s6 and runit from apt, corral from this tree in a venv), runs the
workloads on each and writes docs/benchmarks.md. Needs root (proc connector, apt-get).
Not part of CI. ``--quick`` is meant to finish in under 5 minutes once the peers are
installed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench import report
from bench.peers import PEERS
from bench.results import Results, say
from bench.runner import WORKLOADS, Options, Runner, save_json

ROOT = Path(__file__).resolve().parents[1]


def _csv(choices: list[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = [x.strip() for x in text.split(",") if x.strip()]
        bad = [x for x in items if x not in choices]
        if bad:
            raise argparse.ArgumentTypeError(
                f"unknown: {', '.join(bad)} (choose from {', '.join(choices)})")
        return items
    return parse


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["balancer"]:  # the load balancer against HAProxy (issue 6): bench/balancer.py
        from bench import balancer
        return balancer.main(argv[1:])
    if argv[:1] == ["target"]:  # target plan/set at 1,000 processes (issue 5): bench/target.py
        from bench import target
        return target.main(argv[1:])
    if argv[:1] == ["cluster"]:  # service groups across hosts in namespaces (issue 14)
        from bench import cluster
        return cluster.main(argv[1:])
    if argv[:1] == ["chaos"]:  # faults at random moments, judged by ground truth (issue 15)
        from bench import chaos
        return chaos.main(argv[1:])
    if argv[:1] == ["busy"]:  # restart latency with every CPU busy: the launcher's policy
        from bench import busy
        return busy.main(argv[1:])
    if argv[:1] == ["api"]:  # GET /v1/services latency and RSS under followers (issue 7)
        from bench import api
        return api.main(argv[1:])
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    ap.add_argument("command", choices=["all", "report"],
                    help="all: run the workloads and write the report; "
                         "report: re-render it from a saved results JSON")
    ap.add_argument("results", nargs="?", type=Path, help="for `report`: bench/results/*.json")
    ap.add_argument("--quick", action="store_true", help="fewer samples, N up to 1,000")
    ap.add_argument("--only", type=_csv(WORKLOADS), default=list(WORKLOADS),
                    help=f"workloads, comma-separated ({','.join(WORKLOADS)})")
    ap.add_argument("--peers", type=_csv(list(PEERS)), default=list(PEERS),
                    help=f"supervisors, comma-separated ({','.join(PEERS)})")
    ap.add_argument("--scratch", type=Path, default=Path("/tmp/corral-bench"),
                    help="where peers are installed and run")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    if args.command == "report":
        if args.results is None:
            ap.error("report needs a results JSON file")
        res = Results.from_json(json.loads(args.results.read_text()))
        report.write(res, args.out)
        say(f"wrote {args.out}")
        return 0
    if os.geteuid() != 0:
        print("bench: needs root (netlink proc connector, apt-get)", file=sys.stderr)
        return 2
    opts = Options(quick=args.quick, only=args.only, peers=args.peers, scratch=args.scratch,
                   seed=args.seed)
    results = Runner(opts).run()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    save_json(results, ROOT / "bench" / "results" / f"{stamp}.json")
    report.write(results, args.out)
    say(f"wrote {args.out} (total {results.options.get('total seconds')} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
