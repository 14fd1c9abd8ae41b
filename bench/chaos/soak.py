"""The chaos soak: a corral with four processes, traffic, and faults at random moments.

The world (:class:`World`): a corral from this tree (``python -m corral sup run --state-dir
STATE --target FILE``) whose ``STATE/logs`` is a small tmpfs of its own, running

- ``counter``: prints numbered lines (``000000042 counter``) at a steady rate, each with
  one ``write``, and keeps how many it wrote in a file of its own (outside the tmpfs);
- ``web`` (2 instances): a small HTTP server behind corral's balancer (proxy mode, on a
  free loopback port); its health check is an exec check that fails while the file
  ``sick-<instance>`` exists, with ``restart_on_unhealthy: false``: a flap moves traffic,
  never restarts it.  Only instance 0 is ever flapped, so one healthy backend always remains;
- ``crash``: a bash script that lives 0.3-0.7 s and exits 3, restarted at once by its policy
  (``cooldown`` below its life, so no backoff is due);
- ``churn``: ``sleep`` instances the soak scales (``svc scale``) and rolls out (``target
  set`` with a changed variable; health-gated, start-first), so that state writes and
  rollouts are in flight when the supervisor is killed.

Each service writes its pid to ``starts`` when it starts: the ground truth for restarts.
Two client threads send ``GET /`` through the balancer (a new connection each, at most
``rate`` a second each); a request fails on a connection error, a timeout or a non-2xx.

The faults, one at a time, drawn from a seeded generator, with a pause of 0.3-1.5 s between:
``kill`` (SIGKILL the supervisor), ``kill-write`` (send ``svc scale churn N`` or a ``target
set`` over the API and SIGKILL the supervisor as soon as a state file's temporary file
appears, or after a random delay), ``kill-rollout`` (start a rollout of ``churn``, SIGKILL
0-1 s later), ``kill-young`` (SIGKILL the next supervisor again 0-0.5 s after it starts:
during its reattach), ``stop`` (SIGSTOP it for 1-4 s, then SIGCONT), and two that last
1-4 s while the others go on: ``fill`` (fill the log tmpfs to the last byte, then free it)
and ``flap`` (make web/0's health check fail, then pass).  After every kill, every state
file is loaded with corral's own readers.
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.chaos import truth
from bench.target import Corral, wait

COUNTER = r"""
import os, sys, time
rate, stop, count_dir, starts = float(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
pid = os.getpid()
with open(starts, "a") as f:
    f.write("counter %d\n" % pid)
count = os.open(os.path.join(count_dir, "counter.%d" % pid), os.O_WRONLY | os.O_CREAT, 0o644)
n = 0
t0 = time.monotonic()
while not os.path.exists(stop):
    line = b"%09d counter\n" % n
    os.write(1, line)
    n += 1
    os.pwrite(count, b"%012d\n" % n, 0)
    delay = t0 + n / rate - time.monotonic()
    if delay > 0:
        time.sleep(delay)
while True:
    time.sleep(3600)
"""

WEB = r"""
import http.server, os, sys
starts = sys.argv[1]
with open(starts, "a") as f:
    f.write("web%s %d\n" % (os.environ["CORRAL_INSTANCE"], os.getpid()))
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["SERVICE_PORT_WEB"])),
                                         Handler)
server.daemon_threads = True
server.serve_forever()
"""

# bash: no fork at all (read -t on a FIFO opened read-write is the sleep), so its start
# and exit times are its own.
CRASH = r"""
echo "start $$ $EPOCHREALTIME" >> "$1/crash.times"
RANDOM=$$
read -t "0.$((RANDOM % 5 + 3))" <> "$1/crash.fifo"
echo "exit $$ $EPOCHREALTIME" >> "$1/crash.times"
exit 3
"""


def target_yaml(w: World, churn_round: int, churn_instances: int) -> str:
    d = w.dir
    py = json.dumps(sys.executable)
    return f"""\
