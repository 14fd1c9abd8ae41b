"""``python -m bench cluster [--quick]``: service groups across hosts (issue 14).

**The rig.**  Five hosts, each a network namespace on one bridge (``tests/integration/netns.py``:
``198.18.N.0/24``, nothing leaves the bridge), and one etcd (Debian's ``etcd-server``) in the
root namespace listening on the bridge's address.  A host's corral is this tree's
``python -m corral sup run --state-dir <scratch>/hostI/state --cluster http://198.18.N.1:PORT
--advertise 198.18.N.(10+I) --member-name hostI`` run with ``ip netns exec`` under its own host
name, with the default lease TTL (5 s); the bench reads and drives each over its ``api.sock``
(``GET /v1/census/<group>``, ``POST /v1/services``) with one keep-alive connection.

**The figures** (each starts the corrals it needs on fresh state directories and stops them):

* ``join``: a *member* is one supervisor's copy of a service group, so a member joins when a
  host loads a process of a new group.  host2 loads ``jNNN`` (``sleep 3600``, ``cluster:
  {group: bench}``) with ``POST /v1/services``; the sample runs from sending that request
  until host1's ``GET /v1/census/jNNN.bench`` lists host2 (polled every 2 ms).  It covers
  host2's load and spawn, its record put under its lease, etcd's watch, host1's mirror and
  its API.  30 joins (20 with ``--quick``) after 2 warm-ups.  Goal: p99 <= 100 ms.
* ``config``: five hosts each run ``capp`` (group ``bench``, ``sleep 3600`` with ``cwd``
  a directory of its own holding ``capp.conf.j2`` = ``{{ sys.member }} {{ cfg.v }}``, and
  a ``reconfigure`` hook ``read -r line < capp.conf; echo "$line" > FIFO``: shell
  built-ins, one ``/bin/sh`` and no other process).  The bench holds the fifo open and
  stamps each line with ``time.perf_counter()`` as it reads it.  The sample runs from
  just before sending host1's ``PUT /v1/config/capp.bench`` (version N, ``{"v": N}``)
  until the bench has read ``hostI N`` from all five hosts: a line of version N means
  that member rendered N into its file and then ran its hook.  Both ends are on the
  bench's monotonic clock.  20 applies (``--quick`` too) after 2 warm-ups, 100 ms of rest
  between two.  Split by a watch of ``/corral/default/config/`` from the root namespace,
  and the CPU time each supervisor and etcd used per apply (``/proc/PID/stat``).
  Goal: p99 <= 100 ms.
* ``leave``: host4 runs one process ``leaver`` (group ``bench``); once host1's census shows
  it, every process of host4's namespace is SIGKILLed (launcher, supervisor, child: the
  host loses power).  The sample runs from the kill until host1's census no longer lists
  host4 (polled every 20 ms).  5 rounds (3 with ``--quick``), host4 started afresh each time.
  Goal: <= TTL + 1 s.
* ``rss``: host1's supervisor (``VmRSS``) running 10 processes, once without a cluster and
  once with ``--cluster`` while host2 and host3 run 45 processes each, so that host1's
  census holds 100 members: real members registered by real supervisors, not records
  written for the occasion.  After the census is complete (or the 10 processes up) and
  15 s of rest, 10 samples 2 s apart; the medians are compared.  Goal: within 10 MB.

**Adding a figure**: write ``run(rig, quick) -> dict`` and ``render(result) -> list[str]``
(Markdown rows of the one table: figure, N, p50, p99, max, goal, verdict, how) and append a
:class:`Figure` to :data:`FIGURES`.  :class:`Rig` starts up to five hosts
(``rig.start(i)``), gives their API connections (``host.http()``) and stops them
(``rig.stop_all()``); ``--only`` selects figures by name.

Writes ``bench/results/cluster-<stamp>.json`` and the "Cluster" section of
``docs/benchmarks.md`` (replacing only that section).  Needs root (namespaces).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import functools
import json
import operator
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from tests.integration.etcd_fixtures import EtcdMember
from tests.integration.netns import Host, Network, why_not

from bench import sysinfo
from bench.api import rss_kib
from bench.page import ROOT, publish, write_section
from bench.target import Corral, Http, percentiles, scratch_dir, wait

BEGIN = "<!-- cluster:begin -->"
END = "<!-- cluster:end -->"
HOSTS = 5
GOAL_JOIN_MS = 100.0
GOAL_CONFIG_MS = 100.0
REST_S = 0.1  # between two config applies
GOAL_RSS_MB = 10.0
TTL_S = 5  # the default --cluster-ttl: the bench passes none
POLL_S = 0.002  # how often host1's census is read while a join is timed


def process_yaml(name: str, group: str = "bench") -> str:
    return f"name: {name}\ncommand: [/usr/bin/sleep, '3600']\ncluster: {{group: {group}}}\n"


class HostCorral(Corral):
    """bench.target's Corral inside a host's namespace, under the host's own name."""

    def __init__(self, host: Host, scratch: Path, *extra: str) -> None:
        super().__init__(scratch, *extra)
        self.host = host

    def argv(self, *args: str) -> list[str]:
        return self.host.argv(*super().argv(*args))

    def start(self) -> None:
        self.start_argv = self.host.argv(
            "unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', self.host.name,
            sys.executable, "-m", "corral", "sup", "run", "--state-dir", str(self.state),
            *self.extra)
        with (self.scratch / "launcher.out").open("ab") as out:
            self.proc = subprocess.Popen(self.start_argv, stdout=out, stderr=subprocess.STDOUT,
                                         env=self.env, start_new_session=True)
        wait(lambda: self.run("sup", "status", "--json").returncode == 0, 60,
             f"{self.host.name}'s API")

    def load(self, client: Http, name: str, group: str = "bench") -> None:
        client.json("POST", "/v1/services", {"yaml": process_yaml(name, group),
                                             "source": "bench"})

    def kill_host(self) -> None:
        """SIGKILL every process of the host's namespace; reap the launcher."""
        self.host.kill_all()
        if self.proc is not None:
            self.proc.wait()


