"""Network namespaces as hosts: the multi-host tests' network (and ``bench/cluster.py``'s).

``Network(n)`` makes ``n`` network namespaces ``corral-<pid>-<k>-h<i>``, each a *host*
with ``lo`` up and one interface ``eth0`` (a veth pair) whose other end is on a bridge in
the root namespace.  The bridge holds ``198.18.N.1/24`` (:attr:`Network.gateway`), host
``i`` holds ``198.18.N.(10+i)/24``: the hosts reach each other and the bridge address,
nothing else (the root namespace does not forward).  ``198.18.0.0/15`` is the range set
aside for benchmarking networks (RFC 2544), so it meets no real network.

``N`` (512 subnets across 198.18 and 198.19) is claimed machine-wide with a lock file
under ``/run/corral-test-net/``, starting from the pytest-xdist worker number, so parallel
workers and parallel sessions never share a subnet.  The lock file names what was made; a
lock left by a dead process is reclaimed and its leftovers deleted.

``down()`` always runs (context manager): it kills every process still in the namespaces
(SIGKILL), deletes them (their ``eth0`` goes with them), the root ends of the veths, the
bridge and the lock.  IPv6 is off on every interface made here, so nothing but the test's
own traffic crosses the bridge.

Stdlib only: the bench imports it too.  Needs root and ``ip`` (iproute2).
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

IP = shutil.which("ip") or "/usr/sbin/ip"
LOCKS = Path("/run/corral-test-net")
SUBNETS = 512  # 198.18.0.0/24 .. 198.19.255.0/24
FIRST_HOST = 11
_made = itertools.count(1)


class NetworkError(RuntimeError):
    """A namespace, link or address could not be made (the ``ip`` command's message)."""


def why_not() -> str | None:
    """Why this process cannot make namespaces here (None: it can)."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    if not Path(IP).exists():
        return "no `ip` command: install iproute2"
    return None


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``ip ARGS``; raise :class:`NetworkError` with its message when it fails."""
    result = subprocess.run([IP, *args], capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise NetworkError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def subnet(index: int) -> str:
    """The ``/24`` of subnet ``index`` as its first three octets (``198.18.7``)."""
    return f"198.{18 + index // 256}.{index % 256}"


def worker_number() -> int:
    """The pytest-xdist worker's number (``gw2`` -> 2), 0 outside xdist."""
    match = re.fullmatch(r"gw(\d+)", os.environ.get("PYTEST_XDIST_WORKER", ""))
    return int(match.group(1)) if match else 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class Host:
    """One namespace: its name, its address on the bridge, the root end of its veth."""

    name: str
    netns: str
    address: str
    veth: str

    def argv(self, *command: str) -> list[str]:
        """``command`` run inside this host's namespace."""
        return [IP, "netns", "exec", self.netns, *command]

    def pids(self) -> list[int]:
        """Every process in this host's network namespace."""
        result = ip("netns", "pids", self.netns, check=False)
        return [int(p) for p in result.stdout.split()] if result.returncode == 0 else []

    def kill_all(self, timeout: float = 10.0) -> list[int]:
        """SIGKILL every process of this host, as a host losing power; wait until they are
        gone (reaped or zombies of a parent outside).  Returns the pids killed."""
        killed: list[int] = []
        deadline = time.monotonic() + timeout
        while left := [p for p in self.pids() if _running(p)]:
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            killed += [p for p in left if p not in killed]
            if time.monotonic() > deadline:
                raise NetworkError(f"processes of {self.netns} still running: {left}")
            time.sleep(0.02)  # polling the kernel's process table, not synchronisation
        return killed

    def default_route(self, via_gateway: str | None) -> None:
        """A default route out of ``eth0``: via ``via_gateway``, or straight on the link."""
        if via_gateway is not None:
            ip("-n", self.netns, "route", "replace", "default", "via", via_gateway, "dev", "eth0")
        else:
            ip("-n", self.netns, "route", "replace", "default", "dev", "eth0")


def _running(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@dataclass
class Network:
    """``size`` hosts on one bridge; see the module docstring.  Use as a context manager."""

    size: int
    start: int = field(default_factory=worker_number)
    index: int = -1
    bridge: str = ""
    hosts: list[Host] = field(default_factory=list)

    @property
    def gateway(self) -> str:
        """The bridge's address in the root namespace (where a test's etcd listens)."""
        return f"{subnet(self.index)}.1"

    def __enter__(self) -> Network:
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.down()

    def up(self) -> None:
        assert 1 <= self.size <= 200, "at most 200 hosts on one /24"
        problem = why_not()
        if problem:
            raise NetworkError(problem)
        tag = f"{os.getpid()}-{next(_made)}"
        self.bridge = f"cr{tag}"
        assert len(f"{self.bridge}v{self.size}") <= 15, "interface names: 15 characters"
        self.hosts = [Host(f"host{i}", f"corral-{tag}-h{i}", "", f"{self.bridge}v{i}")
                      for i in range(1, self.size + 1)]
        self.index = self._claim()
        for i, host in enumerate(self.hosts):
            host.address = f"{subnet(self.index)}.{FIRST_HOST + i}"
        ip("link", "add", self.bridge, "type", "bridge")
        _no_ipv6(self.bridge)
        ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        for host in self.hosts:
            ip("netns", "add", host.netns)
            ip("link", "add", host.veth, "type", "veth", "peer", "name", "eth0",
               "netns", host.netns)
            _no_ipv6(host.veth)
            ip("link", "set", host.veth, "master", self.bridge, "up")
            subprocess.run(host.argv("sh", "-c", "echo 1 > /proc/sys/net/ipv6/conf/eth0/"
                                     "disable_ipv6"), capture_output=True, check=False)
            ip("-n", host.netns, "addr", "add", f"{host.address}/24", "dev", "eth0")
            ip("-n", host.netns, "link", "set", "eth0", "up")
            ip("-n", host.netns, "link", "set", "lo", "up")
        self._wait_forwarding()

    def _wait_forwarding(self, timeout: float = 10.0) -> None:
        """Until every bridge port forwards (state 3) and every ``eth0`` is up."""
        deadline = time.monotonic() + timeout
        while True:
            ports = [Path(f"/sys/class/net/{h.veth}/brport/state") for h in self.hosts]
            states = [p.read_text().strip() if p.exists() else "?" for p in ports]
            links = [ip("-n", h.netns, "-o", "link", "show", "eth0").stdout for h in self.hosts]
            if all(s == "3" for s in states) and all("state UP" in x for x in links):
                return
            if time.monotonic() > deadline:
                raise NetworkError(f"bridge {self.bridge} not forwarding: ports {states}")
            time.sleep(0.02)  # polling link state, not synchronisation

    def down(self) -> None:
        """Kill what runs in the namespaces; delete them, the veths, the bridge, the lock.
        Each step is tried even if an earlier one failed; then the failures are raised."""
        errors: list[str] = []
        for host in self.hosts:
            try:
                host.kill_all()
            except NetworkError as exc:
                errors.append(str(exc))
            for args in (("netns", "del", host.netns), ("link", "del", host.veth)):
                result = ip(*args, check=False)
                if result.returncode != 0 and not _gone(result.stderr):
                    errors.append(f"ip {' '.join(args)}: {result.stderr.strip()}")
        if self.bridge:
            result = ip("link", "del", self.bridge, check=False)
            if result.returncode != 0 and not _gone(result.stderr):
                errors.append(f"ip link del {self.bridge}: {result.stderr.strip()}")
        if self.index >= 0:
            with contextlib.suppress(FileNotFoundError):
                self._lock(self.index).unlink()
            self.index = -1
        if errors:
            raise NetworkError("; ".join(errors))

    # ------------------------------------------------------------------- the subnet lock
    @staticmethod
    def _lock(index: int) -> Path:
        return LOCKS / subnet(index)

    def _record(self) -> str:
        return json.dumps({"pid": os.getpid(), "bridge": self.bridge,
                           "netns": [h.netns for h in self.hosts],
                           "veths": [h.veth for h in self.hosts]})

    def _claim(self) -> int:
        """Claim a free subnet: the first from the worker's number on whose lock file this
        process wins (O_EXCL) and that no address of the root namespace is in."""
        LOCKS.mkdir(mode=0o700, parents=True, exist_ok=True)
        for step in range(SUBNETS):
            index = (self.start * 8 + step) % SUBNETS
            path = self._lock(index)
            if path.exists():
                _reclaim(path)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                continue
            with os.fdopen(fd, "w") as f:
                f.write(self._record())
            if ip("-4", "-o", "addr", "show", "to", f"{subnet(index)}.0/24").stdout.strip():
                path.unlink()  # something outside these tests uses it
                continue
            return index
        raise NetworkError(f"no free subnet in 198.18.0.0/15 ({LOCKS} holds {SUBNETS} locks)")


def _reclaim(path: Path) -> None:
    """Delete what a dead process's lock names, then its lock.  Only one claimant wins the
    rename, so two never clean the same leftovers."""
    try:
        record = json.loads(path.read_text())
        pid = int(record["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return
    if _alive(pid):
        return
    taken = path.with_name(f"{path.name}.reclaim-{os.getpid()}")
    try:
        path.rename(taken)
    except FileNotFoundError:
        return
    for name in record.get("netns", []):
        for pid_left in ip("netns", "pids", name, check=False).stdout.split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid_left), signal.SIGKILL)
        ip("netns", "del", name, check=False)
    for link in [*record.get("veths", []), record.get("bridge", "")]:
        if link:
            ip("link", "del", link, check=False)
    taken.unlink()


def _gone(stderr: str) -> bool:
    return any(s in stderr for s in ("Cannot find device", "No such device", "No such file",
                                     "does not exist", os.strerror(errno.ENOENT)))


def _no_ipv6(link: str) -> None:
    with contextlib.suppress(OSError):
        Path(f"/proc/sys/net/ipv6/conf/{link}/disable_ipv6").write_text("1")