processes:
  - name: counter
    command: [{py}, {json.dumps(str(d / 'counter.py'))}, "{w.opts.rate}",
              {json.dumps(str(d / 'stop-counter'))}, {json.dumps(str(d))},
              {json.dumps(str(d / 'starts'))}]
    logs: {{format: stamped, max_bytes: 256KiB, keep: 100}}
    stop: {{timeout: 2s}}
  - name: web
    command: [{py}, {json.dumps(str(d / 'web.py'))}, {json.dumps(str(d / 'starts'))}]
    instances: 2
    receives: [web]
    readiness: health
    health:
      exec: [/bin/sh, -c, 'test ! -e {d}/sick-$CORRAL_INSTANCE']
      interval: 0.5s
      retries: 1
      restart_on_unhealthy: false
    stop: {{timeout: 2s}}
  - name: crash
    command: [/bin/bash, {json.dumps(str(d / 'crash.sh'))}, {json.dumps(str(d))}]
    restart: {{policy: always, cooldown: 0.2s, backoff_min: 0s}}
    stop: {{timeout: 2s}}
  - name: churn
    command: [/bin/sleep, "3600"]
    env: {{ROUND: "{churn_round}"}}
    instances: {churn_instances}
    readiness: health
    health: {{exec: [/bin/true], interval: 0.2s, retries: 1}}
    stop: {{timeout: 2s}}
services:
  - name: web
    on: 127.0.0.1:{w.port}
