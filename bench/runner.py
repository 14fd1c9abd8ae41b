"""Runs the selected workloads on the selected peers and collects :class:`Results`."""

from __future__ import annotations

import json
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench import sysinfo
from bench.peers import PEERS, Peer, PeerUnavailableError, sleep_service
from bench.peers.corral import Corral
from bench.procconn import ProcListener
from bench.results import Results, say
from bench.workloads import logs, restart, scale, storm, suprestart

WORKLOADS = ["restart", "scale", "logs", "storm", "suprestart"]


@dataclass
class Options:
    quick: bool = False
    only: list[str] = field(default_factory=lambda: list(WORKLOADS))
    peers: list[str] = field(default_factory=lambda: list(PEERS))
    scratch: Path = Path("/tmp/corral-bench")
    seed: int = 1

    @property
    def kills(self) -> int:
        return 50 if self.quick else 100

    @property
    def corral_kills(self) -> int:
        return 50 if self.quick else 200

    @property
    def scale_ns(self) -> list[int]:
        return [100, 1000] if self.quick else [100, 1000, 5000]

    @property
    def idle_s(self) -> float:
        return 10.0 if self.quick else 30.0

    @property
    def log_lines(self) -> int:
        return 2_000_000 if self.quick else 10_000_000

    @property
    def log_budget_s(self) -> float:
        """Stop repeating a log run (3 at most) once the runs took this long."""
        return 2.0 if self.quick else 20.0

    @property
    def storm_s(self) -> float:
        return 15.0 if self.quick else 60.0

    @property
    def extra_sup_kills(self) -> int:
        return 4 if self.quick else 9


class Runner:
    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.results = Results()
        self.classes: dict[str, type[Peer]] = {}

    def make(self, name: str, tag: str, **kw: str) -> Callable[[], Peer]:
        cls = self.classes[name]
        return lambda: cls(self.opts.scratch, tag, **kw)

    def run(self) -> Results:
        t0 = time.monotonic()
        _raise_nofile()
        o, r = self.opts, self.results
        r.machine = sysinfo.machine()
        r.options = {"quick": o.quick, "only": o.only, "peers": o.peers, "seed": o.seed}
        self.install()
        self.describe()
        with ProcListener() as listener:
            for w in WORKLOADS:
                if w in o.only:
                    say(f"{w}: start (load {sysinfo.load_now()})")
                    t = time.monotonic()
                    getattr(self, f"w_{w}")(listener)
                    r.options[f"{w} seconds"] = round(time.monotonic() - t, 1)
                    say(f"{w}: done in {time.monotonic() - t:.0f} s")
            r.options["proc connector overflows"] = listener.overflows
        r.options["total seconds"] = round(time.monotonic() - t0, 1)
        r.machine["load average at end"] = sysinfo.load_now()
        return r

    def install(self) -> None:
        for name in self.opts.peers:
            cls = PEERS[name]
            say(f"install {name}")
            try:
                self.results.versions[name] = cls.install(self.opts.scratch)
                self.classes[name] = cls
            except (PeerUnavailableError, OSError) as e:
                self.results.fail("all", name, f"install failed: {e}")

    def describe(self) -> None:
        """Exact configs and commands, rendered for 2 sleeps and for the log writer."""
        for name in self.classes:
            variants = [self.make(name, "example")()]
            if name == "corral":
                variants.append(self.make(name, "example", log_format="raw")())
            for peer in variants:
                sleeps = [sleep_service(i, 10_000_000 + i) for i in range(2)]
                writer = logs.writer_service(self.opts.scratch / "lines-N.bin",
                                             peer.root / "ready")
                peer.services = sleeps
                files = {f"{k} (2 sleeps)": v for k, v in peer.render(sleeps).items()}
                files |= {f"{k} (log writer)": v for k, v in peer.render([writer]).items()
                          if k not in {"logs/.keep"}}
                self.results.configs[peer.label] = {
                    k: v for k, v in files.items() if not k.startswith("specs/") and v
                }
                self.results.commands[peer.label] = [
                    "start: " + " ".join(peer.launch_argv()),
                    "status: " + " ".join(peer.status_argv()),
                    "stop: " + _stop_doc(peer),
                ]

    # ----- workloads ------------------------------------------------------------
    def ordered(self) -> list[str]:
        """corral first; circus (busy while idle at check_delay 0.01) last."""
        names = [n for n in self.classes if n != "circus"]
        return names + (["circus"] if "circus" in self.classes else [])

    def w_restart(self, listener: ProcListener) -> None:
        peers = [self.make(n, "restart")() for n in self.ordered()]
        kills = {p.label: (self.opts.corral_kills if p.name == "corral" else self.opts.kills)
                 for p in peers}
        restart.run(peers, listener, kills, self.opts.seed, self.results,
                    services=2 if self.opts.quick else 1)

    def w_scale(self, listener: ProcListener) -> None:
        names = self.ordered()
        quiet = [p for p in names if p != "circus"]
        busy = [p for p in names if p == "circus"]  # busy while idle: last of all
        jobs = [(self.make(p, f"scale{n}"), n) for group in (quiet, busy)
                for n in self.opts.scale_ns for p in group]
        scale.run(jobs, listener, self.opts.idle_s, self.results, quick=self.opts.quick)

    def w_logs(self, listener: ProcListener) -> None:
        lines = self.opts.log_lines
        logs.baseline(self.opts.scratch, lines, self.results)
        for name in self.ordered():
            if name == "corral":
                for fmt in ("stamped", "raw"):
                    say(f"logs: corral {fmt}")
                    logs.measure(self.make(name, f"logs-{fmt}", log_format=fmt)(), lines, fmt,
                                 self.results, budget_s=self.opts.log_budget_s)
            else:
                say(f"logs: {name}")
                logs.measure(self.make(name, "logs")(), lines, "raw", self.results,
                             budget_s=self.opts.log_budget_s)

    def w_storm(self, listener: ProcListener) -> None:
        for name in self.ordered():
            say(f"storm: {name}")
            storm.run(self.make(name, "storm"), self.opts.storm_s, listener, self.results)

    def w_suprestart(self, listener: ProcListener) -> None:
        if "corral" not in self.classes:
            return
        peer = self.make("corral", "suprestart")()
        assert isinstance(peer, Corral)
        suprestart.run(peer, self.opts.log_lines, self.opts.extra_sup_kills, listener,
                       self.results)


def _stop_doc(peer: Peer) -> str:
    doc = {
        "pm2": "pm2 kill",
        "runit": "SIGHUP to runsvdir (TERM to every runsv)",
    }
    return doc.get(peer.name, "SIGTERM to the supervisor")


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 262144
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), max(hard, want)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def save_json(results: Results, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results.to_json(), indent=1, default=str))

