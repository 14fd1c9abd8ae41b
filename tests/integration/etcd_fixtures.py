"""Real etcd for the tests: one member, a 3-member cluster, TLS certificates, users.

``etcd`` (fixture) is a started single member on free loopback ports with its own data
directory under ``tmp_path``; ``etcd_cluster`` three members of one cluster;
``etcd_factory`` makes members with extra flags (TLS, a short auth token TTL) for a test
to start itself.  Everything is killed after the test.  Members can be killed and
started again on the same data directory and ports, to test what clients do meanwhile.

``Pki`` writes a CA, a server certificate for 127.0.0.1 and a client certificate without
a CommonName (etcd's gateway refuses CN certificates once auth is on).
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
ETCDCTL = shutil.which("etcdctl") or "/usr/bin/etcdctl"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class EtcdMember:
    """One etcd process; ``start`` again after ``kill`` reuses its data and ports.
    Clients reach it at ``host`` (loopback unless a test's hosts need another address)."""

    def __init__(self, root: Path, name: str, *, tls: Pki | None = None,
                 extra: tuple[str, ...] = (), host: str = "127.0.0.1") -> None:
        self.name = name
        self.host = host
        self.data = root / name
        self.log = root / f"{name}.log"
        self.tls = tls
        self.extra = extra
        self.client_port = free_port(host)
        self.peer_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.initial_cluster = f"{name}={self.peer_url}"

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def command(self) -> list[str]:
        cmd = [ETCD, "--name", self.name, "--data-dir", str(self.data),
               "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
               "--listen-peer-urls", self.peer_url,
               "--initial-advertise-peer-urls", self.peer_url,
               "--initial-cluster", self.initial_cluster,
               "--initial-cluster-token", f"corral-test-{os.getpid()}",
               "--initial-cluster-state", "new", "--logger", "zap",
               "--log-outputs", str(self.log)]
        if self.tls is not None:
            cmd += ["--cert-file", str(self.tls.server_cert), "--key-file",
                    str(self.tls.server_key), "--client-cert-auth",
                    "--trusted-ca-file", str(self.tls.ca)]
        return cmd + list(self.extra)

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def healthy(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            return False
        verify: Any = self.tls.client_context() if self.tls else True
        try:
            r = httpx.get(f"{self.url}/health", timeout=1, verify=verify, trust_env=False)
            return r.status_code == 200 and r.json().get("health") == "true"
        except (httpx.HTTPError, OSError, ValueError):
            return False

    def wait_healthy(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.healthy():
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"etcd {self.name} exited {self.proc.returncode}: "
                                   f"{self.log.read_text()[-2000:]}")
            time.sleep(0.05)
        raise RuntimeError(f"etcd {self.name} not healthy after {timeout}s")

    def kill(self) -> None:
        """SIGKILL, as a crash or a pulled plug would."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def etcdctl(self, *args: str, user: str | None = None) -> str:
        """Run etcdctl against this member (with the client certificate when TLS)."""
        cmd = [ETCDCTL, f"--endpoints={self.url}"]
        if self.tls is not None:
            cmd += [f"--cacert={self.tls.ca}", f"--cert={self.tls.client_cert}",
                    f"--key={self.tls.client_key}"]
        if user is not None:
            cmd += [f"--user={user}"]
        result = subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=30,
                                env={**os.environ, "ETCDCTL_API": "3"})
        assert result.returncode == 0, f"etcdctl {' '.join(args)}: {result.stderr}"
        return result.stdout


class EtcdCluster:
    """Several members of one etcd cluster."""

    def __init__(self, root: Path, size: int = 3) -> None:
        self.members = [EtcdMember(root, f"m{i}") for i in range(1, size + 1)]
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        for m in self.members:
            m.initial_cluster = initial

    @property
    def urls(self) -> list[str]:
        return [m.url for m in self.members]

    def start(self) -> None:
        for m in self.members:
            m.start()
        for m in self.members:
            m.wait_healthy()

    def stop(self) -> None:
        for m in self.members:
            m.kill()


def _started(member: EtcdMember) -> EtcdMember:
    member.start()
    member.wait_healthy()
    return member


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdMember]:
    """A started single-member etcd on free loopback ports, killed after the test."""
    member = EtcdMember(tmp_path / "etcd", "s1")
    member.data.parent.mkdir()
    try:
        yield _started(member)
    finally:
        member.kill()


@pytest.fixture
def etcd_cluster(tmp_path: Path) -> Iterator[EtcdCluster]:
    """A started 3-member etcd cluster on loopback, killed after the test."""
    (tmp_path / "etcd").mkdir()
    cluster = EtcdCluster(tmp_path / "etcd")
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def etcd_factory(tmp_path: Path) -> Iterator[Callable[..., EtcdMember]]:
    """Make (not start) single members with TLS or extra flags; all killed after the test."""
    made: list[EtcdMember] = []
    root = tmp_path / "etcd"
    root.mkdir()

    def make(name: str = "s1", *, tls: Pki | None = None, extra: tuple[str, ...] = ()
             ) -> EtcdMember:
        member = EtcdMember(root, name, tls=tls, extra=extra)
        made.append(member)
        return member

    yield make
    for member in made:
        member.kill()


# -------------------------------------------------------------------------- certificates
class Pki:
    """A CA, a server certificate (127.0.0.1, localhost) and a client certificate
    without a CommonName; also ``cn_cert``/``cn_key``, a client certificate of the same CA
    with CommonName ``cn``."""

    def __init__(self, root: Path, *, cn: str = "corral") -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        root.mkdir(parents=True, exist_ok=True)
        now = datetime.datetime.now(datetime.UTC)

        def key() -> ec.EllipticCurvePrivateKey:
            return ec.generate_private_key(ec.SECP256R1())

        def write_key(path: Path, k: ec.EllipticCurvePrivateKey) -> Path:
            path.write_bytes(k.private_bytes(serialization.Encoding.PEM,
                                             serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()))
            path.chmod(0o600)
            return path

        def write_cert(path: Path, cert: x509.Certificate) -> Path:
            path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
            return path

        ca_key = key()
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "corral test CA")])
        ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
              .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - datetime.timedelta(minutes=5))
              .not_valid_after(now + datetime.timedelta(days=1))
              .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
              .sign(ca_key, hashes.SHA256()))

        def issue(subject: x509.Name, usage: list[Any], san: list[Any] | None
                  ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
            k = key()
            builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_name)
                       .public_key(k.public_key()).serial_number(x509.random_serial_number())
                       .not_valid_before(now - datetime.timedelta(minutes=5))
                       .not_valid_after(now + datetime.timedelta(days=1))
                       .add_extension(x509.ExtendedKeyUsage(usage), critical=False))
            if san:
                builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
            return builder.sign(ca_key, hashes.SHA256()), k

        server, server_key = issue(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "etcd")]),
            # etcd's gateway dials etcd's own gRPC port with the server certificate.
            [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")])
        org = x509.NameAttribute(NameOID.ORGANIZATION_NAME, "supervisor")
        client, client_key = issue(x509.Name([org]), [ExtendedKeyUsageOID.CLIENT_AUTH], None)
        named, named_key = issue(x509.Name([org, x509.NameAttribute(NameOID.COMMON_NAME, cn)]),
                                 [ExtendedKeyUsageOID.CLIENT_AUTH], None)
        self.ca = write_cert(root / "ca.crt", ca)
        self.server_cert = write_cert(root / "server.crt", server)
        self.server_key = write_key(root / "server.key", server_key)
        self.client_cert = write_cert(root / "client.crt", client)
        self.client_key = write_key(root / "client.key", client_key)
        self.cn_cert = write_cert(root / "cn.crt", named)
        self.cn_key = write_key(root / "cn.key", named_key)

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca))
        context.load_cert_chain(str(self.client_cert), str(self.client_key))
        return context


# ------------------------------------------------------------------------ async helpers
async def until(predicate: Callable[[], Any], timeout: float = 15.0, what: str = "condition",
                interval: float = 0.02) -> Any:
    """Poll ``predicate`` on the running loop until it is truthy; fail after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: Any = None
    while loop.time() < deadline:
        last = predicate()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


async def until_async(predicate: Callable[[], Awaitable[Any]], timeout: float = 15.0,
                      what: str = "condition", interval: float = 0.05) -> Any:
    """:func:`until` for an async predicate; exceptions count as not yet."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: Any = None
    while loop.time() < deadline:
        try:
            last = await predicate()
        except Exception as exc:  # the system under test may be between states
            last = exc
        else:
            if last:
                return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def dump_keys(member: EtcdMember, prefix: str = "/") -> dict[str, str]:
    """Every key under ``prefix`` and its value, read with etcdctl (a second opinion)."""
    out = member.etcdctl("get", prefix, "--prefix", "-w", "json")
    data = json.loads(out)
    return {base64.b64decode(kv["key"]).decode(): base64.b64decode(kv.get("value", "")).decode()
            for kv in data.get("kvs", [])}
