"""Length-prefixed JSON frames.  STDLIB ONLY.

A frame is a 4-byte big-endian length followed by that many bytes of UTF-8 JSON, which
must decode to an object (a ``dict``).  The decoder is a pure byte-stream parser with no
I/O policy, so the launcher (``selectors``) and the supervisor (``asyncio``) share it.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from typing import Any

#: Refuse frames larger than this: a bigger length is a corrupt or hostile peer.
MAX_FRAME = 16 * 1024 * 1024

_HEADER = struct.Struct(">I")

Message = dict[str, Any]


class FrameError(Exception):
    """The byte stream is not a sequence of valid frames; the connection must be dropped."""


def encode(message: Mapping[str, Any]) -> bytes:
    """Return ``message`` as one frame.

    Raises:
        FrameError: the encoded message is larger than :data:`MAX_FRAME`.
    """
    body = json.dumps(message, separators=(",", ":")).encode()
    if len(body) > MAX_FRAME:
        raise FrameError(f"frame of {len(body)} bytes exceeds the {MAX_FRAME}-byte limit")
    return _HEADER.pack(len(body)) + body


class Decoder:
    """Incremental frame decoder: feed bytes, get whole messages.

    Error handling: a length over :data:`MAX_FRAME`, invalid UTF-8 or JSON, or JSON that is
    not an object raises :class:`FrameError`; the decoder is then unusable (the stream
    position is lost), and the caller should close the connection.  A truncated frame is
    simply kept until more bytes arrive.
    """

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Message]:
        """Add ``data`` and return every message it completes, in order."""
        self._buf += data
        out: list[Message] = []
        while len(self._buf) >= _HEADER.size:
            (length,) = _HEADER.unpack_from(self._buf)
            if length > MAX_FRAME:
                raise FrameError(f"frame length {length} exceeds the {MAX_FRAME}-byte limit")
            end = _HEADER.size + length
            if len(self._buf) < end:
                break
            body = bytes(self._buf[_HEADER.size:end])
            del self._buf[:end]
            out.append(decode_body(body))
        return out

    @property
    def pending(self) -> int:
        """Bytes received that do not yet form a whole frame."""
        return len(self._buf)


def decode_body(body: bytes) -> Message:
    """Decode one frame body.  Raises :class:`FrameError` if it is not a JSON object."""
    try:
        message = json.loads(body.decode())
    except (UnicodeDecodeError, ValueError) as exc:
        raise FrameError(f"frame is not valid JSON: {exc}") from None
    if not isinstance(message, dict):
        raise FrameError(f"frame is a JSON {type(message).__name__}, not an object")
    return message
