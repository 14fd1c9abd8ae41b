"""A tiny HTTP/1.1 client over the supervisor's AF_UNIX socket (stdlib ``socket`` + ``json``),
or over TCP + TLS to a remote supervisor (``--remote NAME``: :class:`RemoteAuth`).

Why not ``http.client``: it pulls in ``ssl`` and ``email`` and roughly doubles the CLI's start
time (reference/feasibility.md §3).  This client does exactly what the CLI needs:

* one request per connection, sent with ``Connection: close``;
* response bodies framed by ``Content-Length``, by ``Transfer-Encoding: chunked``, or by the
  server closing the connection;
* :meth:`Client.request` returns ``(status, decoded JSON or None)`` for 2xx/3xx answers and
  raises :class:`ApiError` for 4xx/5xx, carrying the API's ``{"error": {code, message}}``;
* :meth:`Client.stream` yields the JSON object of each server-sent event's ``data:`` field;
  :meth:`Client.follow` does too, and resumes a cut stream (``Last-Event-ID``).

Remote: the TLS context trusts only the CA of the auth file (no system CAs) and checks the
name ``server_name`` (``corral``, in every corral server certificate), whatever address is
dialled; every request carries ``Authorization: Bearer <token>``.  ``ssl`` and ``yaml`` are
imported only then, so the local path keeps its start-up time.

Errors: :class:`UnreachableError` (exit 111) when nothing accepts on the socket (or the remote
address); :class:`UntrustedServerError` (exit 111) when a remote's certificate does not chain
to the pinned CA; :class:`ApiError`
(exit 1) for an error answer; :class:`ProtocolError` (exit 1) when the answer is not HTTP/JSON
or the connection drops mid-answer.
"""

from __future__ import annotations

import json
import os
import socket
import time
from io import BufferedReader

from corral.cli.common import EXIT_UNREACHABLE, CliError

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~2 ms at start-up
if TYPE_CHECKING:
    import ssl
    from collections.abc import Callable, Iterator
    from typing import BinaryIO

    from corral.cli.common import Json
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
_MAX_LINE = 65536
_MAX_HEADERS = 100
_UNIX_PATH_MAX = 107  # sun_path is 108 bytes including the terminating NUL


class UnreachableError(CliError):
    """No supervisor accepts connections on the socket (exit 111)."""

    code = "unreachable"
    exit_code = EXIT_UNREACHABLE

    def __init__(self, socket_path: str, reason: str) -> None:
        state_dir = os.path.dirname(socket_path) or "."
        shown = _shell_quote(state_dir)
        super().__init__(f"cannot reach a supervisor at {state_dir} ({reason}); "
                         f"start one with: corral sup run --state-dir {shown}")
        self.socket_path = socket_path
        self.reason = reason


class RemoteUnreachableError(UnreachableError):
    """No supervisor accepts connections (or TLS) at a remote auth file's address (exit 111)."""

    def __init__(self, auth: RemoteAuth, reason: str) -> None:
        CliError.__init__(self, f"cannot reach the supervisor at {auth.host} ({reason}); "
                                f"remote {auth.name!r} from {auth.path}")
        self.socket_path = ""
        self.reason = reason


class UntrustedServerError(CliError):
    """The server's certificate does not chain to the pinned CA: refuse to talk (exit 111)."""

    code = "untrusted_server"
    exit_code = EXIT_UNREACHABLE


class ApiError(CliError):
    """The API answered 4xx/5xx; ``code``/``message``/``problems`` come from its error body."""

    def __init__(self, status: int, code: str, message: str,
                 problems: list[str] | None = None) -> None:
        super().__init__(message, problems)
        self.status = status
        self.code = code


class ProtocolError(CliError):
    """The answer was not the HTTP/JSON the CLI expects, or the connection dropped mid-way."""

    code = "protocol_error"


