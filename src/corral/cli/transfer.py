"""Streamed transfers of resources: :func:`upload` and :class:`Download`.

Separate from :meth:`Client.request <corral.cli.client.Client.request>`, which holds a whole
body in memory: these send and read bodies of any size through a buffer of
:data:`TRANSFER_CHUNK` bytes, over the same connection (socket or remote TLS) and with the
same request head as every other call.
"""

from __future__ import annotations

from corral.cli.client import READ_TIMEOUT
from corral.cli.errors import CliError, ProtocolError
from corral.cli.http import FIRST_ERROR, FIRST_REDIRECT, body_pieces, decode_json, read_head

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing slows every command's start
if TYPE_CHECKING:
    import socket
    from collections.abc import Callable, Iterator
    from io import BufferedReader
    from typing import BinaryIO

    from corral.cli.client import Client
    from corral.cli.http import Json

#: The one buffer a transfer holds: what it reads from a file and sends at a time.
TRANSFER_CHUNK = 1024 * 1024


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
    head = client.request_head("POST", path, "application/json",
                               "Content-Type: application/octet-stream\r\n" + length)
    sock = client.connect()
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
                status, headers = read_head(f)
                raw = b"".join(body_pieces(f, headers, status))
        except OSError as exc:  # e.g. a TLS alert after the server closed
            raise ProtocolError(f"the supervisor closed the connection ({exc})") from None
    data = decode_json(raw, status)
    if status >= FIRST_ERROR:
        raise client.error_for(status, data, raw)
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
        sock = self.client.connect()
        try:
            sock.settimeout(self.timeout)
            sock.sendall(self.client.request_head("GET", self.path, "application/octet-stream"))
            f = sock.makefile("rb")
        except OSError as exc:
            sock.close()
            raise ProtocolError(f"the supervisor closed the connection ({exc})") from None
        self._sock, self._file = sock, f
        try:
            self._status, self.headers = read_head(f)
            if self._status >= FIRST_REDIRECT:
                raw = b"".join(body_pieces(f, self.headers, self._status))
                raise self.client.error_for(self._status, decode_json(raw, self._status), raw)
        except BaseException:
            self.__exit__()
            raise
        return self

    def pieces(self) -> Iterator[bytes]:
        """The body as it arrives (pieces of at most 64 KiB)."""
        assert self._file is not None, "use Download in a with statement"
        yield from body_pieces(self._file, self.headers, self._status)

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.close()
        if self._sock is not None:
            self._sock.close()
        self._file = self._sock = None
