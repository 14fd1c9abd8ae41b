"""``python -m bench balancer [--quick]``: corral's proxy against HAProxy (issue 6).

wrk (Debian) drives one HTTP backend directly, through HAProxy (``mode tcp``, one thread)
and through corral's balancer (``python -m corral.balancer``, uvloop), with keep-alive and
with a new connection per request (``Connection: close``).  Every target sees the same
backend, a small uvloop HTTP responder.  On the 2-core machine the backend is pinned to
CPU 1 and the proxy under test to CPU 0; wrk runs one thread, unpinned.  Each figure is the
median of ``runs`` runs, interleaved across the targets.

Socket mode: a corral from this tree (``python -m corral sup run --state-dir <scratch>``, its
launcher and supervisor pinned to CPU 0) is given a target whose service ``web`` is
``mode: socket`` and whose one process ``receives: [web]`` runs the same backend program, which
takes its listening socket from fd 3 when ``LISTEN_FDS`` is set (systemd's convention).  One
instance, because the direct row has one backend process; it is pinned to CPU 1 like that one.

Writes ``bench/results/balancer-<stamp>.json`` and the "Load balancer" section of
``docs/benchmarks.md`` (replacing only that section; the rest of the page is untouched).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench import sysinfo
from bench.page import ROOT, publish

BEGIN = "<!-- balancer:begin -->"
END = "<!-- balancer:end -->"

BACKEND = r"""
import asyncio, os, sys
try:
    import uvloop
except ImportError:
    uvloop = None
BODY = b"hello from the backend\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nContent-Type: text/plain\r\n\r\n%s" % (
    len(BODY), BODY)
CLOSE = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (
    len(BODY), BODY)
class H(asyncio.Protocol):
    def connection_made(self, t):
        self.t, self.buf = t, b""
    def data_received(self, d):
        buf = self.buf + d
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head, buf = buf[:end], buf[end + 4:]
            if b"lose" in head:  # Connection: close / Connection: Close
                self.t.write(CLOSE)
                self.t.close()
                return
            self.t.write(OK)
        self.buf = buf
async def main():
    loop = asyncio.get_running_loop()
    if os.environ.get("LISTEN_PID") == str(os.getpid()):  # socket activation: fd 3
        import socket
        srv = await loop.create_server(H, sock=socket.socket(fileno=3), backlog=4096)
    else:
        srv = await loop.create_server(H, "127.0.0.1", int(sys.argv[1]), backlog=4096)
    await asyncio.Event().wait()
(uvloop.run if uvloop else asyncio.run)(main())
"""

HAPROXY_CFG = """global
    nbthread 1
    maxconn 4096
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend fe
    bind 127.0.0.1:{port}
    default_backend be
backend be
    server b1 127.0.0.1:{backend}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on {port} after {timeout}s")


def pin(pid: int, cpu: int) -> None:
    if (os.cpu_count() or 1) > cpu:
        os.sched_setaffinity(pid, {cpu})


@contextmanager
def process(argv: list[str], cpu: int | None, **kw: Any) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)
    try:
        if cpu is not None:
            pin(proc.pid, cpu)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


@contextmanager
def haproxy(port: int, backend: int, scratch: Path) -> Iterator[None]:
    cfg = scratch / "haproxy.cfg"
    cfg.write_text(HAPROXY_CFG.format(port=port, backend=backend))
    with process(["haproxy", "-f", str(cfg), "-db"], cpu=0):
        wait_port(port)
        yield


