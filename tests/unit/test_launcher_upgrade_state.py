"""The launcher's hand-over state across an upgrade's exec: what :func:`encode` writes,
:func:`decode` reads back as the same values, and a dataclass field added later travels
without a change to the encoder."""

from __future__ import annotations

import collections
import json
from dataclasses import dataclass, field

from corral.launcher import record
from corral.launcher.upgrade import decode, encode
from corral.protocol.standing import StandingOrder


@dataclass
class Order:
    """A field a later launcher might add to its children."""

    respawn_after: float
    argv: list[str]


@dataclass
class Record:
    name: str
    strays: set[int] = field(default_factory=set)
    entry: record.Entry | None = None
    order: Order | None = None
    carry: bytes = b""


def round_trip(value: object, hint: object = None) -> object:
    return decode(json.loads(json.dumps(encode(value))), hint)


def test_data_json_cannot_say_comes_back_as_it_was() -> None:
    recent = collections.deque([b"a\xff", b"b"], maxlen=5)
    assert round_trip(b"\x00partial line") == b"\x00partial line"
    assert round_trip({3, 5}) == {3, 5}
    assert list(round_trip(recent)) == [b"a\xff", b"b"]  # type: ignore[call-overload]
    assert round_trip({120: {"seq": 1}, 121: None}) == {120: {"seq": 1}, 121: None}
    counts = round_trip(collections.Counter({"web/0": 3}), collections.Counter)
    assert isinstance(counts, collections.Counter) and counts["web/0"] == 3


def test_a_dataclass_and_fields_added_to_it_travel_whole() -> None:
    entry = record.Entry(name="web/0", pid=120, pgid=120, start=99, mark="web/0@1.2.3")
    child = Record("web/0", {7, 9}, entry, Order(0.1, ["sleep", "1"]), b"half a li")
    assert round_trip(child, Record) == child


def test_fields_the_reader_does_not_know_are_left_out() -> None:
    @dataclass
    class Older:
        name: str

    assert round_trip(Record("web/0", carry=b"x"), Older) == Older("web/0")


def test_a_standing_order_travels_and_a_bare_delay_becomes_one() -> None:
    """A child's sequence order comes back whole (its tuples included); the bare delay a
    launcher before sequences kept is read as the one-exit order it was."""
    order = StandingOrder(0, (100, None), 60_000, (0, 100))
    back = round_trip(order, StandingOrder | None)
    assert back == order and isinstance(back, StandingOrder) and back.then == (100, None)
    assert StandingOrder.lift(round_trip(250, StandingOrder | None)) == StandingOrder(250)