def auth_file(name: str) -> str:
    """Where the auth file of remote ``name`` lives: ``name`` itself when it is a path (has
    a ``/`` or ends in ``.yaml``/``.yml``), else ``$XDG_CONFIG_HOME/corral/auth/NAME.yaml``
    (``~/.config/corral/auth/NAME.yaml``)."""
    if "/" in name or name.endswith((".yaml", ".yml")):
        return os.path.expanduser(name)
    config = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    return os.path.join(config, "corral", "auth", f"{name}.yaml")


def render_auth(auth: dict[str, str], name: str) -> str:
    """The client auth file for ``auth`` (``GET /v1/auth/client``'s answer), as YAML.

    Written by hand rather than by a YAML library: a fixed, commented layout, with the CA
    as a literal block so that it stays a readable PEM.
    """
    path = auth_file(name)
    home = os.path.expanduser("~")
    shown = "~" + path[len(home):] if path.startswith(home + "/") else path
    ca = "".join(f"  {line}\n" for line in auth["ca_cert"].strip().splitlines())
    return (f"# corral client auth for {auth.get('hostname') or auth['host']}; keep it private\n"
            f"# (mode 0600). Save it as {shown}, then: corral --remote {name} svc status\n"
            f"host: {json.dumps(auth['host'])}\n"
            f"server_name: {json.dumps(auth.get('server_name') or 'corral')}\n"
            f"token: {json.dumps(auth['token'])}\n"
            f"ca_cert: |\n{ca}")


