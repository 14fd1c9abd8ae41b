"""TLS and user/password between the etcd client and a real etcd: what works, and the
one-line error for each way it can be set up wrong."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from corral.cluster.etcd import EtcdClient, EtcdSettings, WatchBatch
from corral.errors import ClusterAuthError, ClusterError, ClusterTLSError

from .etcd_fixtures import EtcdMember, Pki, until_async

pytestmark = pytest.mark.slow

PASSWORD = "s3cret-Pass-9d1c"


def keys(batch: WatchBatch) -> list[str]:
    """The keys a watch batch mentions (listed, put or deleted)."""
    return [kv.key for kv in batch.kvs] + [e.kv.key for e in batch.events]


async def status_error(settings: EtcdSettings) -> ClusterError:
    client = EtcdClient(settings)
    try:
        with pytest.raises(ClusterError) as failed:
            await client.range("/corral/default/x")
    finally:
        await client.aclose()
    message = str(failed.value)
    assert "\n" not in message and PASSWORD not in message
    return failed.value


def test_tls_with_a_client_certificate(tmp_path: Path,
                                       etcd_factory: Callable[..., EtcdMember]) -> None:
    """1. CA + client certificate: requests and watches work over https;
    2. no client certificate, an untrusted server: each a ClusterTLSError saying what to
    fix; http:// to the TLS port: the line says to use https://."""
    pki = Pki(tmp_path / "pki")
    member = etcd_factory(tls=pki)
    member.start()
    member.wait_healthy()
    url = member.url
    assert url.startswith("https://")

    async def scenario() -> None:
        good = EtcdSettings((url,), ca=pki.ca, cert=pki.client_cert, key=pki.client_key)
        client = EtcdClient(good)
        seen: list[str] = []
        watch = client.watch_prefix("/tls/", lambda b: seen.extend(keys(b)))
        try:
            await client.put("/tls/a", b"1")
            got = await client.get("/tls/a")
            assert got is not None and got.value == b"1"
            await until_async(lambda: asyncio.sleep(0, "/tls/a" in seen), what="the watch")
        finally:
            await watch.stop()
            await client.aclose()

        no_cert = await status_error(EtcdSettings((url,), ca=pki.ca))
        assert isinstance(no_cert, ClusterTLSError)
        assert str(no_cert).startswith(f"no TLS connection to etcd: {url}: TLS: ")
        assert "client certificate" in str(no_cert)

        untrusted = await status_error(EtcdSettings((url,)))
        assert isinstance(untrusted, ClusterTLSError)
        assert "certificate is not trusted" in str(untrusted) and "check the CA" in str(untrusted)

        plain = url.replace("https://", "http://")
        wrong_scheme = await status_error(EtcdSettings((plain,)))
        assert str(wrong_scheme) == (f"no etcd endpoint answers: {plain}: the endpoint hung up "
                                     "without answering (if it serves TLS, use https://)")
    asyncio.run(scenario())


def test_https_to_a_plain_endpoint_says_so(etcd: EtcdMember, tmp_path: Path) -> None:
    """https:// to an etcd without TLS: the line says to use http://."""
    pki = Pki(tmp_path / "pki")
    url = etcd.url.replace("http://", "https://")

    async def scenario() -> None:
        error = await status_error(EtcdSettings((url,), ca=pki.ca))
        assert isinstance(error, ClusterTLSError)
        assert str(error) == (f"no TLS connection to etcd: {url}: TLS: the endpoint hung up "
                              "during the handshake (if it does not serve TLS, use http://)")
    asyncio.run(scenario())


def enable_auth(member: EtcdMember, prefix: str = "/corral/") -> None:
    """root and a user 'corral' allowed to read and write under ``prefix`` only."""
    member.etcdctl("user", "add", f"root:{PASSWORD}-root")
    member.etcdctl("role", "add", "corral-rw")
    member.etcdctl("role", "grant-permission", "corral-rw", "readwrite", prefix, "--prefix=true")
    member.etcdctl("user", "add", f"corral:{PASSWORD}")
    member.etcdctl("user", "grant-role", "corral", "corral-rw")
    member.etcdctl("auth", "enable")


def test_user_and_password(etcd: EtcdMember) -> None:
    """1. The right user works inside its prefix and is refused outside it; 2. a wrong
    password, no user at all: ClusterAuthError saying which; 3. after etcd restarts, and
    after its tokens are dropped, the client authenticates again by itself."""
    enable_auth(etcd)

    async def scenario() -> None:
        settings = EtcdSettings((etcd.url,), user="corral", password=PASSWORD)
        client = EtcdClient(settings)
        try:
            await client.put("/corral/default/a", b"1")
            seen: list[str] = []
            watch = client.watch_prefix("/corral/", lambda b: seen.extend(keys(b)))
            await until_async(lambda: asyncio.sleep(0, "/corral/default/a" in seen),
                              what="the listing")
            with pytest.raises(ClusterAuthError) as denied:
                await client.put("/elsewhere", b"x")
            assert str(denied.value).startswith("etcd: permission denied for user 'corral'")

            etcd.kill()
            etcd.start()
            etcd.wait_healthy()

            async def works() -> bool:
                await client.put("/corral/default/b", b"2")
                return True
            await until_async(works, what="requests after the restart")
            # Turning auth off and on drops every token: the client's next request is
            # refused once, it authenticates again, and the request goes through.
            token = client._token
            root = f"root:{PASSWORD}-root"
            etcd.etcdctl("auth", "disable", user=root)
            etcd.etcdctl("auth", "enable")
            await client.put("/corral/default/c", b"3")
            assert client._token not in (None, "", token)
            await until_async(lambda: asyncio.sleep(0, "/corral/default/b" in seen),
                              what="the watch after the restart")
            await watch.stop()
        finally:
            await client.aclose()

        wrong = await status_error(EtcdSettings((etcd.url,), user="corral", password="nope"))
        assert isinstance(wrong, ClusterAuthError)
        assert str(wrong) == "etcd refused user 'corral': wrong user name or password"

        anonymous = await status_error(EtcdSettings((etcd.url,)))
        assert isinstance(anonymous, ClusterAuthError)
        assert str(anonymous) == "etcd requires authentication: give a user and password"
    asyncio.run(scenario())


def test_tls_and_password_together(tmp_path: Path,
                                   etcd_factory: Callable[..., EtcdMember]) -> None:
    """The recommended setup: TLS with a client certificate without a CommonName, plus a
    user and password.  A certificate with a CommonName is refused with the reason."""
    pki = Pki(tmp_path / "pki")
    member = etcd_factory(tls=pki)
    member.start()
    member.wait_healthy()
    enable_auth(member)

    async def scenario() -> None:
        good = EtcdSettings((member.url,), ca=pki.ca, cert=pki.client_cert, key=pki.client_key,
                            user="corral", password=PASSWORD)
        client = EtcdClient(good)
        try:
            await client.put("/corral/default/t", b"1")
            assert (await client.get("/corral/default/t")) is not None
        finally:
            await client.aclose()
        cn_settings = EtcdSettings((member.url,), ca=pki.ca, cert=pki.cn_cert, key=pki.cn_key,
                                   user="corral", password=PASSWORD)
        refused = await status_error(cn_settings)
        assert isinstance(refused, ClusterTLSError)
        assert str(refused).startswith(f"etcd at {member.url} refuses the client certificate "
                                       "because it has a CommonName")
    asyncio.run(scenario())