class Rig:
    """The network, the etcd and the corrals started so far."""

    def __init__(self, network: Network, etcd: EtcdMember) -> None:
        self.network, self.etcd = network, etcd
        self.running: list[HostCorral] = []

    def start(self, i: int, cluster: bool = True) -> HostCorral:
        """A corral on host ``i`` (1-based) on a fresh state directory, with the cluster
        flags unless ``cluster`` is False."""
        host = self.network.hosts[i - 1]
        extra = (["--cluster", self.etcd.url, "--advertise", host.address,
                  "--member-name", host.name] if cluster else [])
        c = HostCorral(host, scratch_dir(f"cluster-{host.name}"), *extra)
        self.running.append(c)
        c.start()
        return c

    def etcd_pid(self) -> int:
        assert self.etcd.proc is not None
        return self.etcd.proc.pid

    def stop(self, c: HostCorral) -> None:
        c.stop()
        self.running.remove(c)

    def stop_all(self) -> None:
        for c in list(self.running):
            self.stop(c)


def members_of(client: Http, group: str) -> list[dict[str, Any]]:
    status, raw = client.request("GET", f"/v1/census/{group}")
    if status == 404:
        return []
    if status != 200:
        raise RuntimeError(f"GET /v1/census/{group}: HTTP {status}: {raw[:200]!r}")
    return list(json.loads(raw)["groups"].get(group, []))


def shows(client: Http, group: str, member: str) -> bool:
    return any(m["member"] == member and m["alive"] for m in members_of(client, group))


def census_size(client: Http) -> int:
    groups = client.json("GET", "/v1/census")["groups"]
    return sum(1 for ms in groups.values() for m in ms if m["alive"])


