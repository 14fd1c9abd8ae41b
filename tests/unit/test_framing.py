"""Tests of the launcher protocol's wire format (corral.protocol.framing) and signal names."""

from __future__ import annotations

import json
import signal
import struct

import pytest

from corral.protocol import framing
from corral.protocol.framing import MAX_FRAME, Decoder, FrameError, decode_body, encode
from corral.protocol.messages import error, signal_name, signal_number


def frame_of(body: bytes) -> bytes:
    """A frame with ``body`` as it is, valid or not."""
    return struct.pack(">I", len(body)) + body


# ------------------------------------------------------------------------- round trip
def test_round_trip_keeps_the_message() -> None:
    """A message encoded and then decoded comes back equal, unicode and nesting included."""
    message = {"type": "Spawn", "id": 7, "argv": ["echo", "héllo ✓"], "env": {"A": "1"},
               "log": {"path": "/tmp/x.log", "max_bytes": 10, "keep": 2}, "cwd": None,
               "ratio": 0.25, "ok": True}
    assert Decoder().feed(encode(message)) == [message]


def test_frame_is_length_prefixed_json() -> None:
    """A frame is a 4-byte big-endian length followed by exactly that many bytes of JSON."""
    data = encode({"type": "List", "id": 1})
    (length,) = struct.unpack(">I", data[:4])
    assert length == len(data) - 4
    assert json.loads(data[4:]) == {"type": "List", "id": 1}


def test_empty_object_round_trips() -> None:
    """The smallest message, an empty object, is a valid frame."""
    assert Decoder().feed(encode({})) == [{}]


def test_error_reply_shape() -> None:
    """An Error reply carries its type, the request id, a code and a message."""
    assert error(3, "BadRequest", "no") == {"type": "Error", "id": 3, "code": "BadRequest",
                                            "message": "no"}


# --------------------------------------------------------------------- stream handling
def test_several_frames_in_one_feed_come_out_in_order() -> None:
    """Pipelined frames that arrive in one read are all decoded, in the order sent."""
    messages = [{"type": "List", "id": i} for i in range(5)]
    data = b"".join(encode(msg) for msg in messages)
    decoder = Decoder()
    assert decoder.feed(data) == messages
    assert decoder.pending == 0


def test_frame_split_byte_by_byte_is_held_until_complete() -> None:
    """A frame that arrives one byte at a time yields nothing until its last byte."""
    message = {"type": "Signal", "id": 9, "pid": 1234, "signal": "TERM"}
    data = encode(message)
    decoder = Decoder()
    for i, byte in enumerate(data[:-1]):
        assert decoder.feed(bytes([byte])) == []
        assert decoder.pending == i + 1
    assert decoder.feed(data[-1:]) == [message]
    assert decoder.pending == 0


def test_whole_frame_followed_by_a_partial_one() -> None:
    """A read that ends mid-frame delivers the whole frames and keeps the rest for later."""
    first, second = {"id": 1}, {"id": 2, "pad": "x" * 100}
    data = encode(first) + encode(second)
    cut = len(encode(first)) + 10
    decoder = Decoder()
    assert decoder.feed(data[:cut]) == [first]
    assert decoder.pending == 10
    assert decoder.feed(data[cut:]) == [second]


def test_empty_feed_yields_nothing() -> None:
    """Feeding no bytes is harmless and yields no message."""
    decoder = Decoder()
    assert decoder.feed(b"") == []
    assert decoder.pending == 0


# -------------------------------------------------------------------------- bad input
def test_oversized_length_is_a_frame_error() -> None:
    """A length header over the limit is refused at once, before any body arrives."""
    with pytest.raises(FrameError, match="exceeds"):
        Decoder().feed(struct.pack(">I", MAX_FRAME + 1))


def test_largest_length_header_is_a_frame_error() -> None:
    """A hostile 4 GiB length header is refused rather than awaited."""
    with pytest.raises(FrameError):
        Decoder().feed(b"\xff\xff\xff\xff")


def test_encoding_an_oversized_message_is_a_frame_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """A message whose JSON is larger than the limit cannot be sent."""
    monkeypatch.setattr(framing, "MAX_FRAME", 64)
    with pytest.raises(FrameError):
        encode({"pad": "x" * 100})


def test_frame_at_the_limit_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    """A frame exactly as large as the limit is still a valid frame."""
    monkeypatch.setattr(framing, "MAX_FRAME", 64)
    body = json.dumps({"pad": "x" * 54}, separators=(",", ":")).encode()
    assert len(body) == 64
    assert Decoder().feed(frame_of(body)) == [{"pad": "x" * 54}]


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"\xff\xfe{}", "invalid UTF-8"),
        (b'{"type": "Li', "truncated JSON"),
        (b"not json", "not JSON"),
        (b"", "empty body"),
        (b"[1, 2, 3]", "a list"),
        (b'"Hello"', "a string"),
        (b"42", "a number"),
        (b"null", "null"),
    ],
)
def test_bad_body_is_a_frame_error(body: bytes, why: str) -> None:
    """A frame whose body is not a UTF-8 JSON object is refused with FrameError."""
    with pytest.raises(FrameError):
        Decoder().feed(frame_of(body))
    with pytest.raises(FrameError):
        decode_body(body)


def test_non_object_error_names_what_was_sent() -> None:
    """The error for JSON that is not an object says what it was instead."""
    with pytest.raises(FrameError, match="list"):
        decode_body(b"[]")


# ------------------------------------------------------------------------- signals
@pytest.mark.parametrize("name", ["TERM", "SIGTERM", "term", "sigterm", "15", 15])
def test_signal_number_accepts_names_prefixes_and_numbers(name: str | int) -> None:
    """TERM, SIGTERM, "15" and 15 all mean SIGTERM."""
    assert signal_number(name) == signal.SIGTERM


@pytest.mark.parametrize("name", ["KILL", "HUP", "USR1", "CONT"])
def test_signal_number_knows_common_signals(name: str) -> None:
    """Common signal names map to the system's numbers."""
    assert signal_number(name) == getattr(signal, "SIG" + name)


@pytest.mark.parametrize("name", ["NOPE", "SIGNOPE", "", "999", 999, -1, True, 1.5, None])
def test_signal_number_rejects_unknown_signals(name: object) -> None:
    """A name or number that is not a signal raises ValueError."""
    with pytest.raises(ValueError):
        signal_number(name)  # type: ignore[arg-type]


@pytest.mark.parametrize(("number", "name"), [(15, "TERM"), (9, "KILL"), (1, "HUP")])
def test_signal_name_drops_the_sig_prefix(number: int, name: str) -> None:
    """Signal numbers are named without the SIG prefix, as the protocol sends them."""
    assert signal_name(number) == name
    assert signal_number(signal_name(number)) == number


def test_signal_name_of_unknown_number_is_the_number() -> None:
    """An unknown signal number is reported as its digits instead of failing."""
    assert signal_name(999) == "999"