class RemoteAuth:
    """A client auth file: the address to dial, the name the certificate must carry, the
    pinned CA certificate (PEM) and the bearer token.  The token never appears in a repr."""

    def __init__(self, name: str, path: str, host: str, server_name: str, ca_cert: str,
                 token: str) -> None:
        self.name = name
        self.path = path
        self.host = host
        self.server_name = server_name
        self.ca_cert = ca_cert
        self.token = token
        address, _, port = host.rpartition(":")
        self.address = address[1:-1] if address.startswith("[") else address
        self.port = int(port) if port.isdigit() else 0
        if not self.address or not 0 < self.port < 65536:
            raise CliError(f"{path}: host {host!r} is not HOST:PORT")

    def __repr__(self) -> str:
        return f"RemoteAuth(name={self.name!r}, path={self.path!r}, host={self.host!r})"

    @classmethod
    def load(cls, name: str) -> RemoteAuth:
        """Read the auth file of remote ``name`` (see :func:`auth_file`).

        Raises :class:`CliError` naming the file: missing, unreadable, not YAML, or a field
        missing or not text.
        """
        path = auth_file(name)
        try:
            with open(path) as f:
                text = f.read()
        except FileNotFoundError:
            raise CliError(f"no auth file for remote {name!r} at {path}; on that host, run: "
                           f"corral print-auth --name {name} (and save its output there)") from None
        except OSError as exc:
            raise CliError(f"cannot read the auth file {path}: {exc.strerror}") from None
        import yaml  # only remote use pays for it

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise CliError(f"{path} is not valid YAML: {' '.join(str(exc).split())}") from None
        if not isinstance(data, dict):
            raise CliError(f"{path}: expected the fields host, token and ca_cert "
                           "(as printed by corral print-auth)")
        for key in ("host", "token", "ca_cert"):
            if not isinstance(data.get(key), str) or not data[key].strip():
                raise CliError(f"{path}: field {key!r} is missing or not text "
                               "(as printed by corral print-auth)")
        server_name = data.get("server_name") or "corral"
        return cls(os.path.basename(path).rsplit(".", 1)[0] if "/" in name else name, path,
                   data["host"].strip(), str(server_name), data["ca_cert"],
                   data["token"].strip())

    def save(self, auth: dict[str, str]) -> None:
        """Rewrite this file (mode 0600, atomically) with ``auth`` (e.g. after a rotation),
        keeping the address this client dials."""
        text = render_auth({**auth, "host": self.host, "server_name": self.server_name},
                           self.name)
        tmp = f"{self.path}.tmp{os.getpid()}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            raise CliError(f"cannot rewrite the auth file {self.path}: {exc.strerror}") from None


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
            status, headers = _read_head(f)
            raw = b"".join(_body_pieces(f, headers, status))
        data = _decode_json(raw, status)
        if status >= 400:
            raise self._error(status, data, raw)
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
               clock: Callable[[], float] | None = None) -> Iterator[Json]:
        """Like :meth:`stream`, for as long as the stream can be had: when it is cut (the
        supervisor restarted or was killed, or dropped a slow reader), connect again and
        resume just after the last event ``id`` received (``Last-Event-ID``), so nothing
        is yielded twice or skipped.  Retries back off from 0.1 s to 1 s; after
        ``patience`` seconds without a connection it gives up with one :class:`CliError`.
        An error answer (an unknown service, a refused token) raises at once.  A stream
        that never sent an id (an older server) cannot be resumed: its end raises
        :class:`ProtocolError` as :meth:`stream` would.
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
            if failing_since is None:
                failing_since = now()
            elif now() - failing_since >= patience:
                raise CliError(f"lost the stream from the supervisor and could not resume it "
                               f"within {patience:g} s ({reason}); check: corral sup status")
            pause(delay)
            delay = min(delay * 2, RETRY_MAX)

    def _events(self, path: str, last_id: str | None,
                silence: float | None = None) -> Iterator[tuple[str | None, Json]]:
        """``(id, decoded data)`` of each server-sent event; data is ``None`` for an event
        that only carries an id.  Sent with ``Last-Event-ID: last_id`` when given; once
        the server has sent an id (it then sends something at least every 15 s), a
        silence longer than ``silence`` seconds is a dead connection (ProtocolError)."""
        extra = "" if last_id is None else f"Last-Event-ID: {last_id}\r\n"
        sock = self._send("GET", path, None, None, accept="text/event-stream", extra=extra)
        with sock, sock.makefile("rb") as f:
            status, headers = _read_head(f)
            if status >= 300:
                raw = b"".join(_body_pieces(f, headers, status))
                raise self._error(status, _decode_json(raw, status), raw)
            ctype = headers.get("content-type", "")
            if not ctype.startswith("text/event-stream"):
                raise ProtocolError(f"expected an event stream from {path}, got {ctype or '?'}")
            timed = False
            for event_id, data in _sse_events(_body_pieces(f, headers, status)):
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
                    raise _api_error(500, obj, data.encode())
                yield event_id, obj

    def answers(self) -> bool:
        """Whether something accepts connections on the socket right now."""
        try:
            self._connect().close()
        except UnreachableError:
            return False
        return True

    # -- internals -----------------------------------------------------------------------

    def _error(self, status: int, data: Json, raw: bytes) -> ApiError:
        error = _api_error(status, data, raw)
        if status == 401 and self.auth is not None:
            error = ApiError(401, error.code,
                             f"the supervisor at {self.auth.host} refused the token in "
                             f"{self.auth.path} (was it rotated? on that host, run: corral "
                             f"print-auth --name {self.auth.name}, and save its output there)")
        return error

    def _connect_tls(self, auth: RemoteAuth) -> socket.socket:
        """Connect to the remote and complete a TLS handshake that trusts only its CA."""
        import ssl  # only remote use pays for it

        if self._tls is None:
            try:
                self._tls = ssl.create_default_context(cadata=auth.ca_cert)
            except (ssl.SSLError, ValueError):
                raise CliError(f"{auth.path}: ca_cert is not a PEM certificate "
                               "(as printed by corral print-auth)") from None
        try:
            raw = socket.create_connection((auth.address, auth.port), self.connect_timeout)
        except TimeoutError:
            raise RemoteUnreachableError(auth, "no answer to the connection") from None
        except OSError as exc:
            raise RemoteUnreachableError(auth, exc.strerror or str(exc)) from None
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
            raise RemoteUnreachableError(auth, f"TLS handshake failed: {reason}") from None

    def _connect(self) -> socket.socket:
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

    def _send(self, method: str, path: str, body: Json, timeout: float | None,
              accept: str, extra: str = "") -> socket.socket:
        payload = b"" if body is None else json.dumps(body).encode()
        host = "localhost" if self.auth is None else self.auth.host
        head = (f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: corral-cli\r\n"
                f"Accept: {accept}\r\nConnection: close\r\n{extra}")
        if self.auth is not None:
            head += f"Authorization: Bearer {self.auth.token}\r\n"
        if body is not None or method in ("POST", "PUT", "PATCH"):
            head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
        sock = self._connect()
        try:
            sock.settimeout(timeout)
            sock.sendall(head.encode("latin-1") + b"\r\n" + payload)
        except OSError as exc:
            sock.close()
            raise ProtocolError(f"the supervisor closed the connection ({exc})") from None
        return sock


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


def _read_head(f: BufferedReader) -> tuple[int, dict[str, str]]:
    """Read a status line and headers (skipping 1xx answers); header names are lower-cased."""
    try:
        while True:
            line = f.readline(_MAX_LINE)
            if not line:
                raise ProtocolError("the supervisor closed the connection without answering")
            parts = line.split(None, 2)
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
                raise ProtocolError(f"not an HTTP answer: {line[:80]!r}")
            status = int(parts[1])
            headers: dict[str, str] = {}
            for _ in range(_MAX_HEADERS):
                line = f.readline(_MAX_LINE)
                if line in (b"\r\n", b"\n", b""):
                    break
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            else:
                raise ProtocolError("too many header lines in the answer")
            if not 100 <= status < 200:
                return status, headers
    except TimeoutError:
        raise ProtocolError("the supervisor did not answer in time") from None
    except OSError as exc:  # ConnectionError, or a TLS error over a remote connection
        raise ProtocolError(f"the supervisor closed the connection ({exc})") from None


def _body_pieces(f: BufferedReader, headers: dict[str, str], status: int) -> Iterator[bytes]:
    """Yield the body as it arrives, de-chunked, honouring Content-Length, else until EOF."""
    if status in (204, 304):
        return
    try:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            yield from _chunks(f)
        elif "content-length" in headers:
            try:
                remaining = int(headers["content-length"])
            except ValueError:
                raise ProtocolError("bad Content-Length in the answer") from None
            while remaining > 0:
                piece = f.read(min(remaining, 65536))
                if not piece:
                    raise ProtocolError("the answer was cut short")
                remaining -= len(piece)
                yield piece
        else:
            while piece := f.read1(65536):
                yield piece
    except TimeoutError:
        raise ProtocolError("the supervisor stopped answering mid-way") from None
    except OSError as exc:  # ConnectionError, or a TLS error over a remote connection
        raise ProtocolError(f"the supervisor closed the connection ({exc})") from None


def _chunks(f: BufferedReader) -> Iterator[bytes]:
    """Decode ``Transfer-Encoding: chunked`` (extensions and trailers are ignored)."""
    while True:
        line = f.readline(_MAX_LINE)
        if not line:
            raise ProtocolError("the answer was cut short")
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise ProtocolError(f"bad chunk size {line[:40]!r}") from None
        if size == 0:
            while f.readline(_MAX_LINE) not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return
        data = f.read(size)
        if len(data) < size or f.readline(_MAX_LINE) not in (b"\r\n", b"\n"):
            raise ProtocolError("the answer was cut short")
        yield data


def _sse_events(pieces: Iterator[bytes]) -> Iterator[tuple[str | None, str | None]]:
    """Yield ``(id, data)`` for each event: ``id`` as the event set it (else ``None``),
    ``data`` its ``data:`` lines joined by newlines, or ``None`` for an event with an id
    and no data (it only moves the stream's position).

    Follows the EventSource rules that matter here: lines end in LF or CRLF; a blank line
    dispatches; ``:`` starts a comment; ``event`` and ``retry`` are ignored; an event cut
    off by the end of the stream is dropped.  Each byte is looked at once, so an event of
    a megabyte arriving in small pieces costs no more than one arriving whole.
    """
    buf = bytearray()
    scan = 0
    data: list[str] = []
    event_id: str | None = None
    for piece in pieces:
        buf += piece
        start = 0
        while (newline := buf.find(b"\n", scan)) >= 0:
            raw = bytes(buf[start:newline])
            start = scan = newline + 1
            line = raw.removesuffix(b"\r").decode("utf-8", "replace")
            if not line:
                if data:
                    yield event_id, "\n".join(data)
                elif event_id is not None:
                    yield event_id, None
                data, event_id = [], None
            elif line.startswith("data:"):
                data.append(line[6:] if line.startswith("data: ") else line[5:])
            elif line.startswith("id:"):
                event_id = line[4:] if line.startswith("id: ") else line[3:]
        del buf[:start]
        scan = len(buf)


def _decode_json(raw: bytes, status: int) -> Json:
    """Decode a body; an empty body is ``None``; a non-JSON error body becomes its text."""
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except ValueError:
        if status >= 400:
            return raw.decode("utf-8", "replace")
        raise ProtocolError(f"the answer is not JSON: {raw[:80]!r}") from None


def _api_error(status: int, data: Json, raw: bytes) -> ApiError:
    """Build an :class:`ApiError` from ``{"error": {code, message, problems}}`` or a fallback."""
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        problems = err.get("problems", data.get("problems"))
        return ApiError(status, str(err.get("code", "error")),
                        str(err.get("message", f"HTTP {status}")),
                        [str(p) for p in problems] if isinstance(problems, list) else None)
    detail = data.get("detail") if isinstance(data, dict) else None
    if isinstance(detail, str):  # a framework default (e.g. a 404 for an unknown route)
        return ApiError(status, "error", f"{detail} (HTTP {status})")
    if isinstance(detail, list):  # a framework validation error
        return ApiError(status, "bad_request", f"the supervisor rejected the request (HTTP {status})",
                        [str(d.get("msg", d)) if isinstance(d, dict) else str(d) for d in detail])
    text = data if isinstance(data, str) else raw.decode("utf-8", "replace")
    text = " ".join(text.split())[:200]
    return ApiError(status, "error", f"HTTP {status} from the supervisor" + (f": {text}" if text else ""))


def _shell_quote(text: str) -> str:
    """Quote a path for a shell command line only when it needs it."""
    if text and all(ch.isalnum() or ch in "/._-+:@%=," for ch in text):
        return text
    return "'" + text.replace("'", "'\"'\"'") + "'"


# -- streaming transfers (resources) -----------------------------------------------------
# Separate from Client.request: bodies of any size go through a fixed-size buffer, never
# whole into memory.  The request head is built here (a binary body), with the same Host and
# Authorization as Client._send: keep the two in step.

TRANSFER_CHUNK = 1024 * 1024


def _transfer_head(client: Client, method: str, path: str, accept: str,
                   extra: str = "") -> bytes:
    host = "localhost" if client.auth is None else client.auth.host
    head = (f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: corral-cli\r\n"
            f"Accept: {accept}\r\nConnection: close\r\n{extra}")
    if client.auth is not None:
        head += f"Authorization: Bearer {client.auth.token}\r\n"
    return (head + "\r\n").encode("latin-1")


def upload(client: Client, path: str, source: BinaryIO, size: int | None,
           progress: Callable[[int], None] | None = None) -> Json:
    """POST ``source``'s bytes to ``path``; return the decoded JSON answer (raise on 4xx/5xx).

    ``size`` known (a regular file): sent with ``Content-Length``, exactly ``size`` bytes (a
    file that shrinks meanwhile raises :class:`CliError`); ``None`` (a pipe): sent chunked.
    ``progress(bytes_sent)`` is called after each piece.  Memory: one buffer of
    :data:`TRANSFER_CHUNK` bytes at a time.
    """
    length = (f"Content-Length: {size}\r\n" if size is not None
              else "Transfer-Encoding: chunked\r\n")
    head = _transfer_head(client, "POST", path, "application/json",
                          "Content-Type: application/octet-stream\r\n" + length)
    sock = client._connect()
    with sock:
        sock.settimeout(None)  # the server may take a while to fsync a large file
        # A send that fails means the server answered early (a refusal) and closed: stop
        # sending and read its answer.  Errors reading ``source`` propagate as they are.
        cut = not _send_all(sock, head)
        sent = 0
        while not cut and (size is None or sent < size):
            want = TRANSFER_CHUNK if size is None else min(TRANSFER_CHUNK, size - sent)
            piece = source.read(want)
            if not piece:
                break
            n = len(piece)
            cut = not _send_all(sock, b"%x\r\n" % n + piece + b"\r\n" if size is None
                                else piece)
            if not cut:
                sent += n
                if progress is not None:
                    progress(sent)
        if not cut and size is None:
            cut = not _send_all(sock, b"0\r\n\r\n")
        elif not cut and size is not None and sent < size:
            raise CliError(f"the file shrank while it was sent ({sent} of {size} bytes)")
        try:
            with sock.makefile("rb") as f:
                status, headers = _read_head(f)
                raw = b"".join(_body_pieces(f, headers, status))
        except OSError as exc:  # e.g. a TLS alert after the server closed
            raise ProtocolError(f"the supervisor closed the connection ({exc})") from None
    data = _decode_json(raw, status)
    if status >= 400:
        raise client._error(status, data, raw)
    if size is not None and sent < size:
        raise ProtocolError("the supervisor closed the connection before the upload ended")
    return data


def _send_all(sock: socket.socket, data: bytes) -> bool:
    """``sock.sendall(data)``; False if the peer has closed (or reset) the connection."""
    try:
        sock.sendall(data)
    except OSError:
        return False
    return True


class Download:
    """A streamed GET: ``with Download(client, path) as d: for piece in d.pieces(): ...``.

    Entering sends the request and reads the head (raising :class:`ApiError` for 4xx/5xx);
    ``headers`` are then available (names lower-cased); leaving closes the connection.
    """

    def __init__(self, client: Client, path: str, timeout: float | None = READ_TIMEOUT) -> None:
        self.client = client
        self.path = path
        self.timeout = timeout
        self.headers: dict[str, str] = {}
        self._sock: socket.socket | None = None
        self._file: BufferedReader | None = None
        self._status = 0

    def __enter__(self) -> Download:
        sock = self.client._connect()
        try:
            sock.settimeout(self.timeout)
            sock.sendall(_transfer_head(self.client, "GET", self.path,
                                        "application/octet-stream"))
            f = sock.makefile("rb")
        except OSError as exc:
            sock.close()
            raise ProtocolError(f"the supervisor closed the connection ({exc})") from None
        self._sock, self._file = sock, f
        try:
            self._status, self.headers = _read_head(f)
            if self._status >= 300:
                raw = b"".join(_body_pieces(f, self.headers, self._status))
                raise self.client._error(self._status, _decode_json(raw, self._status), raw)
        except BaseException:
            self.__exit__()
            raise
        return self

    def pieces(self) -> Iterator[bytes]:
        """The body as it arrives (pieces of at most 64 KiB)."""
        assert self._file is not None, "use Download in a with statement"
        yield from _body_pieces(self._file, self.headers, self._status)

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.close()
        if self._sock is not None:
            self._sock.close()
        self._file = self._sock = None
