"""A tiny HTTP/1.1 client over the supervisor's AF_UNIX socket (stdlib ``socket`` + ``json``).

Why not ``http.client``: it pulls in ``ssl`` and ``email`` and roughly doubles the CLI's start
time (reference/feasibility.md §3).  This client does exactly what the CLI needs:

* one request per connection, sent with ``Connection: close``;
* response bodies framed by ``Content-Length``, by ``Transfer-Encoding: chunked``, or by the
  server closing the connection;
* :meth:`Client.request` returns ``(status, decoded JSON or None)`` for 2xx/3xx answers and
  raises :class:`ApiError` for 4xx/5xx, carrying the API's ``{"error": {code, message}}``;
* :meth:`Client.stream` yields the JSON object of each server-sent event's ``data:`` field.

Errors: :class:`UnreachableError` (exit 111) when nothing accepts on the socket; :class:`ApiError`
(exit 1) for an error answer; :class:`ProtocolError` (exit 1) when the answer is not HTTP/JSON
or the connection drops mid-answer.
"""

from __future__ import annotations

import json
import os
import socket
from io import BufferedReader

from corral.cli.common import EXIT_UNREACHABLE, CliError

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~2 ms at start-up
if TYPE_CHECKING:
    from collections.abc import Iterator

    from corral.cli.common import Json
CONNECT_TIMEOUT = 5.0
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


class Client:
    """Talks HTTP/1.1 to one Unix socket; every call opens and closes its own connection."""

    def __init__(self, socket_path: str, connect_timeout: float = CONNECT_TIMEOUT) -> None:
        self.socket_path = socket_path
        self.connect_timeout = connect_timeout

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
            raise _api_error(status, data, raw)
        return status, data

    def stream(self, path: str) -> Iterator[Json]:
        """Yield the decoded JSON of each server-sent event's ``data`` until the server closes.

        An event whose object is ``{"error": {...}}`` raises :class:`ApiError` (status 500).
        """
        sock = self._send("GET", path, None, None, accept="text/event-stream")
        with sock, sock.makefile("rb") as f:
            status, headers = _read_head(f)
            if status >= 300:
                raw = b"".join(_body_pieces(f, headers, status))
                raise _api_error(status, _decode_json(raw, status), raw)
            ctype = headers.get("content-type", "")
            if not ctype.startswith("text/event-stream"):
                raise ProtocolError(f"expected an event stream from {path}, got {ctype or '?'}")
            for data in _sse_data(_body_pieces(f, headers, status)):
                try:
                    obj = json.loads(data)
                except ValueError:
                    raise ProtocolError(f"an event from {path} is not JSON: {data[:80]!r}") from None
                if isinstance(obj, dict) and set(obj) == {"error"}:
                    raise _api_error(500, obj, data.encode())
                yield obj

    def answers(self) -> bool:
        """Whether something accepts connections on the socket right now."""
        try:
            self._connect().close()
        except UnreachableError:
            return False
        return True

    # -- internals -----------------------------------------------------------------------

    def _connect(self) -> socket.socket:
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
              accept: str) -> socket.socket:
        payload = b"" if body is None else json.dumps(body).encode()
        head = (f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: corral-cli\r\n"
                f"Accept: {accept}\r\nConnection: close\r\n")
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
    except ConnectionError as exc:
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
    except ConnectionError as exc:
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


def _sse_data(pieces: Iterator[bytes]) -> Iterator[str]:
    """Yield each event's ``data`` (several ``data:`` lines joined by newlines).

    Follows the EventSource rules that matter here: lines end in LF or CRLF; a blank line
    dispatches; ``:`` starts a comment; other fields (``event``, ``id``, ``retry``) are ignored;
    an event cut off by the end of the stream is dropped.
    """
    buf = b""
    data: list[str] = []
    for piece in pieces:
        buf += piece
        lines = buf.split(b"\n")
        buf = lines.pop()
        for raw in lines:
            line = raw.removesuffix(b"\r").decode("utf-8", "replace")
            if not line:
                if data:
                    yield "\n".join(data)
                    data = []
            elif line.startswith("data:"):
                data.append(line[6:] if line.startswith("data: ") else line[5:])


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