def census_has(client: Http, n: int) -> bool:
    return census_size(client) >= n


# --------------------------------------------------------------------------- figures
class KeyWatch:
    """When each member key first reached etcd, as a watcher in the root namespace sees it
    (a thread streaming etcd's ``/v3/watch`` of ``/corral/default/members/``)."""

    def __init__(self, url: str, prefix: str = "/corral/default/members/") -> None:
        self.url, self.prefix = url, prefix
        self.seen: dict[str, float] = {}
        #: Every PUT in order: (key, value, when the watcher read it).
        self.puts: list[tuple[str, bytes, float]] = []
        self.ready = threading.Event()
        self._client = httpx.Client(timeout=None, trust_env=False)
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._thread.start()
        if not self.ready.wait(10):
            raise RuntimeError("the etcd watch did not start")

    def _follow(self) -> None:
        def b64(text: str) -> str:
            return base64.b64encode(text.encode()).decode()
        end = self.prefix[:-1] + chr(ord(self.prefix[-1]) + 1)
        body = {"create_request": {"key": b64(self.prefix), "range_end": b64(end)}}
        with contextlib.suppress(httpx.HTTPError), \
                self._client.stream("POST", f"{self.url}/v3/watch", json=body) as answer:
            for line in answer.iter_lines():
                now = time.perf_counter()
                result = json.loads(line).get("result", {})
                if result.get("created"):
                    self.ready.set()
                for event in result.get("events", []):
                    key = base64.b64decode(event["kv"]["key"]).decode()
                    if event.get("type", "PUT") == "PUT":
                        self.seen.setdefault(key, now)
                        value = base64.b64decode(event["kv"].get("value", ""))
                        self.puts.append((key, value, now))

    def close(self) -> None:
        self._client.close()


def run_join(rig: Rig, quick: bool) -> dict[str, Any]:
    joins, warmups = (20 if quick else 30), 2
    a, b = rig.start(1), rig.start(2)
    ca, cb = a.http(), b.http()
    watch = KeyWatch(rig.etcd.url)
    samples: list[float] = []
    acks: list[float] = []
    put: list[float] = []
    spread: list[float] = []
    gets: list[float] = []
    try:
        for j in range(warmups + joins):
            name = f"j{j:03d}"
            key = f"/corral/default/members/{name}.bench/host2"
            t0 = time.perf_counter()
            b.load(cb, name)
            ack = time.perf_counter()
            deadline = t0 + 30
            while True:
                g0 = time.perf_counter()
                seen = shows(ca, f"{name}.bench", "host2")
                gets.append((time.perf_counter() - g0) * 1000)
                if seen:
                    break
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"host1 never saw host2 join {name}.bench")
                time.sleep(POLL_S)  # the polling interval: the figure's resolution
            t1 = time.perf_counter()
            wait(functools.partial(operator.contains, watch.seen, key), 10,
                 f"the watch to see {key}")
            if j >= warmups:
                samples.append((t1 - t0) * 1000)
                acks.append((ack - t0) * 1000)
                put.append((watch.seen[key] - t0) * 1000)
                spread.append((t1 - watch.seen[key]) * 1000)
            print(f"bench cluster: join {name}: {(t1 - t0) * 1000:.1f} ms (load answered "
                  f"after {(ack - t0) * 1000:.1f} ms, record in etcd after "
                  f"{(watch.seen[key] - t0) * 1000:.1f} ms)", flush=True)
    finally:
        watch.close()
        ca.close()
        cb.close()
        rig.stop_all()
    return {"ms": [round(x, 2) for x in samples], **percentiles(samples),
            "load_answer_ms": percentiles(acks), "record_in_etcd_ms": percentiles(put),
            "etcd_to_census_ms": percentiles(spread), "census_get_ms": percentiles(gets)}


