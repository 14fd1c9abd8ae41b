"""The asyncio etcd client and its watch (see the package docstring for the behaviour)."""

from __future__ import annotations

import asyncio
import json
import random
import ssl
import time
from collections.abc import Callable, Iterable
from typing import Any, NoReturn

import httpx

from corral.errors import ClusterAuthError, ClusterError, ClusterTLSError
from corral.protocol.backoff import doubled

from .settings import EtcdSettings
from .wire import (
    DEADLINE_EXCEEDED,
    FAILED_PRECONDITION,
    INVALID_ARGUMENT,
    NOT_FOUND,
    PERMISSION_DENIED,
    UNAUTHENTICATED,
    UNAVAILABLE,
    Compacted,
    ConnState,
    Down,
    KeyValue,
    Lease,
    LeaseNotFound,
    TokenRejected,
    WatchBatch,
    WatchEvent,
    as_int,
    b64,
    key_value,
    prefix_end,
    revision_of,
    tidy,
    transport_problem,
    unreachable,
)


class EtcdClient:
    """An asyncio etcd v3 client over the JSON gateway; see the package docstring.

    Args:
        settings: endpoints, TLS, credentials, timeout.
        on_state: called (synchronously) with the new :class:`ConnState` whenever
            ``connected``, the endpoint or the last error changes.

    Resource handling: one pooled httpx client; each open :class:`Watch` holds one
    connection.  Call :meth:`aclose` when done.

    Raises (every request method): ClusterUnavailable when no endpoint answered,
    ClusterAuthError for refused credentials or permissions, ClusterTLSError when TLS
    failed on every endpoint, LeaseNotFound for an expired lease, ClusterError for any
    other refusal.
    """

    def __init__(self, settings: EtcdSettings,
                 on_state: Callable[[ConnState], None] | None = None) -> None:
        self._settings = settings
        self._endpoints = list(settings.endpoints)
        self._current = 0
        self._timeout = settings.timeout
        self._http = httpx.AsyncClient(
            verify=_ssl_context(settings), timeout=httpx.Timeout(settings.timeout),
            trust_env=False,  # an HTTP(S)_PROXY meant for other traffic must not carry etcd's
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=8))
        self._token: str | None = None
        self._auth_lock = asyncio.Lock()
        self._on_state = on_state
        self.state = ConnState(since=time.time())
        self._scopes: dict[asyncio.Timeout, str] = {}

    # ---------------------------------------------------------------- endpoints and state
    @property
    def endpoints(self) -> tuple[str, ...]:
        return tuple(self._endpoints)

    def set_endpoints(self, endpoints: Iterable[str]) -> None:
        """Use ``endpoints`` from now on (an endpoints file changed); open watches move
        to them when their current endpoint is no longer listed."""
        new = list(endpoints)
        if not new or new == self._endpoints:
            return
        gone = set(self._endpoints) - set(new)
        self._endpoints, self._current = new, 0
        for endpoint in gone:
            self._interrupt_watches(endpoint)

    def _endpoint(self) -> str:
        return self._endpoints[self._current % len(self._endpoints)]

    def _fail_over(self, endpoint: str) -> None:
        if self._endpoint() == endpoint:
            self._current = (self._current + 1) % len(self._endpoints)
        self._interrupt_watches(endpoint)

    def _interrupt_watches(self, endpoint: str) -> None:
        # A watch cannot tell a silent peer from a quiet prefix; a request that failed on
        # its endpoint can, so it moves the watch too.
        now = asyncio.get_running_loop().time()
        for scope, on in list(self._scopes.items()):
            if on == endpoint:
                scope.reschedule(now)

    def _set_state(self, connected: bool, endpoint: str | None, error: str | None) -> None:
        old = self.state
        if (old.connected, old.endpoint, old.last_error) == (connected, endpoint, error):
            return
        since = old.since if old.connected == connected else time.time()
        self.state = ConnState(connected, endpoint, error, since)
        if self._on_state is not None:
            self._on_state(self.state)

    def report(self, error: str) -> None:
        """Record ``error`` as the latest failure without a request (a bad endpoints file)."""
        self._set_state(self.state.connected, self.state.endpoint, error)

    def _up(self, endpoint: str) -> None:
        self._set_state(True, endpoint, self.state.last_error)

    def _down(self, error: str) -> None:
        self._set_state(False, self.state.endpoint, error)

    # ---------------------------------------------------------------------- requests
    async def _post(self, endpoint: str, path: str, body: dict[str, Any], *,
                    leader: bool) -> dict[str, Any]:
        headers = {"Grpc-Metadata-hasleader": "true"} if leader else {}
        if self._token:
            headers["Authorization"] = self._token
        try:
            response = await self._http.post(endpoint + path, json=body, headers=headers)
        except (httpx.HTTPError, OSError) as exc:  # OSError: a TLS alert httpx lets through
            raise self._problem(exc, endpoint) from None
        return self._decode(endpoint, path, response)

    def _problem(self, exc: Exception, endpoint: str) -> Down:
        return transport_problem(exc, self._timeout, endpoint,
                                  has_cert=self._settings.cert is not None)

    def _decode(self, endpoint: str, path: str, response: httpx.Response) -> dict[str, Any]:
        try:
            data = response.json()
        except ValueError:
            text = response.text.strip()
            if "HTTP request to an HTTPS server" in text:
                raise Down("TLS: the endpoint speaks https: use https:// and a CA",
                            tls=True) from None
            if "CommonName" in text:
                raise ClusterTLSError(
                    f"etcd at {endpoint} refuses the client certificate because it has a "
                    "CommonName (the gateway ignores CN users once auth is on): use a "
                    "certificate without CN, and a user and password") from None
            raise Down(f"not an etcd v3 endpoint (HTTP {response.status_code} for {path})"
                        ) from None
        if not isinstance(data, dict):
            raise Down(f"unexpected answer: {str(data)[:100]}")
        error = data.get("error")
        if isinstance(error, dict):  # the streaming endpoints' shape
            self._refuse(endpoint, as_int(error.get("grpc_code")), str(error.get("message", "")))
        if response.status_code != 200 or error is not None:
            self._refuse(endpoint, as_int(data.get("code")),
                         str(data.get("message") or error or f"HTTP {response.status_code}"))
        result = data.get("result")
        return result if isinstance(result, dict) else data

    def _refuse(self, endpoint: str, code: int, message: str) -> NoReturn:
        """Raise what etcd's refusal means."""
        text = tidy(message)
        user = self._settings.user
        if code in (UNAVAILABLE, DEADLINE_EXCEEDED) or "timed out" in text \
                or "no leader" in text:
            raise Down(text, transient=True)
        if code == UNAUTHENTICATED or (code == INVALID_ARGUMENT and "user name is empty" in text
                                         and user is not None and self._token is not None):
            raise TokenRejected(text)
        if code == INVALID_ARGUMENT and "user name is empty" in text:
            raise ClusterAuthError("etcd requires authentication: give a user and password",
                                   code)
        if code == INVALID_ARGUMENT and "authentication failed" in text:
            raise ClusterAuthError(f"etcd refused user {user!r}: wrong user name or password",
                                   code)
        if code == PERMISSION_DENIED:
            raise ClusterAuthError(f"etcd: permission denied for user {user!r} ({text})", code)
        if code == NOT_FOUND and "lease" in text:
            raise LeaseNotFound(f"etcd: {text}", code)
        raise ClusterError(f"etcd at {endpoint}: {text}", code)

    async def _authenticate(self, endpoint: str) -> None:
        """Get a token if a user is set and none is held (one request at a time)."""
        if self._settings.user is None:
            return
        async with self._auth_lock:
            if self._token is not None:
                return
            body = {"name": self._settings.user, "password": self._settings.password}
            try:
                data = await self._post(endpoint, "/v3/auth/authenticate", body, leader=False)
            except ClusterError as exc:
                if exc.grpc_code == FAILED_PRECONDITION:  # auth is not enabled: no token needed
                    self._token = ""
                    return
                raise
            self._token = str(data.get("token", ""))

    async def _call(self, path: str, body: dict[str, Any], *, leader: bool = False
                    ) -> dict[str, Any]:
        """Post to the current endpoint, failing over as the package docstring says.

        A round over every endpoint that fails only because etcd is busy (an election
        after its leader died, for one) is tried again for up to ``retry_for`` seconds;
        a round where every endpoint refused fails at once.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settings.retry_for
        while True:
            failures: list[tuple[str, Down]] = []
            for _ in range(len(self._endpoints) + 1):
                endpoint = self._endpoint()
                try:
                    data = await self._attempt(endpoint, path, body, leader=leader)
                except Down as down:
                    failures.append((endpoint, down))
                    self._fail_over(endpoint)
                    continue
                self._up(endpoint)
                return data
            if not any(down.transient for _, down in failures) or loop.time() >= deadline:
                error = unreachable(failures)
                self._down(str(error))
                raise error
            await asyncio.sleep(0.1)

    async def _attempt(self, endpoint: str, path: str, body: dict[str, Any], *,
                       leader: bool) -> dict[str, Any]:
        """One request to one endpoint, authenticating first (and again, once, if the
        token was refused).  Raises Down, or a ClusterError that ends the request."""
        try:
            try:
                await self._authenticate(endpoint)
                return await self._post(endpoint, path, body, leader=leader)
            except TokenRejected:
                self._token = None
                await self._authenticate(endpoint)
                return await self._post(endpoint, path, body, leader=leader)
        except TokenRejected as exc:
            error: ClusterError = ClusterAuthError(f"etcd keeps refusing the auth token of "
                                                   f"user {self._settings.user!r}: {exc}")
            self._down(str(error))
            raise error from None
        except ClusterError as exc:
            if not isinstance(exc, LeaseNotFound):
                self._down(str(exc))
            raise

    # ----------------------------------------------------------------------- the API
    async def status(self) -> dict[str, Any]:
        """``/v3/maintenance/status`` of the first endpoint that answers (version, leader)."""
        return await self._call("/v3/maintenance/status", {})

    async def range(self, key: str, range_end: bytes | None = None, *, limit: int = 0,
                    keys_only: bool = False, serializable: bool = False
                    ) -> tuple[list[KeyValue], int]:
        """Keys in ``[key, range_end)`` (just ``key`` without ``range_end``), and the
        store revision they were read at."""
        body: dict[str, Any] = {"key": b64(key), "limit": limit, "keys_only": keys_only,
                                "serializable": serializable}
        if range_end is not None:
            body["range_end"] = b64(range_end)
        data = await self._call("/v3/kv/range", body)
        return [key_value(raw) for raw in data.get("kvs", [])], revision_of(data)

    async def range_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        return await self.range(prefix, prefix_end(prefix))

    async def get(self, key: str) -> KeyValue | None:
        kvs, _ = await self.range(key)
        return kvs[0] if kvs else None

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        """Store ``value`` at ``key`` (bound to ``lease`` if not 0); returns the revision."""
        body: dict[str, Any] = {"key": b64(key), "value": b64(value)}
        if lease:
            body["lease"] = str(lease)
        return revision_of(await self._call("/v3/kv/put", body, leader=True))

    async def delete(self, key: str, range_end: bytes | None = None) -> int:
        """Delete ``key`` (or ``[key, range_end)``); returns how many keys went."""
        body = {"key": b64(key)}
        if range_end is not None:
            body["range_end"] = b64(range_end)
        return int((await self._call("/v3/kv/deleterange", body, leader=True)).get("deleted", 0))

    async def put_if(self, key: str, value: bytes, mod_revision: int, lease: int = 0
                     ) -> tuple[bool, int]:
        """Compare-and-swap: store ``value`` only if ``key``'s mod_revision is
        ``mod_revision`` (0: the key does not exist).  Returns ``(stored, revision)``."""
        put: dict[str, Any] = {"key": b64(key), "value": b64(value)}
        if lease:
            put["lease"] = str(lease)
        body = {"compare": [{"key": b64(key), "target": "MOD", "result": "EQUAL",
                             "mod_revision": str(mod_revision)}],
                "success": [{"request_put": put}], "failure": []}
        data = await self._call("/v3/kv/txn", body, leader=True)
        return bool(data.get("succeeded", False)), revision_of(data)

    async def compact(self, revision: int) -> None:
        """Drop the history before ``revision`` (watches older than it are told so)."""
        await self._call("/v3/kv/compaction", {"revision": str(revision), "physical": True},
                         leader=True)

    async def lease_grant(self, ttl: int) -> Lease:
        data = await self._call("/v3/lease/grant", {"TTL": ttl}, leader=True)
        if not as_int(data.get("ID"), 0):
            raise ClusterError(f"etcd granted no lease: {data.get('error') or 'no ID'}")
        return Lease(int(data["ID"]), as_int(data.get("TTL"), ttl))

    async def lease_keepalive(self, lease_id: int) -> int:
        """Refresh the lease; returns its TTL, 0 when it has expired (its keys are gone)."""
        data = await self._call("/v3/lease/keepalive", {"ID": str(lease_id)}, leader=True)
        return int(data.get("TTL", 0))

    async def lease_revoke(self, lease_id: int) -> None:
        """Revoke the lease (its keys are deleted at once); an expired lease is fine."""
        try:
            await self._call("/v3/lease/revoke", {"ID": str(lease_id)}, leader=True)
        except LeaseNotFound:
            pass

    def watch_prefix(self, prefix: str, on_batch: Callable[[WatchBatch], None], *,
                     start_revision: int = 0) -> Watch:
        """Start a :class:`Watch` of every key under ``prefix``; see its docstring."""
        watch = Watch(self, prefix, on_batch, start_revision)
        watch.start()
        return watch

    async def aclose(self) -> None:
        await self._http.aclose()


def _ssl_context(settings: EtcdSettings) -> ssl.SSLContext | bool:
    if settings.ca is None and settings.cert is None:
        return True  # httpx's default: the system's CAs, for https endpoints
    try:
        context = ssl.create_default_context(cafile=str(settings.ca) if settings.ca else None)
        if settings.cert is not None and settings.key is not None:
            context.load_cert_chain(str(settings.cert), str(settings.key))
    except (OSError, ssl.SSLError) as exc:
        files = ", ".join(str(p) for p in (settings.ca, settings.cert, settings.key) if p)
        raise ClusterTLSError(f"cannot load the TLS files ({files}): "
                              f"{getattr(exc, 'strerror', None) or exc}") from None
    return context


class Watch:
    """A watch of every key under a prefix that survives reconnects.

    It first lists the prefix and hands the whole set over as one ``reset`` batch (or,
    given ``start_revision``, starts with the events from that revision on), then hands
    over each batch of events as it comes.  When its endpoint fails it reconnects
    (next endpoint, backing off from 50 ms to 1 s while none answers) and resumes at the
    revision after the last one seen, so no event is lost or repeated; if that revision
    was compacted meanwhile, it lists again and hands over a new ``reset`` batch.

    ``on_batch`` is called synchronously from the watch's task and must not raise.
    Resource handling: one connection while open; :meth:`stop` closes it.
    """

    def __init__(self, client: EtcdClient, prefix: str,
                 on_batch: Callable[[WatchBatch], None], start_revision: int = 0) -> None:
        self._client = client
        self._prefix = prefix
        self._on_batch = on_batch
        #: the last revision handed over (the stream resumes after it)
        self.revision = max(0, start_revision - 1)
        self._listed = start_revision > 0
        self._streaming = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="etcd watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        delay = 0.0
        failures = 0
        while True:
            if delay:
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            endpoint = self._client._endpoint()
            self._streaming = False
            try:
                if not self._listed:
                    kvs, revision = await self._client.range_prefix(self._prefix)
                    self.revision, self._listed = revision, True
                    self._on_batch(WatchBatch(revision, reset=True, kvs=tuple(kvs)))
                    endpoint = self._client._endpoint()
                await self._stream(endpoint)
            except Compacted:
                self._listed, delay = False, 0.0
                continue
            except TokenRejected:
                self._client._token = None
            except Down as down:
                self._client._fail_over(endpoint)
                if not self._streaming:
                    failures += 1
                    if failures >= len(self._client.endpoints):
                        self._client._down(unreachable([(endpoint, down)]).message)
            except ClusterError as exc:  # a refusal: record it, try again after a pause
                self._client._down(exc.message)
            except Exception as exc:  # a bug must not end the watch for good: say it, go on
                self._client._down(f"the watch of {self._prefix} failed: "
                                   f"{type(exc).__name__}: {exc}")
            if self._streaming:  # it was working until now: reconnect (almost) at once
                failures, delay = 0, 0.05
            else:
                delay = doubled(delay, 0.05, 1.0)

    async def _stream(self, endpoint: str) -> None:
        """Follow the watch stream on ``endpoint`` until it fails (always raises)."""
        client = self._client
        await client._authenticate(endpoint)
        headers = {"Authorization": client._token} if client._token else {}
        body = {"create_request": {"key": b64(self._prefix),
                                   "range_end": b64(prefix_end(self._prefix)),
                                   "start_revision": str(self.revision + 1),
                                   "progress_notify": True}}
        # No read timeout: a watch is quiet for as long as nothing changes.
        timeout = httpx.Timeout(client._timeout, read=None)
        try:
            async with client._http.stream("POST", endpoint + "/v3/watch", json=body,
                                           headers=headers, timeout=timeout) as response:
                if response.status_code != 200:
                    await response.aread()
                    client._decode(endpoint, "/v3/watch", response)
                    raise Down(f"HTTP {response.status_code} for /v3/watch")
                lines = response.aiter_lines()
                while True:
                    async with asyncio.timeout(None) as scope:
                        client._scopes[scope] = endpoint
                        try:
                            line = await anext(lines, None)
                        finally:
                            del client._scopes[scope]
                    if line is None:
                        raise Down("the watch stream ended")
                    if line.strip():
                        self._handle(endpoint, line)
        except TimeoutError:  # the scope above, moved to now by _interrupt_watches
            raise Down("its endpoint failed another request") from None
        except (httpx.HTTPError, OSError) as exc:  # OSError: a TLS alert httpx lets through
            raise client._problem(exc, endpoint) from None

    def _handle(self, endpoint: str, line: str) -> None:
        try:
            message = json.loads(line)
            error = message.get("error")
            result = message.get("result", {})
            events = tuple(WatchEvent(key_value(raw.get("kv", {})), raw.get("type") == "DELETE")
                           for raw in result.get("events", []))
            compacted = as_int(result.get("compact_revision"), 0)
            progress = revision_of(result)
        except (ValueError, TypeError, AttributeError):  # not the gateway's JSON
            raise Down(f"unreadable watch answer: {line[:100]}") from None
        if isinstance(error, dict):
            self._client._refuse(endpoint, as_int(error.get("grpc_code")),
                                 str(error.get("message", "")))
        if result.get("canceled"):
            if compacted:
                raise Compacted()
            raise ClusterError(f"etcd cancelled the watch of {self._prefix}: "
                               f"{result.get('cancel_reason') or 'no reason given'}")
        if result.get("created"):
            self._streaming = True
            self._client._up(endpoint)
            return
        if not events:  # a progress notice: nothing is pending up to its revision
            self.revision = max(self.revision, progress)
            return
        self.revision = max(self.revision, *(e.kv.mod_revision for e in events))
        self._on_batch(WatchBatch(self.revision, events))
