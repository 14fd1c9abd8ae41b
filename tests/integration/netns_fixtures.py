"""Several corral hosts on one machine: each a network namespace (tests/integration/netns.py)
running a real ``corral sup run`` under its own host name, with etcd on the bridge.

``netns_network`` (fixture) makes networks of N hosts, all torn down after the test even if
it fails.  ``cluster_hosts`` is three hosts and a single-member etcd listening on the
bridge's address in the root namespace (``http://198.18.N.1:PORT``), with a
:class:`HostCorral` per host, not yet started.  Without root the fixtures skip (a
developer's laptop); as root they never do, and a missing ``ip`` fails the test.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .conftest import PY, Corral, wait_for
from .etcd_fixtures import EtcdMember
from .netns import Host, Network, why_not

TTL = 2  # seconds: the shortest lease etcd grants, so a dead host leaves quickly


class HostCorral(Corral):
    """``corral sup run`` inside ``host``'s namespace, in a UTS namespace of its own whose
    host name is ``host.name``; the CLI runs inside the namespace too (over ``api.sock``)."""

    def __init__(self, host: Host, state_dir: Path) -> None:
        state_dir.parent.mkdir(parents=True, exist_ok=True)
        super().__init__(state_dir)
        self.host = host

    def launch(self, *extra: str, env: dict[str, str] | None = None) -> None:
        """Start the launcher (``ip netns exec`` and ``unshare`` exec, so ``proc`` is it)."""
        argv = self.host.argv("unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"',
                              self.host.name, PY, "-m", "corral", "sup", "run",
                              "--state-dir", str(self.state_dir), *extra)
        with self.output.open("ab") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                         env={**self.env, **(env or {})},
                                         start_new_session=True)

    def start(self, *extra: str, env: dict[str, str] | None = None) -> None:
        self.launch(*extra, env=env)
        wait_for(self.answers, 30, f"{self.host.name}'s API to answer")

    def run(self, *args: str, input: str | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.host.argv(PY, "-m", "corral", *args), capture_output=True,
                              text=True, env=self.env, timeout=timeout, input=input)


class ClusterHosts:
    """Three hosts on one bridge, an etcd on the bridge's address, a corral per host."""

    def __init__(self, root: Path, network: Network) -> None:
        self.network = network
        (root / "etcd").mkdir()
        self.etcd = EtcdMember(root / "etcd", "s1", host=network.gateway)
        self.corrals = [HostCorral(h, root / h.name / "state") for h in network.hosts]

    def cluster_flags(self, i: int, advertise: bool = True) -> list[str]:
        """``sup run``'s flags for host ``i`` (0-based): this etcd, its name, its address."""
        host = self.network.hosts[i]
        flags = ["--cluster", self.etcd.url, "--member-name", host.name,
                 "--cluster-ttl", str(TTL)]
        return flags + (["--advertise", host.address] if advertise else [])

    def start(self, *which: int, advertise: bool = True) -> list[HostCorral]:
        """Start the corrals of hosts ``which`` (default all) together; wait for their APIs."""
        chosen = [self.corrals[i] for i in (which or range(len(self.corrals)))]
        for c in chosen:
            c.launch(*self.cluster_flags(self.corrals.index(c), advertise))
        for c in chosen:
            wait_for(c.answers, 60, f"{c.host.name}'s API to answer")
        return chosen

    def stop(self) -> None:
        """SIGTERM every launcher still running, then wait for each (SIGKILL after 60 s)."""
        running = [c for c in self.corrals if c.proc is not None and c.proc.poll() is None]
        for c in running:
            assert c.proc is not None
            c.proc.send_signal(signal.SIGTERM)
        for c in running:
            assert c.proc is not None
            try:
                c.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(c.proc.pid, signal.SIGKILL)
                c.proc.wait()


@pytest.fixture
def netns_network() -> Iterator[Callable[[int], Network]]:
    """Make networks of N hosts (namespaces on a bridge); all deleted after the test."""
    problem = why_not()
    if problem and os.geteuid() != 0:
        pytest.skip(problem)
    if problem:
        pytest.fail(problem)
    made: list[Network] = []

    def make(size: int) -> Network:
        network = Network(size)
        made.append(network)
        network.up()
        return network

    yield make
    errors = []
    for network in made:
        try:
            network.down()
        except Exception as exc:  # every network is deleted even if one cannot be
            errors.append(exc)
    if errors:
        raise errors[0]


@pytest.fixture
def cluster_hosts(tmp_path: Path, netns_network: Callable[[int], Network]
                  ) -> Iterator[ClusterHosts]:
    """Three hosts in namespaces and an etcd they reach on the bridge; started etcd,
    corrals not started.  Corrals stopped, etcd killed, namespaces deleted afterwards."""
    hosts = ClusterHosts(tmp_path, netns_network(3))
    try:
        hosts.etcd.start()
        hosts.etcd.wait_healthy()
        yield hosts
    finally:
        try:
            hosts.stop()
        finally:
            hosts.etcd.kill()