class HookLines:
    """The lines every member's reconfigure hook writes into one fifo, each stamped with
    ``time.perf_counter()`` when this thread reads it.  The fifo is held open for reading
    and writing, so a hook's ``open`` never waits for a reader and its end is no EOF."""

    def __init__(self, path: Path) -> None:
        os.mkfifo(path, 0o600)
        self._fd = os.open(path, os.O_RDWR)
        self.path = path
        self.seen: dict[tuple[str, int], float] = {}
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        buffered = b""
        while True:
            try:
                chunk = os.read(self._fd, 65536)
            except OSError:
                return
            now = time.perf_counter()
            if not chunk:
                return
            buffered += chunk
            *lines, buffered = buffered.split(b"\n")
            with self._changed:
                for line in lines:
                    member, _, version = line.decode().partition(" ")
                    with contextlib.suppress(ValueError):
                        self.seen.setdefault((member, int(version)), now)
                self._changed.notify_all()

    def wait(self, members: list[str], version: int, timeout: float) -> list[float]:
        """When each of ``members`` reported ``version`` (raises after ``timeout``)."""
        deadline = time.perf_counter() + timeout
        with self._changed:
            while missing := [m for m in members if (m, version) not in self.seen]:
                left = deadline - time.perf_counter()
                if left <= 0:
                    raise RuntimeError(f"no reconfigure hook of v{version} from {missing}")
                self._changed.wait(left)
            return [self.seen[(m, version)] for m in members]

    def close(self) -> None:
        os.close(self._fd)