"""


@dataclass
class Options:
    """What :func:`run` does: for how long, in what order (``seed``), at what rates."""

    seconds: float = 600.0
    seed: int = 1
    rate: int = 200              # counter lines a second
    request_rate: int = 25       # requests a second, per client thread
    clients: int = 2
    proc_connector: bool = True  # crash-looper exits/execs from the kernel's proc connector
    scratch: Path | None = None
    say: Callable[[str], None] = lambda _line: None


@dataclass
class Fault:
    """One fault done: what, when (it lasts until a supervisor answers again, for the
    kills and stops), and what it met."""

    kind: str
    t0: float                    # monotonic seconds since the soak began
    t1: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)
    mono: tuple[int, int] = (0, 0)   # monotonic ns (start, end)
    wall: tuple[int, int] = (0, 0)   # wall ns (start, end)


def free_port() -> int:
    """A free loopback port in 20000-29999: below the kernel's ephemeral ports (an outgoing
    connection can take one of those at any moment) and corral's instance ports (30000-)."""
    pick = random.Random()  # not the soak's generator: its sequence stays the faults'
    for _ in range(200):
        port = pick.randrange(20000, 30000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000-29999")


@contextlib.contextmanager
def tmpfs(where: Path, size_mib: int) -> Iterator[Path]:
    """A tmpfs of ``size_mib`` MiB mounted on ``where``; always unmounted on the way out."""
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m,mode=0755", "tmpfs",
                    str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(directory: Path) -> Path:
    """Fill the file system under ``directory`` to the last byte; return the filler."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    block = b"\0" * 65536
    try:
        while True:
            try:
                if os.write(fd, block) == 0:
                    break
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                if len(block) == 1:
                    break
                block = block[:len(block) // 2]
    finally:
        os.close(fd)
    return filler


def children_of(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(x) for x in f.read().split()]
    return out


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def get_ok(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/")
        resp = conn.getresponse()
        resp.read()
        return 200 <= resp.status < 300
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


class Traffic:
    """Client threads sending ``GET /`` to the balancer, each on a new connection."""

    def __init__(self, port: int, rate: int, threads: int) -> None:
        self.port, self.rate = port, rate
        self.ok = self.failed = 0
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            if t.is_alive():
                t.join(30)

    def _run(self) -> None:
        while not self._stop.is_set():
            t = time.monotonic()
            err = None
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            try:
                conn.request("GET", "/")
                resp = conn.getresponse()
                resp.read()
                if not 200 <= resp.status < 300:
                    err = f"HTTP {resp.status}"
            except (OSError, http.client.HTTPException) as exc:
                err = f"{type(exc).__name__}: {exc}"
            finally:
                conn.close()
            with self._lock:
                if err is None:
                    self.ok += 1
                else:
                    self.failed += 1
                    if len(self.failures) < 20:
                        self.failures.append(f"t={t - self._t0:.2f}s {err}")
            self._stop.wait(max(0.0, 1 / self.rate - (time.monotonic() - t)))


class World:
    """The corral under test, its services' files, and the faults done to it."""

    def __init__(self, opts: Options, scratch: Path) -> None:
        self.opts = opts
        self.dir = scratch / "world"
        self.dir.mkdir(parents=True)
        self.corral = Corral(scratch)
        self.state = self.corral.state
        self.logs = self.state / "logs"
        self.port = free_port()
        self.rng = random.Random(opts.seed)
        self.t0 = time.monotonic()
        self.t0_mono, self.t0_wall = time.monotonic_ns(), time.time_ns()
        self.churn_round = 0
        self.churn_instances = 1
        self.faults: list[Fault] = []
        self.kills = 0
        self.kills_mid_write = 0
        self.state_loads = 0
        self.state_files_loaded = 0
        self.state_problems: list[str] = []
        self.requests: dict[str, int] = {}
        self.recovery_s: list[float] = []
        self.filler: Path | None = None
        self.conditions: list[tuple[float, Fault, Callable[[], None]]] = []
        for name, text in (("counter.py", COUNTER), ("web.py", WEB), ("crash.sh", CRASH)):
            (self.dir / name).write_text(text)
        os.mkfifo(self.dir / "crash.fifo")
        (self.dir / "starts").touch()
        (self.dir / "crash.times").touch()

    # ----- the corral ------------------------------------------------------------
    @property
    def launcher_pid(self) -> int:
        assert self.corral.proc is not None
        return self.corral.proc.pid

    def supervisor_pid(self) -> int | None:
        """The launcher's child running ``corral.supervisor``, from /proc."""
        for pid in children_of(self.launcher_pid):
            if "corral.supervisor" in cmdline(pid):
                return pid
        return None

    def request(self, method: str, path: str, body: Any = None,
                timeout: float = 30) -> tuple[int, bytes]:
        """One request on a new connection to ``api.sock``; OSError or HTTPException when
        the supervisor is not there or goes away."""
        conn = _UnixConnection(str(self.state / "api.sock"), timeout)
        try:
            data = None if body is None else json.dumps(body).encode()
            conn.request(method, path, body=data,
                         headers={"Content-Type": "application/json"} if data else {})
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def answers(self) -> bool:
        try:
            return self.request("GET", "/v1/status", timeout=5)[0] == 200
        except (OSError, http.client.HTTPException):
            return False

    def wait_answers(self, timeout: float = 60) -> float:
        t = time.monotonic()
        wait(self.answers, timeout, "the supervisor's API", interval=0.02)
        return time.monotonic() - t

    def services(self) -> dict[str, Any]:
        status, raw = self.request("GET", "/v1/services")
        if status != 200:
            raise RuntimeError(f"GET /v1/services: HTTP {status}")
        return {s["name"]: s for s in json.loads(raw)}

    def starts(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for line in (self.dir / "starts").read_text().splitlines():
            who, pid = line.split()
            out.setdefault(who, []).append(int(pid))
        return out

    def crash_starts(self) -> int:
        return sum(1 for line in (self.dir / "crash.times").read_text().splitlines()
                   if line.startswith("start "))

    def counts(self) -> dict[int, int]:
        out = {}
        for p in self.dir.glob("counter.*"):
            if p.suffix[1:].isdigit():
                text = p.read_text().strip()
                out[int(p.suffix[1:])] = int(text) if text else 0
        return out

    def start(self) -> None:
        target = self.dir / "target.yaml"
        target.write_text(target_yaml(self, self.churn_round, self.churn_instances))
        self.corral.extra = ["--target", str(target)]
        self.corral.env.pop("INVOCATION_ID", None)
        self.corral.env.pop("NOTIFY_SOCKET", None)
        self.corral.start()

        def ready() -> bool:
            s = self.services()
            web = [i["health"] for i in s["web"]["instance_list"]]
            if (all(s[n]["state"] == "up" for n in ("counter", "web", "churn"))
                    and web == ["ok", "ok"] and self.crash_starts() >= 2
                    and get_ok(self.port)):
                return True
            raise RuntimeError(", ".join(f"{n} {s[n]['state']}" for n in s) + f"; web {web}")
        try:
            wait(ready, 60, "every service to be up, and an answer through the balancer")
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}; {json.dumps(_diagnose(self))}") from None

    # ----- faults ------------------------------------------------------------------
    def _now(self) -> float:
        return round(time.monotonic() - self.t0, 3)

    def _begin(self, kind: str, **detail: Any) -> Fault:
        f = Fault(kind, self._now(), detail=detail,
                  mono=(time.monotonic_ns(), 0), wall=(time.time_ns(), 0))
        self.faults.append(f)
        return f

    @staticmethod
    def _end(f: Fault, t0: float) -> None:
        f.t1 = round(time.monotonic() - t0, 3)
        f.mono = (f.mono[0], time.monotonic_ns())
        f.wall = (f.wall[0], time.time_ns())

    def _kill(self, f: Fault, pid: int) -> None:
        """SIGKILL the supervisor ``pid``, then load every state file as it left them."""
        os.kill(pid, signal.SIGKILL)
        self.kills += 1
        wait(lambda: not alive(pid), 10, f"supervisor {pid} to die", interval=0.001)
        temps = [t for t in truth.leftover_temp_files(self.state) if t.endswith(f"tmp{pid}")]
        if temps:
            self.kills_mid_write += 1
            f.detail["mid_write"] = temps
        loaded, problems = truth.load_state_files(self.state)
        self.state_loads += 1
        self.state_files_loaded += loaded
        self.state_problems += [f"after kill at {f.t0}s: {p}" for p in problems]

    def _recover(self, f: Fault) -> None:
        """Wait until a supervisor answers again: the fault lasts until then."""
        took = self.wait_answers()
        self.recovery_s.append(took)
        f.detail["answers_after_s"] = round(took, 3)

    def fault_kill(self) -> None:
        f = self._begin("kill")
        pid = self.supervisor_pid()
        if pid is not None:
            self._kill(f, pid)
        self._recover(f)
        self._end(f, self.t0)

    def fault_kill_young(self) -> None:
        f = self._begin("kill-young")
        pid = self.supervisor_pid()
        if pid is not None:
            self._kill(f, pid)
            young = wait(lambda: (p := self.supervisor_pid()) not in (None, pid) and p, 30,
                         "a new supervisor", interval=0.001)
            delay = self.rng.uniform(0, 0.5)
            time.sleep(delay)  # a random moment of its start-up and reattach
            f.detail["after_s"] = round(delay, 3)
            self._kill(f, young)
        self._recover(f)
        self._end(f, self.t0)

    def _send(self, method: str, path: str, body: Any) -> threading.Thread:
        """Send a request in a thread (its answer, if any, is counted by status)."""
        def run() -> None:
            try:
                status, _ = self.request(method, path, body)
                key = f"{method} {path} {status}"
            except (OSError, http.client.HTTPException) as exc:
                key = f"{method} {path} cut ({type(exc).__name__})"
            self.requests[key] = self.requests.get(key, 0) + 1
        t = threading.Thread(target=run, daemon=True)
        t.start()
        return t

    def _target_body(self) -> dict[str, Any]:
        return {"yaml": target_yaml(self, self.churn_round, self.churn_instances),
                "source": "chaos"}

    def fault_kill_write(self) -> None:
        pid = self.supervisor_pid()
        if pid is None:
            return
        if self.rng.random() < 0.5:
            self.churn_instances = self.rng.randint(1, 3)
            f = self._begin("kill-write", request=f"svc scale churn {self.churn_instances}")
            sender = self._send("POST", "/v1/services/churn/scale",
                                {"instances": self.churn_instances})
        else:
            self.churn_round += 1
            f = self._begin("kill-write", request=f"target set (churn round {self.churn_round})")
            sender = self._send("PUT", "/v1/target", self._target_body())
        deadline = time.monotonic() + self.rng.uniform(0.005, 0.3)
        suffix = f"tmp{pid}"
        places = [self.state, self.state / "run"]
        while time.monotonic() < deadline:
            if any(n.endswith(suffix) for d in places for n in _listdir(d)):
                break
        self._kill(f, pid)
        sender.join(30)
        self._recover(f)
        self._end(f, self.t0)

    def fault_kill_rollout(self) -> None:
        self.churn_round += 1
        f = self._begin("kill-rollout", request=f"target set (churn round {self.churn_round})")
        sender = self._send("PUT", "/v1/target", self._target_body())
        sender.join(30)
        delay = self.rng.uniform(0, 1.0)
        time.sleep(delay)  # a random moment of the rollout
        f.detail["after_s"] = round(delay, 3)
        pid = self.supervisor_pid()
        if pid is not None:
            self._kill(f, pid)
        self._recover(f)
        self._end(f, self.t0)

    def fault_stop(self) -> None:
        pid = self.supervisor_pid()
        if pid is None:
            return
        hold = self.rng.uniform(1, 4)
        f = self._begin("stop", seconds=round(hold, 2))
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(hold)  # the fault itself: the supervisor stays stopped this long
        finally:
            os.kill(pid, signal.SIGCONT)
        self._recover(f)
        self._end(f, self.t0)

    def fault_fill(self) -> None:
        if self.filler is not None:
            return
        hold = self.rng.uniform(1, 4)
        f = self._begin("fill", seconds=round(hold, 2))
        self.filler = fill(self.logs)

        def free() -> None:
            if self.filler is not None:
                self.filler.unlink()
                self.filler = None
        self.conditions.append((time.monotonic() + hold, f, free))

    def fault_flap(self) -> None:
        sick = self.dir / "sick-0"
        if sick.exists():
            return
        hold = self.rng.uniform(1, 4)
        f = self._begin("flap", seconds=round(hold, 2))
        sick.touch()
        self.conditions.append((time.monotonic() + hold, f, lambda: sick.unlink()))

    def end_conditions(self, everything: bool = False) -> None:
        now = time.monotonic()
        for item in list(self.conditions):
            due, f, end = item
            if everything or due <= now:
                end()
                self._end(f, self.t0)
                self.conditions.remove(item)

    FAULTS = [("kill", 3), ("kill_write", 4), ("kill_rollout", 2), ("kill_young", 1),
              ("stop", 2), ("fill", 2), ("flap", 2)]

    def chaos(self, seconds: float) -> None:
        names = [n for n, _ in self.FAULTS]
        weights = [w for _, w in self.FAULTS]
        end = time.monotonic() + seconds
        first = list(names)  # each kind once first (in a random order), then by weight
        self.rng.shuffle(first)
        while time.monotonic() < end:
            self.end_conditions()
            name = first.pop() if first else self.rng.choices(names, weights)[0]
            getattr(self, f"fault_{name}")()
            self.opts.say(f"t={self._now():7.1f}s {name}")
            pause = self.rng.uniform(0.3, 1.5)
            time.sleep(pause)  # the pace of the faults
        self.end_conditions(everything=True)


class _UnixConnection(http.client.HTTPConnection):
    """``http.client`` over ``api.sock``; the socket is closed when the connect fails."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("corral", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def _listdir(d: Path) -> list[str]:
    try:
        return os.listdir(d)
    except OSError:
        return []


@dataclass
class Outcome:
    """Everything the soak measured; :meth:`as_dict` is the ``--json`` document."""

    seconds: float = 0.0
    seed: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    kills: int = 0
    kills_mid_write: int = 0
    corral_restarts: int = 0
    restarts_by_service: dict[str, int] = field(default_factory=dict)
    not_running_at_end: list[str] = field(default_factory=list)
    log: dict[str, Any] = field(default_factory=dict)
    requests_ok: int = 0
    requests_failed: int = 0
    request_failures: list[str] = field(default_factory=list)
    state_loads: int = 0
    state_files_loaded: int = 0
    state_files_unloadable: int = 0
    state_problems: list[str] = field(default_factory=list)
    leftover_temp_files: list[str] = field(default_factory=list)
    crash_restarts: int = 0
    down_method: str = ""
    down_max_ms: float = 0.0
    down_p50_ms: float = 0.0
    down_max_quiet_ms: float = 0.0
    down_max_cause: str = ""
    down_worst: list[dict[str, Any]] = field(default_factory=list)
    down_by_cause: dict[str, dict[str, float]] = field(default_factory=dict)
    supervisor_answers_max_s: float = 0.0
    chaos_requests: dict[str, int] = field(default_factory=dict)
    diagnostics: dict[str, Any] = field(default_factory=dict)
    fault_log: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def correct(self) -> bool:
        """The correctness outcomes the CI test asserts."""
        return (self.corral_restarts == 0 and not self.not_running_at_end
                and self.log.get("lost") == 0 and self.log.get("duplicated") == 0
                and self.log.get("torn") == 0 and self.requests_failed == 0
                and self.state_files_unloadable == 0)


def run(opts: Options) -> Outcome:
    """Run the soak for ``opts.seconds``; everything it started is gone when it returns."""
    base = opts.scratch or Path(tempfile.mkdtemp(prefix="chaos-", dir="/tmp"))
    base.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="soak-", dir=base))
    w = World(opts, scratch)
    # The counter's log grows by about 0.65 MiB a minute; the rest is the launcher's own log.
    size = 8 + int(opts.seconds / 60) + 1
    listener = None
    sub = None
    crash_pids: set[int] = set()
    marker = str(w.dir / "crash.sh")
    if opts.proc_connector:
        try:
            from bench.procconn import ProcListener
            listener = ProcListener().__enter__()

            def accept(e: Any) -> bool:
                if e.kind == "exec" and marker in e.argv:
                    crash_pids.add(e.pid)
                    return True
                if e.kind == "exit" and e.pid in crash_pids:
                    crash_pids.discard(e.pid)  # its pid may be given to another process
                    return True
                return False
            sub = listener.subscribe(accept)
        except OSError as exc:
            opts.say(f"no proc connector ({exc}): the crash-looper's own times are used")
            listener = None
    out = Outcome(seed=opts.seed)
    traffic = Traffic(0, opts.request_rate, opts.clients)
    try:
        with tmpfs(w.logs, size):
            try:
                w.start()
                opts.say(f"up: launcher {w.launcher_pid}, balancer on 127.0.0.1:{w.port}")
                traffic.port = w.port
                traffic.start()
                w.t0, w.t0_mono, w.t0_wall = time.monotonic(), time.monotonic_ns(), time.time_ns()
                try:
                    w.chaos(opts.seconds)
                finally:
                    w.end_conditions(everything=True)
                    pid = w.supervisor_pid()
                    if pid is not None:
                        os.kill(pid, signal.SIGCONT)
                out.seconds = round(time.monotonic() - w.t0, 1)
                w.wait_answers()
                if traffic.failed:
                    out.diagnostics = _diagnose(w)
                traffic.stop()
                _finish(w, out, traffic)
                if sub is not None:
                    evs = [(e.ts_ns, "start" if e.kind == "exec" else "exit", e.pid)
                           for e in sub.drain()]
                    _downtime(w, out, evs, "the kernel's proc connector (the timestamps of the "
                              "crash-looper's exit and of the next one's exec)", wall=False)
                else:
                    _downtime(w, out, _crash_times(w), "the crash-looper's own times "
                              "(bash $EPOCHREALTIME at its start and just before exit)",
                              wall=True)
            finally:
                traffic.stop()
                w.corral.stop()
    finally:
        if listener is not None:
            listener.close()
    return out


def _finish(w: World, out: Outcome, traffic: Traffic) -> None:
    """Let the counter stop, wait until its log accounts for every line, then judge."""
    (w.dir / "stop-counter").touch()
    wait(lambda: _stable(w.counts), 30, "the counter to stop writing")
    written = w.counts()
    files = truth.log_files(w.logs, "counter")

    def accounted() -> bool:
        v = truth.check_counter_log(truth.log_files(w.logs, "counter"), written)
        return v.lost == 0 and v.present + v.dropped_reported >= v.written
    with contextlib.suppress(RuntimeError):
        wait(accounted, 15, "the counter's log to hold or account for every line", 0.1)
    files = truth.log_files(w.logs, "counter")
    out.log = truth.check_counter_log(files, written).as_dict()
    starts = w.starts()
    for who in ("counter", "web0", "web1"):
        pids = starts.get(who, [])
        out.restarts_by_service[who] = max(0, len(pids) - 1)
        if not pids or not alive(pids[-1]):
            out.not_running_at_end.append(who)
    # /proc: the launcher's children running each script, which must be the pids above.
    copies: dict[str, list[int]] = {"counter": [], "web": []}
    for pid in children_of(w.launcher_pid):
        args = cmdline(pid)
        for who in copies:
            if str(w.dir / f"{who}.py") in args and alive(pid):
                copies[who].append(pid)
    recorded = {"counter": {starts.get("counter", [0])[-1]},
                "web": {starts.get(f"web{i}", [0])[-1] for i in (0, 1)}}
    for who, pids in copies.items():
        if set(pids) != recorded[who]:
            out.not_running_at_end.append(f"{who}: /proc shows {sorted(pids)}, the services "
                                          f"recorded {sorted(recorded[who])}")
    out.corral_restarts = sum(out.restarts_by_service.values())
    out.crash_restarts = max(0, w.crash_starts() - 1)
    out.requests_ok, out.requests_failed = traffic.ok, traffic.failed
    out.request_failures = traffic.failures
    loaded, problems = truth.load_state_files(w.state)
    w.state_loads += 1
    w.state_files_loaded += loaded
    w.state_problems += [f"at the end: {p}" for p in problems]
    out.state_loads, out.state_files_loaded = w.state_loads, w.state_files_loaded
    out.state_problems = w.state_problems
    out.state_files_unloadable = len(w.state_problems)
    out.leftover_temp_files = truth.leftover_temp_files(w.state)
    out.kills, out.kills_mid_write = w.kills, w.kills_mid_write
    out.faults = {}
    for f in w.faults:
        out.faults[f.kind] = out.faults.get(f.kind, 0) + 1
    out.fault_log = [{"kind": f.kind, "t0": f.t0, "t1": f.t1, **f.detail} for f in w.faults]
    out.supervisor_answers_max_s = round(max(w.recovery_s, default=0.0), 3)
    out.chaos_requests = dict(sorted(w.requests.items()))


def _diagnose(w: World) -> dict[str, Any]:
    """What the supervisor and the host say about the balancer, for a failed request."""
    out: dict[str, Any] = {"port": w.port}
    with contextlib.suppress(Exception):
        out["status"] = json.loads(w.request("GET", "/v1/status")[1])
    with contextlib.suppress(Exception):
        out["listening"] = subprocess.run(["ss", "-ltnpH", f"sport = :{w.port}"],
                                          capture_output=True, text=True).stdout
    with contextlib.suppress(Exception):
        out["launcher_out"] = (w.corral.scratch / "launcher.out").read_text()[-3000:]
    with contextlib.suppress(Exception):
        out["balancer_log"] = (w.logs / ".balancer.log").read_text()[-3000:]
    return out


def _stable(read: Callable[[], dict[int, int]]) -> bool:
    a = read()
    time.sleep(0.05)  # two readings 50 ms apart: at 200 lines a second a writer moves
    return bool(a) and read() == a


def _crash_times(w: World) -> list[tuple[int, str, int]]:
    evs = []
    for line in (w.dir / "crash.times").read_text().splitlines():
        parts = line.split()
        if len(parts) == 3:
            sec, _, frac = parts[2].partition(".")
            ns = int(sec) * 10**9 + int((frac + "000000000")[:9])
            evs.append((ns, parts[0], int(parts[1])))
    return evs


def _downtime(w: World, out: Outcome, evs: list[tuple[int, str, int]], method: str,
              wall: bool) -> None:
    out.down_method = method
    start = w.t0_wall if wall else w.t0_mono
    downs = [(t, d) for t, d in truth.downtimes(evs) if t >= start]  # not the start-up's
    if not downs:
        return
    ms = sorted(d / 1e6 for _, d in downs)
    out.down_p50_ms = round(ms[len(ms) // 2], 2)

    def causes(t: int, d: int, kinds: tuple[str, ...] = ("kill", "stop")) -> list[str]:
        found = []
        for f in w.faults:
            a, b = f.wall if wall else f.mono
            if f.kind.startswith(kinds) and a <= t + d and (b == 0 or b >= t):
                found.append(f"{f.kind} at {f.t0}s")
        return found
    out.down_worst = [{"t": round((t - start) / 1e9, 3), "ms": round(d / 1e6, 2),
                       "during": causes(t, d, ("kill", "stop", "fill", "flap"))}
                      for t, d in sorted(downs, key=lambda x: -x[1])[:8]]
    worst_t, worst = max(downs, key=lambda x: x[1])
    out.down_max_ms = round(worst / 1e6, 2)
    out.down_max_cause = ", ".join(causes(worst_t, worst)) or "no supervisor fault under way"
    quiet = [d for t, d in downs if not causes(t, d)]
    groups: dict[str, list[float]] = {}
    for t, d in downs:
        kinds = {c.split()[0] for c in causes(t, d)}
        key = ("supervisor stopped (SIGSTOP)" if "stop" in kinds else
               "supervisor killed, until a new one answers" if kinds else
               "no supervisor fault under way")
        groups.setdefault(key, []).append(d / 1e6)
    for key, values in groups.items():
        values.sort()
        out.down_by_cause[key] = {"n": len(values), "p50_ms": round(values[len(values) // 2], 2),
                                  "max_ms": round(values[-1], 2)}
    out.down_max_quiet_ms = round(max(quiet, default=0) / 1e6, 2)