@contextmanager
def corral(port: int, backend: int, scratch: Path) -> Iterator[None]:
    from corral.protocol import framing

    control = scratch / "balancer.sock"
    with process([sys.executable, "-m", "corral.balancer", "--control", str(control)], cpu=0):
        deadline = time.monotonic() + 10
        while True:
            try:
                sock = socket.socket(socket.AF_UNIX)
                sock.connect(str(control))
                break
            except OSError:
                sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        with sock:
            sock.sendall(framing.encode({"id": 1, "type": "configure", "services": [{
                "name": "bench", "host": "127.0.0.1", "port": port,
                "backends": [{"id": "b1", "host": "127.0.0.1", "port": backend}]}]}))
            reply = framing.Decoder().feed(sock.recv(65536))
            if not reply or reply[0]["services"]["bench"] is not None:
                raise RuntimeError(f"corral balancer refused the configuration: {reply}")
            wait_port(port)
            yield


@contextmanager
def direct(port: int, backend: int, scratch: Path) -> Iterator[None]:
    yield


SOCKET_TARGET = """processes:
  - name: backend
    command: [{python}, {program}, "0"]
    receives: [web]
    instances: 1
services:
  - name: web
    on: 127.0.0.1:{port}
    mode: socket
"""


def http_get(port: int) -> bytes:
    """One ``GET /`` on a fresh connection; the raw answer (raises OSError if none)."""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
        return answer


@contextmanager
def socket_mode(port: int, backend: int, scratch: Path) -> Iterator[None]:
    """A fresh corral serving ``port`` in socket mode with one instance of BACKEND.

    ``backend`` (the direct row's process) is not used: the instance is the backend here.
    """
    work = Path(tempfile.mkdtemp(prefix="socket-", dir=scratch))
    state = work / "state"
    program = work / "backend.py"
    program.write_text(BACKEND)
    spec = work / "target.yaml"
    spec.write_text(SOCKET_TARGET.format(python=json.dumps(sys.executable),
                                         program=json.dumps(str(program)), port=port))
    env = {**os.environ, "CORRAL_HOME": str(state), "NO_COLOR": "1"}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "corral", "--state-dir", str(state), *args],
                              capture_output=True, text=True, env=env, timeout=60)

    def pin_to_cpu0() -> None:  # in the child, before exec: inherited by all corral spawns
        pin(0, 0)

    with (work / "launcher.out").open("ab") as out:
        sup = subprocess.Popen([sys.executable, "-m", "corral", "sup", "run", "--state-dir",
                                str(state)], stdout=out, stderr=subprocess.STDOUT, env=env,
                               start_new_session=True, preexec_fn=pin_to_cpu0)
    try:
        until(lambda: cli("sup", "status", "--json").returncode == 0, 60, "corral's API")
        done = cli("target", "set", str(spec))
        if done.returncode != 0:
            raise RuntimeError(f"corral target set: {done.stderr.strip()}")
        # The launcher's socket accepts at once; wait until the instance answers on it.
        until(lambda: b"hello from the backend" in http_get(port), 30,
              "the socket-mode backend to answer")
        status = json.loads(cli("svc", "status", "--json", "backend").stdout)[0]
        pids = [i["pid"] for i in status["instance_list"] if i.get("pid")]
        if len(pids) != 1:
            raise RuntimeError(f"expected one backend instance, corral shows {pids}")
        pin(pids[0], 1)  # where the direct row's backend runs
        yield
    finally:
        sup.send_signal(signal.SIGTERM)
        try:
            sup.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(sup.pid, signal.SIGKILL)
            sup.wait()


