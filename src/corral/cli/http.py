"""HTTP/1.1 as the CLI speaks it: the request head, the answer's head and body, server-sent
events, and the API's error body.  STDLIB ONLY (``json``), and no I/O of its own: functions
take a socket's buffered reader and give bytes, text or JSON.

Why not ``http.client``: it pulls in ``ssl`` and ``email`` and roughly doubles the CLI's start
time.  What is supported is what the CLI needs: one request per connection (``Connection:
close``); bodies framed by ``Content-Length``, by ``Transfer-Encoding: chunked``, or by the
server closing the connection; 1xx answers skipped.

Errors: :class:`~corral.cli.errors.ProtocolError` when the answer is not HTTP/JSON or the
connection drops (or times out) mid-answer.
"""

from __future__ import annotations

import json

from corral.cli.errors import ApiError, ProtocolError

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing slows every command's start
if TYPE_CHECKING:
    from collections.abc import Iterator
    from io import BufferedReader
    from typing import Any

    #: JSON as decoded by :mod:`json` (kept loose on purpose: the server owns the schema).
    Json = Any

#: Status codes the client treats specially.
NO_CONTENT = 204
NOT_MODIFIED = 304
FIRST_REDIRECT = 300  # a stream answers 200; anything from here on is not a stream
FIRST_ERROR = 400  # 4xx and 5xx carry the API's error body
UNAUTHORIZED = 401
INTERNAL_ERROR = 500  # what an error sent inside an event stream counts as
_MAX_LINE = 65536
_MAX_HEADERS = 100
_READ_SIZE = 65536


def request_head(method: str, path: str, *, host: str, accept: str, token: str | None = None,
                 headers: str = "") -> bytes:
    """The head of one request, blank line included: ``Connection: close``, the bearer
    ``token`` when given, then ``headers`` (complete ``Name: value\\r\\n`` lines)."""
    head = (f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: corral-cli\r\n"
            f"Accept: {accept}\r\nConnection: close\r\n")
    if token is not None:
        head += f"Authorization: Bearer {token}\r\n"
    return (head + headers + "\r\n").encode("latin-1")


def read_head(f: BufferedReader) -> tuple[int, dict[str, str]]:
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
            if not 100 <= status < 200:  # 1xx: an interim answer, the real one follows
                return status, headers
    except TimeoutError:
        raise ProtocolError("the supervisor did not answer in time") from None
    except OSError as exc:  # ConnectionError, or a TLS error over a remote connection
        raise ProtocolError(f"the supervisor closed the connection ({exc})") from None


def body_pieces(f: BufferedReader, headers: dict[str, str], status: int) -> Iterator[bytes]:
    """Yield the body as it arrives, de-chunked, honouring Content-Length, else until EOF."""
    if status in (NO_CONTENT, NOT_MODIFIED):
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
                piece = f.read(min(remaining, _READ_SIZE))
                if not piece:
                    raise ProtocolError("the answer was cut short")
                remaining -= len(piece)
                yield piece
        else:
            while piece := f.read1(_READ_SIZE):
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
            # Trailer fields (corral sends none) end at an empty line: read past them.
            trailer = f.readline(_MAX_LINE)
            while trailer not in (b"\r\n", b"\n", b""):
                trailer = f.readline(_MAX_LINE)
            return
        data = f.read(size)
        if len(data) < size or f.readline(_MAX_LINE) not in (b"\r\n", b"\n"):
            raise ProtocolError("the answer was cut short")
        yield data


def sse_events(pieces: Iterator[bytes]) -> Iterator[tuple[str | None, str | None]]:
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


def decode_json(raw: bytes, status: int) -> Json:
    """Decode a body; an empty body is ``None``; a non-JSON error body becomes its text."""
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except ValueError:
        if status >= FIRST_ERROR:
            return raw.decode("utf-8", "replace")
        raise ProtocolError(f"the answer is not JSON: {raw[:80]!r}") from None


def api_error(status: int, data: Json, raw: bytes) -> ApiError:
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