def cpu_ms(pid: int) -> float:
    """CPU time (user + system) ``pid`` has used so far, in ms."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


def config_yaml(cwd: Path, fifo: Path) -> str:
    """A process of group ``bench`` with one template and a reconfigure hook that writes
    the rendered file's line (``<member> <version>``) into ``fifo``: shell built-ins only,
    so the hook is one ``/bin/sh`` and no other process."""
    hook = f'read -r line < capp.conf; echo "$line" > {fifo}'
    return json.dumps({"name": "capp", "command": ["/usr/bin/sleep", "3600"], "cwd": str(cwd),
                       "cluster": {"group": "bench"}, "config": {"v": 0},
                       "templates": ["capp.conf.j2"], "hooks": {"reconfigure": hook}})


def run_config(rig: Rig, quick: bool) -> dict[str, Any]:
    applies, warmups = 20, 2
    scratch = scratch_dir("cluster-config")
    hook_lines = HookLines(scratch / "hooks.fifo")
    corrals = [rig.start(i) for i in range(1, HOSTS + 1)]
    clients = [c.http() for c in corrals]
    names = [c.host.name for c in corrals]
    watch = KeyWatch(rig.etcd.url, "/corral/default/config/")
    samples: list[float] = []
    acks: list[float] = []
    put: list[float] = []
    first: list[float] = []
    spread: list[float] = []
    try:
        for c, client in zip(corrals, clients, strict=True):
            cwd = scratch / c.host.name
            cwd.mkdir()
            (cwd / "capp.conf.j2").write_text("{{ sys.member }} {{ cfg.v }}\n")
            client.json("POST", "/v1/services", {"yaml": config_yaml(cwd, hook_lines.path),
                                                 "source": "bench"})
        for c in corrals:
            c.wait_up({"capp"}, 60)
        print(f"bench cluster: config: load average {os.getloadavg()[0]:.1f}", flush=True)
        wait(lambda: all(shows(clients[0], "capp.bench", n) for n in names), 30,
             "host1 to see capp on every host")
        sups = [int(c.sup_status()["supervisor_pid"]) for c in corrals] + [rig.etcd_pid()]
        cpu_before: list[float] = []
        for version in range(1, warmups + applies + 1):
            body = {"version": version, "text": json.dumps({"v": version}),
                    "format": "json", "source": "bench"}
            t0 = time.perf_counter()
            clients[0].json("PUT", "/v1/config/capp.bench", body)
            ack = time.perf_counter()
            ends = hook_lines.wait(names, version, 30)
            t1 = max(ends)
            stored = [w for k, v, w in list(watch.puts) if k.endswith("/capp.bench")
                      and json.loads(v)["version"] == version]
            if version == warmups:
                cpu_before = [cpu_ms(p) for p in sups]
            if version > warmups:
                samples.append((t1 - t0) * 1000)
                acks.append((ack - t0) * 1000)
                first.append((min(ends) - t0) * 1000)
                if stored:
                    put.append((stored[0] - t0) * 1000)
                    spread.append((t1 - stored[0]) * 1000)
            print(f"bench cluster: config v{version}: {(t1 - t0) * 1000:.1f} ms (apply "
                  f"answered after {(ack - t0) * 1000:.1f} ms, first hook after "
                  f"{(min(ends) - t0) * 1000:.1f} ms)", flush=True)
            time.sleep(REST_S)  # a rest between applies, so that no two overlap
        cpu = [(cpu_ms(p) - b) / applies for p, b in zip(sups, cpu_before, strict=True)]
    finally:
        watch.close()
        hook_lines.close()
        for client in clients:
            client.close()
        rig.stop_all()
    return {"ms": [round(x, 2) for x in samples], **percentiles(samples),
            "members": len(names), "apply_answer_ms": percentiles(acks),
            "config_in_etcd_ms": percentiles(put), "first_hook_ms": percentiles(first),
            "etcd_to_last_hook_ms": percentiles(spread),
            "supervisor_cpu_ms_per_apply": [round(x, 1) for x in cpu[:-1]],
            "etcd_cpu_ms_per_apply": round(cpu[-1], 1)}


def run_leave(rig: Rig, quick: bool) -> dict[str, Any]:
    rounds = 3 if quick else 5
    a = rig.start(1)
    ca = a.http()
    samples: list[float] = []
    ttl = None
    try:
        for k in range(rounds):
            d = rig.start(4)
            cd = d.http()
            ttl = d.sup_status()["cluster"]["ttl"]
            d.load(cd, "leaver")
            cd.close()
            wait(lambda: shows(ca, "leaver.bench", "host4"), 30, "host1 to see host4")
            t0 = time.perf_counter()
            d.kill_host()
            while any(m["member"] == "host4" for m in members_of(ca, "leaver.bench")):
                if time.perf_counter() > t0 + 60:
                    raise RuntimeError("host4 never left host1's census")
                time.sleep(0.02)  # the polling interval
            samples.append(time.perf_counter() - t0)
            rig.running.remove(d)
            print(f"bench cluster: leave round {k + 1}: {samples[-1]:.2f} s "
                  f"(TTL {ttl} s)", flush=True)
    finally:
        ca.close()
        rig.stop_all()
    return {"s": [round(x, 3) for x in samples], "ttl_s": ttl, **percentiles(samples)}


def _rss_samples(pid: int) -> list[int]:
    time.sleep(15)  # rest before sampling (a measurement window, not synchronisation)
    out: list[int] = []
    for _ in range(10):
        kib = rss_kib(pid)
        if kib:
            out.append(kib)
        time.sleep(2)  # the sampling clock
    return out


def run_rss(rig: Rig, quick: bool) -> dict[str, Any]:
    own, each = 10, 45
    res: dict[str, Any] = {"own_processes": own, "remote_processes": 2 * each}
    try:
        for i in (2, 3):
            c = rig.start(i)
            client = c.http()
            for p in range(each):
                c.load(client, f"r{i}{p:02d}")
            client.close()
        for label, cluster in (("without a cluster", False), ("with --cluster", True)):
            a = rig.start(1, cluster=cluster)
            client = a.http()
            for p in range(own):
                a.load(client, f"own{p:02d}")
            a.wait_up({f"own{p:02d}" for p in range(own)}, 60)
            want = own + (2 * each if cluster else 0)
            wait(functools.partial(census_has, client, want), 120,
                 f"{want} members in the census")
            res[label] = {"members": census_size(client)}
            client.close()
            pid = int(a.sup_status()["supervisor_pid"])
            kib = _rss_samples(pid)
            res[label].update({"kib": kib, "median_mib": round(statistics.median(kib) / 1024, 1),
                               "max_mib": round(max(kib) / 1024, 1)})
            print(f"bench cluster: rss {label}: {res[label]}", flush=True)
            rig.stop(a)
    finally:
        rig.stop_all()
    res["delta_mb"] = round((res["with --cluster"]["median_mib"]
                             - res["without a cluster"]["median_mib"]) * 1.048576, 1)
    return res


def render_join(r: dict[str, Any]) -> list[str]:
    met = "met" if r["p99"] <= GOAL_JOIN_MS else "**not met**"
    return [f"| member joins → another host's census shows it | {r['n']} | {r['p50']:.1f} ms | "
            f"{r['p99']:.1f} ms | {r['max']:.1f} ms | p99 ≤ {GOAL_JOIN_MS:.0f} ms | {met} | "
            f"host2 `POST /v1/services` until host1's `GET /v1/census/<group>` lists it, "
            "polled every 2 ms. Split by a watch of etcd from the root namespace: request "
            f"to record in etcd {_p(r['record_in_etcd_ms'])}, record in etcd to host1's "
            f"census {_p(r['etcd_to_census_ms'])} (the load's own answer: "
            f"{_p(r['load_answer_ms'])}"
            + (f"; one `GET` of host1's census: {_p(r['census_get_ms'])}"
               if "census_get_ms" in r else "") + ") |"]


def _p(r: dict[str, float]) -> str:
    return f"{r['p50']:.1f} / {r['p99']:.1f} ms (p50 / p99)"


def render_config(r: dict[str, Any]) -> list[str]:
    met = "met" if r["p99"] <= GOAL_CONFIG_MS else "**not met**"
    return [f"| `config apply` → every member of a {r['members']}-member group re-rendered and "
            f"ran its reconfigure hook | {r['n']} | {r['p50']:.1f} ms | {r['p99']:.1f} ms | "
            f"{r['max']:.1f} ms | p99 ≤ {GOAL_CONFIG_MS:.0f} ms | {met} | Start: just before "
            "the bench sends host1's `PUT /v1/config/capp.bench` (version N). End: the bench "
            "has read, from one fifo, the line of version N from every host's reconfigure "
            "hook, which reads the re-rendered file (`<member> N`) and writes it there. Both "
            f"on the bench's monotonic clock; {REST_S * 1000:.0f} ms rest between applies. "
            f"Split: the apply's own answer {_p(r['apply_answer_ms'])}; request to config in "
            f"etcd (a watch from the root namespace) {_p(r['config_in_etcd_ms'])}; config in "
            f"etcd to the last hook {_p(r['etcd_to_last_hook_ms'])}; the first hook "
            f"{_p(r['first_hook_ms'])}. CPU per apply: each supervisor "
            f"{', '.join(f'{x:g}' for x in r['supervisor_cpu_ms_per_apply'])} ms (host1 "
            f"first), etcd {r['etcd_cpu_ms_per_apply']:g} ms |"]


def render_leave(r: dict[str, Any]) -> list[str]:
    goal = (r["ttl_s"] or TTL_S) + 1
    met = "met" if r["max"] <= goal else "**not met**"
    return [f"| host killed → it leaves another host's census | {r['n']} | {r['p50']:.2f} s | "
            f"{r['p99']:.2f} s | {r['max']:.2f} s | ≤ TTL + 1 s = {goal} s | {met} | "
            "SIGKILL of every process in host4's namespace until host1's census drops it; "
            "polled every 20 ms |"]


def render_rss(r: dict[str, Any]) -> list[str]:
    off, on = r["without a cluster"], r["with --cluster"]
    met = "met" if r["delta_mb"] <= GOAL_RSS_MB else "**not met**"
    return [f"| supervisor RSS, cluster link on, {on['members']} members in the census | 10 | "
            f"{on['median_mib']} MiB (without: {off['median_mib']} MiB) | | "
            f"{on['max_mib']} MiB (without: {off['max_mib']} MiB) | within "
            f"{GOAL_RSS_MB:.0f} MB: +{r['delta_mb']} MB | {met} | host1 runs {r['own_processes']} "
            f"processes; host2 and host3 run {r['remote_processes'] // 2} each (real members); "
            "median of 10 samples 2 s apart after 15 s of rest |"]


@dataclass(frozen=True)
class Figure:
    """One figure: ``run`` measures it on the rig (self-contained: it starts and stops its
    own corrals), ``render`` gives its rows of the section's table."""

    name: str
    run: Callable[[Rig, bool], dict[str, Any]]
    render: Callable[[dict[str, Any]], list[str]]


