"""The etcd client (corral.cluster.etcd) against a real etcd: keys, leases, compare-and-swap,
watches that survive a lost endpoint and compaction, fail-over across a 3-member cluster,
and the one-line errors for endpoints that are wrong."""

from __future__ import annotations

import asyncio
import http.server
import threading
from collections.abc import Iterator

import pytest

from corral.cluster.etcd import EtcdClient, EtcdSettings, WatchBatch, prefix_end
from corral.errors import ClusterUnavailable

from .etcd_fixtures import EtcdCluster, EtcdMember, free_port, until

pytestmark = pytest.mark.slow


def client_for(*urls: str, **settings: object) -> EtcdClient:
    return EtcdClient(EtcdSettings(tuple(urls), **settings))  # type: ignore[arg-type]


class Recorder:
    """Collects watch batches and folds them into a key -> value view."""

    def __init__(self) -> None:
        self.batches: list[WatchBatch] = []
        self.view: dict[str, bytes] = {}
        self.seen: list[tuple[int, str, bool]] = []

    def __call__(self, batch: WatchBatch) -> None:
        self.batches.append(batch)
        if batch.reset:
            self.view = {kv.key: kv.value for kv in batch.kvs}
        for event in batch.events:
            self.seen.append((event.kv.mod_revision, event.kv.key, event.deleted))
            if event.deleted:
                self.view.pop(event.kv.key, None)
            else:
                self.view[event.kv.key] = event.kv.value


def test_keys_leases_and_compare_and_swap(etcd: EtcdMember) -> None:
    """1. put/get/range/delete round-trip bytes; 2. put_if stores only on the expected
    revision (0: absent); 3. a lease's keys go when it is revoked, and keepalive of a
    revoked lease says 0."""
    async def scenario() -> None:
        client = client_for(etcd.url)
        try:
            await client.put("/t/a", b"\x00\xffbin")
            await client.put("/t/b", b"2")
            await client.put("/u", b"outside")
            got = await client.get("/t/a")
            assert got is not None and got.value == b"\x00\xffbin"
            kvs, revision = await client.range_prefix("/t/")
            assert [kv.key for kv in kvs] == ["/t/a", "/t/b"] and revision >= 3
            assert await client.get("/nope") is None

            assert await client.put_if("/t/c", b"first", 0) == (True, revision + 1)
            stored, _ = await client.put_if("/t/c", b"second", 0)
            assert not stored
            current = await client.get("/t/c")
            assert current is not None and current.value == b"first"
            stored, _ = await client.put_if("/t/c", b"second", current.mod_revision)
            assert stored

            lease = await client.lease_grant(5)
            assert lease.ttl == 5
            await client.put("/t/leased", b"x", lease.id)
            assert await client.lease_keepalive(lease.id) == 5
            await client.lease_revoke(lease.id)
            assert await client.get("/t/leased") is None
            assert await client.lease_keepalive(lease.id) == 0
            await client.lease_revoke(lease.id)  # already gone: fine

            assert await client.delete("/t/", prefix_end("/t/")) == 3
            assert client.state.connected and client.state.endpoint == etcd.url
        finally:
            await client.aclose()
    asyncio.run(scenario())


def test_watch_lists_then_follows_puts_and_deletes(etcd: EtcdMember) -> None:
    """A watch first hands over the prefix as a reset batch, then every put and delete
    under the prefix (and nothing outside it), in revision order."""
    async def scenario() -> None:
        client = client_for(etcd.url)
        await client.put("/w/before", b"0")
        recorder = Recorder()
        watch = client.watch_prefix("/w/", recorder)
        try:
            await until(lambda: recorder.batches, what="the listing")
            assert recorder.batches[0].reset and recorder.view == {"/w/before": b"0"}
            await until(lambda: client.state.connected, what="the stream")
            await client.put("/w/a", b"1")
            await client.put("/other", b"x")
            await client.delete("/w/before")
            await until(lambda: len(recorder.seen) == 2, what="two events")
            assert recorder.view == {"/w/a": b"1"}
            assert [s[2] for s in recorder.seen] == [False, True]
            assert recorder.seen[0][0] < recorder.seen[1][0]
        finally:
            await watch.stop()
            await client.aclose()
    asyncio.run(scenario())


