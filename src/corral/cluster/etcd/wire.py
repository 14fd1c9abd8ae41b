"""etcd's v3 JSON gateway on the wire: its values, and what its failures mean.

Pure.  Names without a leading underscore here are shared with :mod:`.client`; the
package's ``__init__`` says which ones are public.
"""

from __future__ import annotations

import base64
import errno
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from corral.errors import ClusterError, ClusterTLSError, ClusterUnavailable

# gRPC status codes etcd answers with (google.golang.org/grpc/codes).
INVALID_ARGUMENT = 3
DEADLINE_EXCEEDED = 4
NOT_FOUND = 5
PERMISSION_DENIED = 7
FAILED_PRECONDITION = 9
UNAVAILABLE = 14
UNAUTHENTICATED = 16

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


class Down(Exception):
    """This endpoint cannot serve the request now; try the next one.

    ``transient``: etcd is there but busy (no answer in time, no leader yet), so trying
    again in a moment may work; otherwise the endpoint is wrong or gone (refused, TLS).
    """

    def __init__(self, reason: str, *, tls: bool = False, transient: bool = False) -> None:
        super().__init__(reason)
        self.reason, self.tls, self.transient = reason, tls, transient


class TokenRejected(Exception):
    """etcd no longer accepts the auth token: authenticate again."""


class Compacted(Exception):
    """The watch's start revision was compacted away: list again."""


def b64(data: str | bytes) -> str:
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


def key_value(raw: dict[str, Any]) -> KeyValue:
    return KeyValue(key=_unb64(raw.get("key")).decode("utf-8", "replace"),
                    value=_unb64(raw.get("value")),
                    mod_revision=int(raw.get("mod_revision", 0)),
                    create_revision=int(raw.get("create_revision", 0)),
                    version=int(raw.get("version", 0)), lease=int(raw.get("lease", 0)))


def as_int(value: Any, default: int = 2) -> int:
    """An int64 field of the gateway's JSON (text, or absent: ``default``, gRPC's Unknown)."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def revision_of(data: dict[str, Any]) -> int:
    return int(data.get("header", {}).get("revision", 0))


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def transport_problem(exc: Exception, timeout: float, endpoint: str, *,
                       has_cert: bool) -> Down:
    """What a failed HTTP exchange with ``endpoint`` means, in a few words."""
    chain = list(_chain(exc))
    tls_error = next((e for e in chain if isinstance(e, ssl.SSLError)), None)
    if isinstance(tls_error, ssl.SSLCertVerificationError):
        return Down(f"TLS: the server's certificate is not trusted "
                     f"({tls_error.verify_message}): check the CA", tls=True)
    if tls_error is not None:
        reason = tls_error.reason or str(tls_error)
        if reason in _CERT_REFUSED:
            return Down(f"TLS: {_refused_certificate(has_cert)}", tls=True)
        return Down(f"TLS: {_TLS_HINTS.get(reason, reason)}", tls=True)
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return Down(f"no answer within {timeout:g} s", transient=True)
    for e in chain:
        if isinstance(e, socket.gaierror):
            return Down("unknown host")
        if isinstance(e, OSError) and e.errno == errno.ECONNREFUSED:
            return Down("connection refused")
    closed = isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError)
    if closed and endpoint.startswith("https:"):
        # TLS 1.3 checks the client's certificate after the handshake: a refused one shows
        # up as the server hanging up on the first request, with no TLS alert to read.
        return Down(f"TLS: the endpoint closed the connection: {_refused_certificate(has_cert)}",
                     tls=True)
    if closed:  # also what a TLS port does with a plain request
        return Down("the endpoint hung up without answering (if it serves TLS, use https://)",
                     transient=True)
    return Down(str(exc) or type(exc).__name__, transient=True)


def _refused_certificate(has_cert: bool) -> str:
    if has_cert:
        return "the endpoint refused the client certificate (is its CA one the endpoint trusts?)"
    return "the endpoint requires a client certificate: give a certificate and key"


def tidy(message: str) -> str:
    return message.removeprefix("etcdserver: ")


def unreachable(failures: list[tuple[str, Down]]) -> ClusterError:
    seen: dict[str, str] = {}
    for endpoint, down in failures:
        seen.setdefault(endpoint, down.reason)
    listed = "; ".join(f"{endpoint}: {reason}" for endpoint, reason in seen.items())
    if failures and all(down.tls for _, down in failures):
        return ClusterTLSError(f"no TLS connection to etcd: {listed}")
    return ClusterUnavailable(f"no etcd endpoint answers: {listed}")