FIGURES = [Figure("join", run_join, render_join),
           Figure("config", run_config, render_config),
           Figure("leave", run_leave, render_leave), Figure("rss", run_rss, render_rss)]


# ------------------------------------------------------------------------- the page
# Hand-written from the runs and measurements of 2026-12-06 (the config apply's: 16:17-16:22
# UTC, `--quick --only config`, before and after each fix); shown under the table.
# Measure again and edit it when the figures move.
NOTES = """\
**Where a join's time goes.** About half of it is host2's own work before its record
reaches etcd (the load, the spawn, the record put under its lease); the rest is etcd's
watch, host1's mirror and one `GET` of its census. From etcd to host1's census takes
longer here than the watch alone measured on a quiet machine (6.6-8.3 ms p99,
`reference/etcd-eval.md`): this 2-core machine was shared with other test runs (load
average 6-15 while these ran), and the tail follows the load. Eight runs of the join
figure between 15:30 and 15:45 UTC gave p99 of 50, 56, 64, 68, 86, 103 and 115 ms, and 164
ms in one run that polled every 10 ms instead of 2.

**Where a config apply's time goes.** On each host: etcd's watch delivers the new version,
the supervisor renders the process, writes its file and starts the hook's `/bin/sh`; then
every member's record changes (its config version), so every host hears five more
changes and renders again (the output is the same, nothing is acted on). It is CPU-bound
on this 2-core machine: five supervisors and etcd share it. Before two fixes made while
adding this figure, each render compiled its templates again (a fresh Jinja environment),
and the rendered file and `run/rendered.json` were fsynced (four fsyncs on the path, two of
them on the event loop): 20 applies at load average 5-7 gave p50 83 / p99 153 ms, with
17 ms of CPU per supervisor per apply. Templates compiled once per set of sources: p50 57 /
p99 81 ms, 13 ms of CPU. Then no fsync for files that only running instances use (a power
loss ends them, and their next start renders again): p50 32 / p99 43 ms, 9 ms of CPU.
What is left is mostly CPU shared by six processes (etcd takes 12-17 ms per apply for six
puts and their watches) and starting the hook's shell.

**Where the RSS difference goes.** About 5.8 MiB of it is the first TLS context the process
makes: the etcd client (httpx) builds one when it is created, even for `http://` endpoints
(4.6 MiB for OpenSSL's own state, 1.2 MiB for the system's CA bundle; measured by creating
`httpx.AsyncClient()` in a Python that has imported the supervisor). The census of 100
members, the watch and the session are the rest, about 1 MiB.
"""


