"""The CLI's client of the supervisor's API: HTTP/1.1 over the AF_UNIX socket ``api.sock``
(stdlib ``socket`` + ``json``), or over TCP + TLS to a remote supervisor (``--remote NAME``,
see :mod:`corral.cli.remote`).  Every call opens and closes its own connection.

* :meth:`Client.request` returns ``(status, decoded JSON or None)`` for 2xx/3xx answers and
  raises :class:`ApiError` for 4xx/5xx, carrying the API's ``{"error": {code, message}}``;
* :meth:`Client.stream` yields the JSON object of each server-sent event's ``data:`` field;
  :meth:`Client.follow` does too, and resumes a cut stream (``Last-Event-ID``).

Bodies of any size (resources) go through :mod:`corral.cli.transfer` instead.

Remote: the TLS context trusts only the CA of the auth file (no system CAs) and checks the
name ``server_name`` (``corral``, in every corral server certificate), whatever address is
dialled; every request carries ``Authorization: Bearer <token>``.  ``ssl`` is imported only
then, so the local path keeps its start-up time.

Errors (:mod:`corral.cli.errors`): :class:`UnreachableError` (exit 111) when nothing accepts
on the socket (or the remote address); :class:`UntrustedServerError` (exit 111) when a
remote's certificate does not chain to the pinned CA; :class:`ApiError` (exit 1) for an error
answer; :class:`ProtocolError` (exit 1) when the answer is not HTTP/JSON or the connection
drops mid-answer.
"""

from __future__ import annotations

import json
import os
import socket
import time

from corral.cli.errors import (
    ApiError,
    CliError,
    ProtocolError,
    RemoteUnreachableError,
    UnreachableError,
    UntrustedServerError,
)
from corral.cli.http import (
    FIRST_ERROR,
    FIRST_REDIRECT,
    INTERNAL_ERROR,
    UNAUTHORIZED,
    api_error,
    body_pieces,
    decode_json,
    read_head,
    request_head,
    sse_events,
)
from corral.protocol.backoff import doubled

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing slows every command's start
if TYPE_CHECKING:
    import ssl
    from collections.abc import Callable, Iterator

    from corral.cli.http import Json
    from corral.cli.remote import RemoteAuth

CONNECT_TIMEOUT = 5.0
#: How long :meth:`Client.follow` tries to get a cut stream back (a new supervisor is
#: usually serving within a second or two; a crash-looping one backs off up to 5 s).
RECONNECT_FOR = 30.0
RETRY_FIRST = 0.1
RETRY_MAX = 1.0
#: A followed stream that has said nothing for this long is taken for dead (the server
#: sends at least a keepalive every 15 s): a remote host that vanished without a word.
STREAM_SILENCE = 60.0
#: Default read timeout of :meth:`Client.request`; mutating calls pass ``None`` (wait).
READ_TIMEOUT = 30.0
_UNIX_PATH_MAX = 107  # sun_path is 108 bytes including the terminating NUL