def test_watch_started_at_a_compacted_revision_lists_again(etcd: EtcdMember) -> None:
    """Resuming at a revision etcd has compacted away gives a fresh reset batch with
    every key, then events as usual."""
    async def scenario() -> None:
        client = client_for(etcd.url)
        try:
            for i in range(5):
                await client.put(f"/c/{i}", str(i).encode())
            _, revision = await client.range_prefix("/c/")
            await client.compact(revision)
            recorder = Recorder()
            watch = client.watch_prefix("/c/", recorder, start_revision=2)
            try:
                await until(lambda: any(b.reset for b in recorder.batches), what="a reset")
                assert recorder.view == {f"/c/{i}": str(i).encode() for i in range(5)}
                await until(lambda: client.state.connected, what="the stream")
                await client.put("/c/new", b"n")
                await until(lambda: "/c/new" in recorder.view, what="the new key")
            finally:
                await watch.stop()
        finally:
            await client.aclose()
    asyncio.run(scenario())


def test_cluster_fail_over_keeps_requests_and_watches_going(etcd_cluster: EtcdCluster) -> None:
    """1. Kill the member the client uses: the next request and the watch move to another
    member, and no event is lost or repeated; 2. kill a second (no quorum): requests fail
    with one line naming every endpoint; 3. start both again: requests work and the
    watch resumes where it was."""
    async def scenario() -> None:
        client = client_for(*etcd_cluster.urls, timeout=1.0)
        recorder = Recorder()
        watch = client.watch_prefix("/f/", recorder)
        try:
            await client.put("/f/0", b"0")
            await until(lambda: "/f/0" in recorder.view, what="the first event")
            used = next(m for m in etcd_cluster.members if m.url == client.state.endpoint)
            used.kill()
            for i in range(1, 6):
                await client.put(f"/f/{i}", str(i).encode())
            assert client.state.connected and client.state.endpoint != used.url
            await until(lambda: len(recorder.view) == 6, what="every key on the watch")
            revisions = [s[0] for s in recorder.seen]
            assert revisions == sorted(set(revisions)), "an event was lost or repeated"

            second = next(m for m in etcd_cluster.members
                          if m.url == client.state.endpoint)
            second.kill()
            with pytest.raises(ClusterUnavailable) as failed:
                await client.put("/f/x", b"x")
            message = str(failed.value)
            assert message.startswith("no etcd endpoint answers: ")
            assert all(url in message for url in etcd_cluster.urls)
            assert "\n" not in message
            assert not client.state.connected and client.state.last_error == message

            used.start()
            second.start()
            used.wait_healthy()
            second.wait_healthy()

            async def write() -> bool:
                try:
                    await client.put("/f/back", b"b")
                except ClusterUnavailable:
                    return False
                return True
            await until_ok(write)
            assert client.state.connected
            await until(lambda: "/f/back" in recorder.view, what="the watch to resume")
            revisions = [s[0] for s in recorder.seen]
            assert revisions == sorted(set(revisions))
        finally:
            await watch.stop()
            await client.aclose()
    asyncio.run(scenario())


async def until_ok(attempt: object, timeout: float = 20) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await attempt():  # type: ignore[operator]
        assert loop.time() < deadline, "the cluster did not come back"
        await asyncio.sleep(0.1)


@pytest.fixture
def not_etcd() -> Iterator[str]:
    """An HTTP server that is not etcd (answers 404 to everything)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_wrong_endpoints_fail_with_one_line_naming_each(not_etcd: str) -> None:
    """Nothing listening, and something that is not etcd: one line with each endpoint
    and why."""
    async def scenario() -> None:
        closed = f"http://127.0.0.1:{free_port()}"
        client = client_for(closed, not_etcd)
        try:
            with pytest.raises(ClusterUnavailable) as failed:
                await client.status()
        finally:
            await client.aclose()
        assert str(failed.value) == (
            f"no etcd endpoint answers: {closed}: connection refused; "
            f"{not_etcd}: not an etcd v3 endpoint (HTTP 501 for /v3/maintenance/status)")
    asyncio.run(scenario())