def run(quick: bool, only: list[str]) -> dict[str, Any]:
    res: dict[str, Any] = {"machine": sysinfo.machine(), "quick": quick, "figures": {}}
    root = scratch_dir("cluster-etcd")
    with Network(HOSTS) as network:
        etcd = EtcdMember(root, "s1", host=network.gateway)
        etcd.start()
        try:
            etcd.wait_healthy()
            rig = Rig(network, etcd)
            res["network"] = {"bridge": network.gateway,
                              "hosts": {h.name: h.address for h in network.hosts},
                              "etcd": etcd.url}
            for figure in FIGURES:
                if figure.name in only:
                    res["figures"][figure.name] = figure.run(rig, quick)
        finally:
            etcd.kill()
    res["load_at_end"] = sysinfo.load_now()
    return res


def render(res: dict[str, Any]) -> str:
    quick = " --quick" if res["quick"] else ""
    m = res["machine"]
    out = [BEGIN, "## Cluster: service groups across hosts (issue 14)", "",
           f"Generated by `python -m bench cluster{quick}` (as root, from the repository "
           "root). Five hosts, each a network namespace on one bridge (`198.18.N.0/24`, "
           "`tests/integration/netns.py`), each running this tree's `python -m corral sup run "
           "--cluster http://198.18.N.1:PORT --advertise 198.18.N.(10+I) --member-name hostI` "
           "(`ip netns exec`, own host name, default lease TTL 5 s), and one etcd "
           "(`/usr/bin/etcd`, Debian's etcd-server, one member) listening on the bridge's "
           "address in the root namespace. The bench drives each host over its `api.sock`, "
           "one keep-alive connection each. `bench/cluster.py`'s docstring has the method.", "",
           "| figure | N | p50 | p99 | max | goal | verdict | how |",
           "|---|---:|---:|---:|---:|---|---|---|"]
    for figure in FIGURES:
        if figure.name in res["figures"]:
            out += figure.render(res["figures"][figure.name])
    if left := [f.name for f in FIGURES if f.name not in res["figures"]]:
        out += ["", f"Not in this run (`--only`): {', '.join(left)}."]
    out += ["", NOTES.strip(), "",
            "Machine: " + ", ".join(f"{k} {m[k]}" for k in (
                "date (UTC)", "nproc", "cpu", "memory", "kernel", "os", "python", "git")
                if k in m) + f"; load average at start {m.get('load average at start')}, "
            f"at end {res.get('load_at_end')}. The host is shared with other engineers' test "
            "runs: latencies can move by tens of per cent between runs.", "", END]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    names = [f.name for f in FIGURES]
    ap = argparse.ArgumentParser(
        prog="python -m bench cluster",
        description="service groups across hosts in network namespaces: a member joining "
                    "until another host's census shows it, a config apply until every member "
                    "of a 5-member group has re-rendered and run its reconfigure hook, a "
                    "killed host leaving the census, and the supervisor's RSS with 100 "
                    "members in the census (issue 14)",
        epilog="examples:\n  python -m bench cluster --quick\n  python -m bench cluster\n"
               "  python -m bench cluster --only join,config\n"
               "  python -m bench cluster --render bench/results/cluster-STAMP.json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="20 joins and 3 kills, not 30 and 5 (20 config applies either way)")
    ap.add_argument("--only", default=",".join(names),
                    help=f"figures, comma-separated (default all: {','.join(names)})")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    ap.add_argument("--render", type=Path, metavar="JSON",
                    help="re-render the section from a saved results file; run nothing")
    args = ap.parse_args(argv)
    only = [x.strip() for x in args.only.split(",") if x.strip()]
    if unknown := [x for x in only if x not in names]:
        ap.error(f"unknown figure {unknown[0]!r} (choose from {', '.join(names)})")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.render:
        write_section(render(json.loads(args.render.read_text())), args.out, BEGIN, END)
        print(f"bench cluster: wrote {args.out}")
        return 0
    if problem := why_not():
        print(f"bench cluster: {problem}", file=sys.stderr)
        return 2
    res = run(args.quick, only)
    publish("cluster", res, render(res), args.out, BEGIN, END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
