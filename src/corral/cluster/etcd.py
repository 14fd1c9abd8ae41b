"""The one module that speaks to etcd: an asyncio client over etcd's v3 JSON gateway.

etcd serves its gRPC API as JSON under ``/v3/`` (grpc-gateway); this client posts to it
with httpx (see ``reference/etcd-eval.md`` for why: asyncio, TLS, auth and the election
API, with no gRPC stack).  What it does about the gateway's ways:

- keys and values travel base64-encoded; int64 fields come back as text; fields equal to
  their default are left out (``succeeded: false`` is absent), so every read has a default;
- **several endpoints**: a request goes to the current one; a transport failure, a
  timeout or etcd's "unavailable / no leader / timed out" moves to the next one (the
  first is tried twice in a round: a pooled connection the server closed is not a dead
  endpoint).  Requests have a short timeout (1 s by default), because a follower whose
  leader died holds a request for up to 7 s before it answers; while the endpoints are
  only busy (no answer in time, no leader yet), rounds go on for ``retry_for`` (3 s),
  which covers an election; when every endpoint refuses, the request fails at once;
- writes and keepalives carry ``Grpc-Metadata-hasleader: true``, so a member that lost
  its quorum says so at once instead of timing out;
- **user/password**: ``/v3/auth/authenticate`` gives a token sent as the raw
  ``Authorization`` header; a token etcd no longer accepts (expired, or its member
  restarted) is replaced by authenticating again, once per request;
- **TLS**: a CA to trust and an optional client certificate (without a CommonName: once
  auth is on, the gateway refuses certificates that have one);
- **watches** (:class:`Watch`) survive a lost endpoint: they reconnect to the next one
  and resume at the revision after the last one seen; when that revision was compacted
  they list the prefix again and hand over the whole set (``reset``).

Errors are :class:`~corral.errors.ClusterError` subclasses with one line a person can act
on: :class:`~corral.errors.ClusterUnavailable` names every endpoint and why it failed,
:class:`~corral.errors.ClusterAuthError` the user, :class:`~corral.errors.ClusterTLSError`
what does not match.  The password never appears in a message or a repr.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import json
import random
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

import httpx

from corral.errors import (
    ClusterAuthError,
    ClusterError,
    ClusterTLSError,
    ClusterUnavailable,
    SpecError,
)

DEFAULT_PORT = 2379
DEFAULT_TIMEOUT = 1.0
DEFAULT_RETRY_FOR = 3.0

# gRPC status codes etcd answers with (google.golang.org/grpc/codes).
_INVALID_ARGUMENT = 3
_DEADLINE_EXCEEDED = 4
_NOT_FOUND = 5
_PERMISSION_DENIED = 7
_FAILED_PRECONDITION = 9
_UNAVAILABLE = 14
_UNAUTHENTICATED = 16

# OpenSSL reasons, and what they mean for someone setting up the link.
_TLS_HINTS = {
    "WRONG_VERSION_NUMBER": "the endpoint does not speak TLS: use http://",
    "RECORD_LAYER_FAILURE": "the endpoint does not speak TLS: use http://",
    "PACKET_LENGTH_TOO_LONG": "the endpoint does not speak TLS: use http://",
    "UNEXPECTED_EOF_WHILE_READING":
        "the endpoint hung up during the handshake (if it does not serve TLS, use http://)",
}
# Alerts with which an endpoint refuses the client's certificate, or its lack of one.
_CERT_REFUSED = {"TLSV13_ALERT_CERTIFICATE_REQUIRED", "SSLV3_ALERT_BAD_CERTIFICATE",
                 "TLSV1_ALERT_UNKNOWN_CA", "SSLV3_ALERT_CERTIFICATE_UNKNOWN"}


@dataclass(frozen=True)
class EtcdSettings:
    """How to reach etcd.

    Args:
        endpoints: client URLs (:func:`parse_endpoints`), tried in order.
        ca: PEM file of the CA that signed the endpoints' certificates (https).
        cert, key: a client certificate and its key, for endpoints that ask for one.
        user, password: etcd user; the password is never shown (repr, messages).
        timeout: seconds for one request to one endpoint (connect and answer).
        retry_for: seconds a request keeps going round the endpoints while etcd is busy
            (an election takes 1-2 s with etcd's default timings).
    """

    endpoints: tuple[str, ...]
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout: float = DEFAULT_TIMEOUT
    retry_for: float = DEFAULT_RETRY_FOR

    def __post_init__(self) -> None:
        if not self.endpoints:
            raise SpecError("no etcd endpoint given")
        if (self.cert is None) != (self.key is None):
            raise SpecError("a client certificate needs its key, and a key its certificate")
        if self.user is not None and self.password is None:
            raise SpecError(f"etcd user {self.user!r} has no password")


def parse_endpoints(text: str | Iterable[str], *, tls: bool = False) -> tuple[str, ...]:
    """Normalise endpoints to ``scheme://host:port``.

    ``text`` is one string (items separated by commas, spaces or new lines; ``#`` starts
    a comment, as in an endpoints file) or an iterable of items.  An item without a
    scheme gets ``https`` when ``tls``, else ``http``; one without a port gets 2379.

    Raises:
        SpecError: an item that is not an http(s) URL of a host, naming it.
    """
    if isinstance(text, str):
        lines = (line.split("#", 1)[0] for line in text.splitlines())
        items = [item for line in lines for item in line.replace(",", " ").split()]
    else:
        items = [item.strip() for item in text if item.strip()]
    out: list[str] = []
    for item in items:
        url = item if "://" in item else f"{'https' if tls else 'http'}://{item}"
        try:
            parts = urlsplit(url)
            port = parts.port or DEFAULT_PORT
        except ValueError as exc:
            raise SpecError(f"invalid etcd endpoint {item!r}: {exc}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname \
                or parts.path not in ("", "/") or parts.query or parts.username:
            raise SpecError(f"invalid etcd endpoint {item!r}: write http(s)://HOST:PORT, "
                            "e.g. http://10.0.0.1:2379")
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        normal = f"{parts.scheme}://{host}:{port}"
        if normal not in out:
            out.append(normal)
    if not out:
        raise SpecError("no etcd endpoint given")
    return tuple(out)


def read_endpoints_file(path: Path, *, tls: bool = False) -> tuple[str, ...]:
    """The endpoints listed in ``path`` (:func:`parse_endpoints`'s format)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        return parse_endpoints(text, tls=tls)
    except SpecError as exc:
        raise SpecError(f"{path}: {exc}") from None


@dataclass(frozen=True)
class KeyValue:
    """A key as etcd returns it (``value`` is empty in a delete event)."""

    key: str
    value: bytes = b""
    mod_revision: int = 0
    create_revision: int = 0
    version: int = 0
    lease: int = 0


@dataclass(frozen=True)
class WatchEvent:
    kv: KeyValue
    deleted: bool = False


@dataclass(frozen=True)
class WatchBatch:
    """What a :class:`Watch` hands over: events, or (``reset``) the whole prefix.

    ``revision`` is the store revision everything up to which has been seen.
    """

    revision: int
    events: tuple[WatchEvent, ...] = ()
    reset: bool = False
    kvs: tuple[KeyValue, ...] = ()


@dataclass(frozen=True)
class Lease:
    id: int
    ttl: int


@dataclass(frozen=True)
class ConnState:
    """Whether the last request succeeded, on which endpoint, and the latest failure."""

    connected: bool = False
    endpoint: str | None = None
    last_error: str | None = None
    since: float = 0.0


class LeaseNotFound(ClusterError):
    """The lease named in a request has expired or was revoked."""


class _Down(Exception):
    """This endpoint cannot serve the request now; try the next one.

    ``transient``: etcd is there but busy (no answer in time, no leader yet), so trying
    again in a moment may work; otherwise the endpoint is wrong or gone (refused, TLS).
    """

    def __init__(self, reason: str, *, tls: bool = False, transient: bool = False) -> None:
        super().__init__(reason)
        self.reason, self.tls, self.transient = reason, tls, transient


class _TokenRejected(Exception):
    """etcd no longer accepts the auth token: authenticate again."""


class _Compacted(Exception):
    """The watch's start revision was compacted away: list again."""


def _b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode("ascii")


def _unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


def prefix_end(prefix: str) -> bytes:
    """etcd's ``range_end`` that covers every key starting with ``prefix``."""
    raw = bytearray(prefix.encode())
    while raw and raw[-1] == 0xFF:
        raw.pop()
    if not raw:
        return b"\0"  # every key
    raw[-1] += 1
    return bytes(raw)


def _kv(raw: dict[str, Any]) -> KeyValue:
    return KeyValue(key=_unb64(raw.get("key")).decode("utf-8", "replace"),
                    value=_unb64(raw.get("value")),
                    mod_revision=int(raw.get("mod_revision", 0)),
                    create_revision=int(raw.get("create_revision", 0)),
                    version=int(raw.get("version", 0)), lease=int(raw.get("lease", 0)))


def _as_int(value: Any, default: int = 2) -> int:
    """An int64 field of the gateway's JSON (text, or absent: ``default``, gRPC's Unknown)."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _revision(data: dict[str, Any]) -> int:
    return int(data.get("header", {}).get("revision", 0))


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _transport_problem(exc: Exception, timeout: float, endpoint: str, *,
                       has_cert: bool) -> _Down:
    """What a failed HTTP exchange with ``endpoint`` means, in a few words."""
    chain = list(_chain(exc))
    tls_error = next((e for e in chain if isinstance(e, ssl.SSLError)), None)
    if isinstance(tls_error, ssl.SSLCertVerificationError):
        return _Down(f"TLS: the server's certificate is not trusted "
                     f"({tls_error.verify_message}): check the CA", tls=True)
    if tls_error is not None:
        reason = tls_error.reason or str(tls_error)
        if reason in _CERT_REFUSED:
            return _Down(f"TLS: {_refused_certificate(has_cert)}", tls=True)
        return _Down(f"TLS: {_TLS_HINTS.get(reason, reason)}", tls=True)
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return _Down(f"no answer within {timeout:g} s", transient=True)
    for e in chain:
        if isinstance(e, socket.gaierror):
            return _Down("unknown host")
        if isinstance(e, OSError) and e.errno == errno.ECONNREFUSED:
            return _Down("connection refused")
    closed = isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError)
    if closed and endpoint.startswith("https:"):
        # TLS 1.3 checks the client's certificate after the handshake: a refused one shows
        # up as the server hanging up on the first request, with no TLS alert to read.
        return _Down(f"TLS: the endpoint closed the connection: {_refused_certificate(has_cert)}",
                     tls=True)
    if closed:  # also what a TLS port does with a plain request
        return _Down("the endpoint hung up without answering (if it serves TLS, use https://)",
                     transient=True)
    return _Down(str(exc) or type(exc).__name__, transient=True)


def _refused_certificate(has_cert: bool) -> str:
    if has_cert:
        return "the endpoint refused the client certificate (is its CA one the endpoint trusts?)"
    return "the endpoint requires a client certificate: give a certificate and key"


def _tidy(message: str) -> str:
    return message.removeprefix("etcdserver: ")


class EtcdClient:
    """An asyncio etcd v3 client over the JSON gateway; see the module docstring.

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

    def _problem(self, exc: Exception, endpoint: str) -> _Down:
        return _transport_problem(exc, self._timeout, endpoint,
                                  has_cert=self._settings.cert is not None)

    def _decode(self, endpoint: str, path: str, response: httpx.Response) -> dict[str, Any]:
        try:
            data = response.json()
        except ValueError:
            text = response.text.strip()
            if "HTTP request to an HTTPS server" in text:
                raise _Down("TLS: the endpoint speaks https: use https:// and a CA",
                            tls=True) from None
            if "CommonName" in text:
                raise ClusterTLSError(
                    f"etcd at {endpoint} refuses the client certificate because it has a "
                    "CommonName (the gateway ignores CN users once auth is on): use a "
                    "certificate without CN, and a user and password") from None
            raise _Down(f"not an etcd v3 endpoint (HTTP {response.status_code} for {path})"
                        ) from None
        if not isinstance(data, dict):
            raise _Down(f"unexpected answer: {str(data)[:100]}")
        error = data.get("error")
        if isinstance(error, dict):  # the streaming endpoints' shape
            self._refuse(endpoint, _as_int(error.get("grpc_code")), str(error.get("message", "")))
        if response.status_code != 200 or error is not None:
            self._refuse(endpoint, _as_int(data.get("code")),
                         str(data.get("message") or error or f"HTTP {response.status_code}"))
        result = data.get("result")
        return result if isinstance(result, dict) else data

    def _refuse(self, endpoint: str, code: int, message: str) -> NoReturn:
        """Raise what etcd's refusal means."""
        text = _tidy(message)
        user = self._settings.user
        if code in (_UNAVAILABLE, _DEADLINE_EXCEEDED) or "timed out" in text \
                or "no leader" in text:
            raise _Down(text, transient=True)
        if code == _UNAUTHENTICATED or (code == _INVALID_ARGUMENT and "user name is empty" in text
                                         and user is not None and self._token is not None):
            raise _TokenRejected(text)
        if code == _INVALID_ARGUMENT and "user name is empty" in text:
            raise ClusterAuthError("etcd requires authentication: give a user and password",
                                   code)
        if code == _INVALID_ARGUMENT and "authentication failed" in text:
            raise ClusterAuthError(f"etcd refused user {user!r}: wrong user name or password",
                                   code)
        if code == _PERMISSION_DENIED:
            raise ClusterAuthError(f"etcd: permission denied for user {user!r} ({text})", code)
        if code == _NOT_FOUND and "lease" in text:
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
                if exc.grpc_code == _FAILED_PRECONDITION:  # auth is not enabled: no token needed
                    self._token = ""
                    return
                raise
            self._token = str(data.get("token", ""))

    async def _call(self, path: str, body: dict[str, Any], *, leader: bool = False
                    ) -> dict[str, Any]:
        """Post to the current endpoint, failing over as the module docstring says.

        A round over every endpoint that fails only because etcd is busy (an election
        after its leader died, for one) is tried again for up to ``retry_for`` seconds;
        a round where every endpoint refused fails at once.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settings.retry_for
        while True:
            failures: list[tuple[str, _Down]] = []
            for _ in range(len(self._endpoints) + 1):
                endpoint = self._endpoint()
                try:
                    data = await self._attempt(endpoint, path, body, leader=leader)
                except _Down as down:
                    failures.append((endpoint, down))
                    self._fail_over(endpoint)
                    continue
                self._up(endpoint)
                return data
            if not any(down.transient for _, down in failures) or loop.time() >= deadline:
                error = _unreachable(failures)
                self._down(str(error))
                raise error
            await asyncio.sleep(0.1)

    async def _attempt(self, endpoint: str, path: str, body: dict[str, Any], *,
                       leader: bool) -> dict[str, Any]:
        """One request to one endpoint, authenticating first (and again, once, if the
        token was refused).  Raises _Down, or a ClusterError that ends the request."""
        try:
            try:
                await self._authenticate(endpoint)
                return await self._post(endpoint, path, body, leader=leader)
            except _TokenRejected:
                self._token = None
                await self._authenticate(endpoint)
                return await self._post(endpoint, path, body, leader=leader)
        except _TokenRejected as exc:
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
        body: dict[str, Any] = {"key": _b64(key), "limit": limit, "keys_only": keys_only,
                                "serializable": serializable}
        if range_end is not None:
            body["range_end"] = _b64(range_end)
        data = await self._call("/v3/kv/range", body)
        return [_kv(raw) for raw in data.get("kvs", [])], _revision(data)

    async def range_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        return await self.range(prefix, prefix_end(prefix))

    async def get(self, key: str) -> KeyValue | None:
        kvs, _ = await self.range(key)
        return kvs[0] if kvs else None

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        """Store ``value`` at ``key`` (bound to ``lease`` if not 0); returns the revision."""
        body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = str(lease)
        return _revision(await self._call("/v3/kv/put", body, leader=True))

    async def delete(self, key: str, range_end: bytes | None = None) -> int:
        """Delete ``key`` (or ``[key, range_end)``); returns how many keys went."""
        body = {"key": _b64(key)}
        if range_end is not None:
            body["range_end"] = _b64(range_end)
        return int((await self._call("/v3/kv/deleterange", body, leader=True)).get("deleted", 0))

    async def put_if(self, key: str, value: bytes, mod_revision: int, lease: int = 0
                     ) -> tuple[bool, int]:
        """Compare-and-swap: store ``value`` only if ``key``'s mod_revision is
        ``mod_revision`` (0: the key does not exist).  Returns ``(stored, revision)``."""
        put: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            put["lease"] = str(lease)
        body = {"compare": [{"key": _b64(key), "target": "MOD", "result": "EQUAL",
                             "mod_revision": str(mod_revision)}],
                "success": [{"request_put": put}], "failure": []}
        data = await self._call("/v3/kv/txn", body, leader=True)
        return bool(data.get("succeeded", False)), _revision(data)

    async def compact(self, revision: int) -> None:
        """Drop the history before ``revision`` (watches older than it are told so)."""
        await self._call("/v3/kv/compaction", {"revision": str(revision), "physical": True},
                         leader=True)

    async def lease_grant(self, ttl: int) -> Lease:
        data = await self._call("/v3/lease/grant", {"TTL": ttl}, leader=True)
        if not _as_int(data.get("ID"), 0):
            raise ClusterError(f"etcd granted no lease: {data.get('error') or 'no ID'}")
        return Lease(int(data["ID"]), _as_int(data.get("TTL"), ttl))

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


def _unreachable(failures: list[tuple[str, _Down]]) -> ClusterError:
    seen: dict[str, str] = {}
    for endpoint, down in failures:
        seen.setdefault(endpoint, down.reason)
    listed = "; ".join(f"{endpoint}: {reason}" for endpoint, reason in seen.items())
    if failures and all(down.tls for _, down in failures):
        return ClusterTLSError(f"no TLS connection to etcd: {listed}")
    return ClusterUnavailable(f"no etcd endpoint answers: {listed}")


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
            except _Compacted:
                self._listed, delay = False, 0.0
                continue
            except _TokenRejected:
                self._client._token = None
            except _Down as down:
                self._client._fail_over(endpoint)
                if not self._streaming:
                    failures += 1
                    if failures >= len(self._client.endpoints):
                        self._client._down(_unreachable([(endpoint, down)]).message)
            except ClusterError as exc:  # a refusal: record it, try again after a pause
                self._client._down(exc.message)
            except Exception as exc:  # a bug must not end the watch for good: say it, go on
                self._client._down(f"the watch of {self._prefix} failed: "
                                   f"{type(exc).__name__}: {exc}")
            if self._streaming:  # it was working until now: reconnect (almost) at once
                failures, delay = 0, 0.05
            else:
                delay = min(1.0, max(0.05, delay * 2))

    async def _stream(self, endpoint: str) -> None:
        """Follow the watch stream on ``endpoint`` until it fails (always raises)."""
        client = self._client
        await client._authenticate(endpoint)
        headers = {"Authorization": client._token} if client._token else {}
        body = {"create_request": {"key": _b64(self._prefix),
                                   "range_end": _b64(prefix_end(self._prefix)),
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
                    raise _Down(f"HTTP {response.status_code} for /v3/watch")
                lines = response.aiter_lines()
                while True:
                    async with asyncio.timeout(None) as scope:
                        client._scopes[scope] = endpoint
                        try:
                            line = await anext(lines, None)
                        finally:
                            del client._scopes[scope]
                    if line is None:
                        raise _Down("the watch stream ended")
                    if line.strip():
                        self._handle(endpoint, line)
        except TimeoutError:  # the scope above, moved to now by _interrupt_watches
            raise _Down("its endpoint failed another request") from None
        except (httpx.HTTPError, OSError) as exc:  # OSError: a TLS alert httpx lets through
            raise client._problem(exc, endpoint) from None

    def _handle(self, endpoint: str, line: str) -> None:
        try:
            message = json.loads(line)
            error = message.get("error")
            result = message.get("result", {})
            events = tuple(WatchEvent(_kv(raw.get("kv", {})), raw.get("type") == "DELETE")
                           for raw in result.get("events", []))
            compacted = _as_int(result.get("compact_revision"), 0)
            progress = _revision(result)
        except (ValueError, TypeError, AttributeError):  # not the gateway's JSON
            raise _Down(f"unreadable watch answer: {line[:100]}") from None
        if isinstance(error, dict):
            self._client._refuse(endpoint, _as_int(error.get("grpc_code")),
                                 str(error.get("message", "")))
        if result.get("canceled"):
            if compacted:
                raise _Compacted()
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