class Client:
    """Talks HTTP/1.1 to one Unix socket, or HTTPS to a remote (:meth:`over_tls`); every
    call opens and closes its own connection."""

    def __init__(self, socket_path: str, connect_timeout: float = CONNECT_TIMEOUT,
                 auth: RemoteAuth | None = None) -> None:
        self.socket_path = socket_path
        self.connect_timeout = connect_timeout
        self.auth = auth
        self._tls: ssl.SSLContext | None = None

    @classmethod
    def over_tls(cls, auth: RemoteAuth, connect_timeout: float = CONNECT_TIMEOUT) -> Client:
        """A client for a remote supervisor: TLS pinned to the auth file's CA, and its token."""
        return cls("", connect_timeout, auth)

    def request(self, method: str, path: str, body: Json = None,
                timeout: float | None = READ_TIMEOUT) -> tuple[int, Json]:
        """Send one request; return ``(status, JSON body or None)``; raise on 4xx/5xx.

        ``body`` (if not ``None``) is sent as JSON.  ``timeout`` bounds each read of the answer
        (``None``: wait as long as the server takes, e.g. while a service stops).
        """
        sock = self._send(method, path, body, timeout, accept="application/json")
        with sock, sock.makefile("rb") as f:
            status, headers = read_head(f)
            raw = b"".join(body_pieces(f, headers, status))
        data = decode_json(raw, status)
        if status >= FIRST_ERROR:
            raise self.error_for(status, data, raw)
        return status, data

    def stream(self, path: str) -> Iterator[Json]:
        """Yield the decoded JSON of each server-sent event's ``data`` until the server closes.

        An event whose object is ``{"error": {...}}`` raises :class:`ApiError` (status 500).
        """
        for _, obj in self._events(path, None):
            if obj is not None:
                yield obj

    def follow(self, path: str, patience: float = RECONNECT_FOR,
               sleep: Callable[[float], None] | None = None,
               clock: Callable[[], float] | None = None,
               stopped: Callable[[], bool] | None = None) -> Iterator[Json]:
        """Like :meth:`stream`, for as long as the stream can be had: when it is cut (the
        supervisor restarted or was killed, or dropped a slow reader), connect again and
        resume just after the last event ``id`` received (``Last-Event-ID``), so nothing
        is yielded twice or skipped.  Retries back off from 0.1 s to 1 s; after
        ``patience`` seconds without a connection it gives up with one :class:`CliError`.
        An error answer (an unknown service, a refused token) raises at once.  A stream
        that never sent an id (an older server) cannot be resumed: its end raises
        :class:`ProtocolError` as :meth:`stream` would.  ``stopped`` says whether corral
        itself has stopped (no launcher runs): then a cut stream just ends, with no retry.
        """
        pause = sleep or time.sleep
        now = clock or time.monotonic
        last_id: str | None = None
        failing_since: float | None = None
        delay = RETRY_FIRST
        while True:
            try:
                for event_id, obj in self._events(path, last_id, STREAM_SILENCE):
                    failing_since, delay = None, RETRY_FIRST
                    if event_id is not None:
                        last_id = event_id
                    if obj is not None:
                        yield obj
                reason = "the supervisor ended the stream"
                if last_id is None:
                    raise ProtocolError(reason)
            except (UnreachableError, ProtocolError) as exc:
                if last_id is None:
                    raise
                reason = str(exc)
            if stopped is not None and stopped():
                return
            if failing_since is None:
                failing_since = now()
            elif now() - failing_since >= patience:
                raise CliError(f"lost the stream from the supervisor and could not resume it "
                               f"within {patience:g} s ({reason}); check: corral sup status")
            pause(delay)
            delay = doubled(delay, RETRY_FIRST, RETRY_MAX)

    def _events(self, path: str, last_id: str | None,
                silence: float | None = None) -> Iterator[tuple[str | None, Json]]:
        """``(id, decoded data)`` of each server-sent event; data is ``None`` for an event
        that only carries an id.  Sent with ``Last-Event-ID: last_id`` when given; once
        the server has sent an id (it then sends something at least every 15 s), a
        silence longer than ``silence`` seconds is a dead connection (ProtocolError)."""
        extra = "" if last_id is None else f"Last-Event-ID: {last_id}\r\n"
        sock = self._send("GET", path, None, None, accept="text/event-stream", headers=extra)
        with sock, sock.makefile("rb") as f:
            status, headers = read_head(f)
            if status >= FIRST_REDIRECT:
                raw = b"".join(body_pieces(f, headers, status))
                raise self.error_for(status, decode_json(raw, status), raw)
            ctype = headers.get("content-type", "")
            if not ctype.startswith("text/event-stream"):
                raise ProtocolError(f"expected an event stream from {path}, got {ctype or '?'}")
            timed = False
            for event_id, data in sse_events(body_pieces(f, headers, status)):
                if event_id is not None and silence is not None and not timed:
                    sock.settimeout(silence)
                    timed = True
                if data is None:
                    yield event_id, None
                    continue
                try:
                    obj = json.loads(data)
                except ValueError:
                    raise ProtocolError(f"an event from {path} is not JSON: {data[:80]!r}") from None
                if isinstance(obj, dict) and set(obj) == {"error"}:
                    raise api_error(INTERNAL_ERROR, obj, data.encode())
                yield event_id, obj

    def answers(self) -> bool:
        """Whether something accepts connections on the socket right now."""
        try:
            self.connect().close()
        except UnreachableError:
            return False
        return True

    def request_head(self, method: str, path: str, accept: str, headers: str = "") -> bytes:
        """The head of a request to this supervisor (its host name and token filled in)."""
        if self.auth is None:
            return request_head(method, path, host="localhost", accept=accept, headers=headers)
        return request_head(method, path, host=self.auth.host, accept=accept,
                            token=self.auth.token, headers=headers)

    def connect(self) -> socket.socket:
        """A connected socket to the supervisor (TLS-wrapped for a remote).

        Raises :class:`UnreachableError` (or :class:`UntrustedServerError`) when there is none.
        """
        if self.auth is not None:
            return self._connect_tls(self.auth)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.connect_timeout)
        try:
            _connect_unix(sock, self.socket_path)
        except FileNotFoundError:
            sock.close()
            raise UnreachableError(self.socket_path, "no api.sock") from None
        except ConnectionRefusedError:
            sock.close()
            raise UnreachableError(self.socket_path, "api.sock refuses connections") from None
        except PermissionError:
            sock.close()
            raise UnreachableError(self.socket_path, "permission denied on api.sock; "
                                                "run as its owner or root") from None
        except TimeoutError:
            sock.close()
            raise UnreachableError(self.socket_path, "api.sock does not accept connections") from None
        except OSError as exc:
            sock.close()
            raise UnreachableError(self.socket_path, exc.strerror or str(exc)) from None
        return sock

    def error_for(self, status: int, data: Json, raw: bytes) -> ApiError:
        """The error for a 4xx/5xx answer: the API's own, or for a refused token (401 over
        a remote) one that says where the token came from and how to get a new one."""
        error = api_error(status, data, raw)
        if status == UNAUTHORIZED and self.auth is not None:
            error = ApiError(UNAUTHORIZED, error.code,
                             f"the supervisor at {self.auth.host} refused the token in "
                             f"{self.auth.path} (was it rotated? on that host, run: corral "
                             f"print-auth --name {self.auth.name}, and save its output there)")
        return error

    # -- internals -----------------------------------------------------------------------

    def _send(self, method: str, path: str, body: Json, timeout: float | None,
              accept: str, headers: str = "") -> socket.socket:
        payload = b"" if body is None else json.dumps(body).encode()
        if body is not None or method in ("POST", "PUT", "PATCH"):
            headers += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
        head = self.request_head(method, path, accept, headers)
        sock = self.connect()
        try:
            sock.settimeout(timeout)
            sock.sendall(head + payload)
        except OSError as exc:
            sock.close()
            raise ProtocolError(f"the supervisor closed the connection ({exc})") from None
        return sock

    def _connect_tls(self, auth: RemoteAuth) -> socket.socket:
        """Connect to the remote and complete a TLS handshake that trusts only its CA."""
        import ssl  # only remote use pays for it

        if self._tls is None:
            try:
                self._tls = ssl.create_default_context(cadata=auth.ca_cert)
            except (ssl.SSLError, ValueError):
                raise CliError(f"{auth.path}: ca_cert is not a PEM certificate "
                               "(as printed by corral print-auth)") from None
        where = (auth.host, auth.name, auth.path)
        try:
            raw = socket.create_connection((auth.address, auth.port), self.connect_timeout)
        except TimeoutError:
            raise RemoteUnreachableError(*where, "no answer to the connection") from None
        except OSError as exc:
            raise RemoteUnreachableError(*where, exc.strerror or str(exc)) from None
        try:
            return self._tls.wrap_socket(raw, server_hostname=auth.server_name)
        except ssl.SSLCertVerificationError as exc:
            raw.close()
            raise UntrustedServerError(
                f"refusing the server at {auth.host}: its certificate "
                f"{exc.verify_message or 'does not verify'} against the CA pinned in "
                f"{auth.path} (a different corral, or someone in the middle)") from None
        except (ssl.SSLError, OSError) as exc:
            raw.close()
            reason = getattr(exc, "reason", None) or exc.strerror or str(exc) or "closed"
            raise RemoteUnreachableError(*where, f"TLS handshake failed: {reason}") from None


def _connect_unix(sock: socket.socket, path: str) -> None:
    """Connect, working around the 107-byte ``sun_path`` limit through ``/proc/self/fd``."""
    if len(os.fsencode(path)) <= _UNIX_PATH_MAX or not os.path.isdir("/proc/self/fd"):
        sock.connect(path)
        return
    fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        sock.connect(f"/proc/self/fd/{fd}/{os.path.basename(path)}")
    finally:
        os.close(fd)