def until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` (an OSError counts as "not yet") until true or ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")


TARGETS = {"direct": direct, "haproxy": haproxy, "corral": corral, "socket": socket_mode}
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def wrk(port: int, seconds: int, connections: int, close: bool) -> dict[str, float]:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if close:
        argv += ["-H", "Connection: close"]
    out = subprocess.run([*argv, f"http://127.0.0.1:{port}/"], capture_output=True,
                         text=True, timeout=seconds + 60, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])  # type: ignore[index]
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                       out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "p99_ms": float(p99[1]) * _UNITS[p99[2]] if p99 else float("nan"),
            "errors": (sum(int(x) for x in errors.groups()) if errors else 0)
                      + (int(non2xx[1]) if non2xx else 0)}


def run(quick: bool) -> dict[str, Any]:
    seconds, runs, conns = (5, 1, 50) if quick else (10, 5, 50)
    for tool in ("wrk", "haproxy"):
        if shutil.which(tool) is None:
            raise SystemExit(f"bench balancer: {tool} is not installed "
                             f"(apt-get install {tool})")
    results: dict[str, Any] = {"machine": sysinfo.machine(), "seconds": seconds, "runs": runs,
                               "connections": conns, "versions": versions(), "rows": {}}
    backend_port = free_port()
    with tempfile.TemporaryDirectory(prefix="corral-bench-lb-") as tmp, \
            process([sys.executable, "-c", BACKEND, str(backend_port)], cpu=1):
        wait_port(backend_port)
        for mode, close in (("keep-alive", False), ("connection per request", True)):
            # Runs are interleaved (direct, haproxy, corral, direct, ...) so that a change
            # in the machine's load hits every target alike.
            all_samples: dict[str, list[dict[str, float]]] = {name: [] for name in TARGETS}
            for _ in range(runs):
                for name, target in TARGETS.items():
                    port = backend_port if name == "direct" else free_port()
                    with target(port, backend_port, Path(tmp)):
                        wrk(port, 1, conns, close)  # warm-up
                        all_samples[name].append(wrk(port, seconds, conns, close))
            for name, samples in all_samples.items():
                row = {"rps": statistics.median(s["rps"] for s in samples),
                       "p99_ms": statistics.median(s["p99_ms"] for s in samples),
                       "errors": sum(s["errors"] for s in samples), "samples": samples}
                results["rows"][f"{mode}/{name}"] = row
                print(f"bench balancer: {mode:24} {name:8} {row['rps']:10.0f} req/s  "
                      f"p99 {row['p99_ms']:.2f} ms  errors {row['errors']}", flush=True)
    return results


def versions() -> dict[str, str]:
    def first(argv: list[str]) -> str:
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        except OSError:
            return "not installed"
        return (out.stdout or out.stderr).strip().splitlines()[0]
    try:
        import uvloop
        uv = uvloop.__version__
    except ImportError:
        uv = "not installed"
    return {"wrk": first(["wrk", "--version"]), "haproxy": first(["haproxy", "-v"]),
            "python": sys.version.split()[0], "uvloop": uv}


def render(res: dict[str, Any]) -> str:
    rows = res["rows"]
    out = [BEGIN, "## Load balancer: corral's proxy against HAProxy (issue 6)", "",
           f"wrk, 1 thread, {res['connections']} connections, {res['seconds']} s per run, "
           f"median of {res['runs']} interleaved run(s); one backend (a uvloop HTTP responder pinned to "
           "CPU 1); the proxy under test pinned to CPU 0 (HAProxy `mode tcp`, `nbthread 1`; "
           "corral's balancer on uvloop). Socket mode: a fresh corral from this tree "
           "(`python -m corral sup run --state-dir SCRATCH`, launcher and supervisor pinned to "
           "CPU 0) serves the port with `services: [{name: web, on: 127.0.0.1:PORT, mode: "
           "socket}]` and one process that `receives: [web]`, 1 instance (as many as the "
           "direct row's backend processes) of the same backend program, pinned to CPU 1, "
           "taking its listening socket from fd 3 (`LISTEN_FDS`/`LISTEN_PID`); nothing sits "
           "between wrk and the backend.",
           "", "| mode | target | req/s | p99 ms | errors | req/s vs HAProxy | "
           "p99 vs HAProxy | req/s vs direct |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for mode in ("keep-alive", "connection per request"):
        ha, dr = rows[f"{mode}/haproxy"], rows[f"{mode}/direct"]
        for name in TARGETS:
            r = rows[f"{mode}/{name}"]
            out.append(f"| {mode} | {name} | {r['rps']:,.0f} | {r['p99_ms']:.2f} | "
                       f"{r['errors']} | {r['rps'] / ha['rps']:.2f}x | "
                       f"{r['p99_ms'] / ha['p99_ms']:.2f}x | {r['rps'] / dr['rps']:.2f}x |")
    ka = rows["keep-alive/corral"]["rps"] / rows["keep-alive/haproxy"]["rps"]
    cl = rows["connection per request/corral"]["rps"] / \
        rows["connection per request/haproxy"]["rps"]
    p99 = max(rows[f"{m}/corral"]["p99_ms"] / rows[f"{m}/haproxy"]["p99_ms"]
              for m in ("keep-alive", "connection per request"))
    sock = {m: rows[f"{m}/socket"]["rps"] / rows[f"{m}/direct"]["rps"]
            for m in ("keep-alive", "connection per request")}
    out += ["", "Goals: keep-alive >= 0.8x HAProxy: "
            f"**{ka:.2f}x** ({'met' if ka >= 0.8 else 'not met'}); connection per request "
            f">= 0.6x: **{cl:.2f}x** ({'met' if cl >= 0.6 else 'not met'}); p99 <= 1.5x "
            f"HAProxy's: **{p99:.2f}x** at worst ({'met' if p99 <= 1.5 else 'not met'}); "
            "socket mode >= 0.95x direct: " + "; ".join(
                f"{m} **{r:.2f}x** ({'met' if r >= 0.95 else 'not met'})"
                for m, r in sock.items()) + ".", "",
            "Socket mode against direct, round by round (each interleaved round runs every "
            "target once): " + "; ".join(
                f"{m} " + ", ".join(
                    f"{s['rps'] / d['rps']:.2f}x" for s, d in zip(
                        rows[f"{m}/socket"]["samples"], rows[f"{m}/direct"]["samples"],
                        strict=True))
                for m in sock) + ". Socket mode runs the same backend program on the same "
            "core with nothing in the data path (the kernel hands wrk's connections to it "
            "exactly as in the direct row; corral's launcher and supervisor only sit idle on "
            "CPU 0), so 1x is what to expect: ratios either side of it, and a median above it, "
            "are the shared machine's noise, not a gain or a loss.", "",
            "Machine: " + ", ".join(f"{k} {v}" for k, v in res["machine"].items()
                                    if k in ("date (UTC)", "nproc", "cpu", "kernel", "os",
                                             "load average at start")),
            "", "Caveat: the machine is shared (other sessions build and benchmark on it); "
            "absolute figures move by tens of percent between runs, so compare the ratios "
            "within one run, and rerun before drawing a conclusion from a small difference.",
            "", "Versions: " + "; ".join(f"{k}: {v}" for k, v in res["versions"].items()), "",
            "Profile (py-spy, 2026-11-22, keep-alive under wrk): the balancer's Python time "
            "is almost all in the two `data_received` -> `transport.write` calls (the send "
            "system calls); it stayed below one core, so on this 2-core machine the backend "
            "and wrk bound the keep-alive figures: a ratio above 1x here means corral's proxy "
            "is not the bottleneck at this load, not that it is faster than HAProxy in "
            "general (HAProxy in C has far more headroom per core). With a connection per request, "
            "`create_connection` to the backend is the largest Python cost (about 18% of "
            "samples); the Python backend's accept rate bounds those rows for every target.",
            "", "Commands: `python -m bench balancer" + (" --quick" if res["runs"] == 1 else "")
            + "`; each run is `wrk -t1 -c" + str(res["connections"]) + " -d"
            + str(res["seconds"]) + "s --latency [-H 'Connection: close'] "
            "http://127.0.0.1:PORT/`.", END]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench balancer",
                                 description="corral's load balancer against HAProxy")
    ap.add_argument("--quick", action="store_true", help="one 5 s run per figure")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = ap.parse_args(argv)
    res = run(args.quick)
    publish("balancer", res, render(res), args.out, BEGIN, END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
