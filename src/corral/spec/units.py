"""Units of the spec: durations, sizes, percentages and signal names, read and written.

LEAF: imports the stdlib and pydantic only.

Each ``parse_*`` takes what a user wrote (a number, or text with a unit) and raises
ValueError with a message that says how to write it; each ``format_*`` gives the shortest
text its ``parse_*`` reads back.  :data:`Duration`, :data:`Size` and :data:`Percent` are the
field types that read and dump them.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from signal import Signals
from typing import Annotated

from pydantic import BeforeValidator, PlainSerializer

_DURATION_UNITS = {"ms": Decimal("0.001"), "s": Decimal(1), "m": Decimal(60), "h": Decimal(3600)}
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h))+|\d+(?:\.\d+)?")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_MICRO = Decimal("0.000001")
_MAX_DURATION = Decimal(10**9)  # about 31 years: beyond it, a typo


def parse_duration(v: object) -> float:
    """Seconds in ``v``: a number of seconds, or text like "250ms", "5s", "1h30m", "1.5s", "0".

    The result is rounded to the microsecond.  Raises ValueError for a negative, infinite or
    unreadable value.
    """
    if isinstance(v, bool) or not isinstance(v, int | float | str):
        raise ValueError(f"must be a duration like 5s, 250ms or 1h30m, not {type(v).__name__}")
    text = str(v).strip()
    if text.startswith("-"):
        raise ValueError(f"must not be negative, got {v!r}")
    if isinstance(v, float) and v == v and v not in (float("inf"), float("-inf")):
        total = Decimal(repr(v))
    elif not _DURATION.fullmatch(text):
        raise ValueError(f"invalid duration {v!r}: use a number and ms, s, m or h (250ms, 1h30m)")
    elif text[-1].isdigit():
        total = Decimal(text)
    else:
        total = sum(
            (Decimal(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(text)), Decimal(0)
        )
    if total > _MAX_DURATION:
        raise ValueError(f"duration {v!r} is too long")
    return float(total.quantize(_MICRO))


def format_duration(seconds: float) -> str:
    """The shortest text :func:`parse_duration` reads back as ``seconds`` (8.0 -> "8s", 90 -> "1m30s")."""
    us = round(seconds * 1_000_000)
    if us < 0:
        raise ValueError(f"negative duration {seconds!r}")
    if us == 0:
        return "0s"
    if us < 1_000_000:
        return _decimal(us, 1000) + "ms"
    hours, rest = divmod(us, 3_600_000_000)
    minutes, rest = divmod(rest, 60_000_000)
    parts = [f"{hours}h" if hours else "", f"{minutes}m" if minutes else ""]
    return "".join([*parts, _decimal(rest, 1_000_000) + "s" if rest else ""])


def _decimal(n: int, unit: int) -> str:
    whole, frac = divmod(n, unit)
    return f"{whole}.{frac:0{len(str(unit)) - 1}d}".rstrip("0") if frac else str(whole)


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([A-Za-z]*)")
_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_SIZE_UNITS |= {p: 1024**i for i, p in enumerate("kmgt", 1)}
_SIZE_UNITS |= {p + "ib": 1024**i for i, p in enumerate("kmgt", 1)}
_BINARY = (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024))


def parse_size(v: object) -> int:
    """Bytes in ``v``: an int, or text like "512MiB", "64KiB", "100MB" (decimal), "1G" (= 1GiB).

    Units are case-insensitive; bare K/M/G/T are binary, as in systemd.  Raises ValueError for a
    negative or unreadable value.
    """
    if isinstance(v, int) and not isinstance(v, bool):
        n = v
    elif isinstance(v, str) and (m := _SIZE.fullmatch(v.strip())) and m[2].lower() in _SIZE_UNITS:
        n = round(Decimal(m[1]) * _SIZE_UNITS[m[2].lower()])
    else:
        raise ValueError(f"invalid size {v!r}: use bytes or a unit, e.g. 64KiB, 10MiB, 1GiB, 100MB")
    if n < 0:
        raise ValueError(f"must not be negative, got {v!r}")
    return n


def format_size(n: int) -> str:
    """Text for ``n`` bytes in the largest binary unit that divides it (10485760 -> "10MiB")."""
    for suffix, unit in _BINARY:
        if n and n % unit == 0:
            return f"{n // unit}{suffix}"
    return f"{n}B"


def _parse_percent(v: object) -> float:
    text = v.strip().removesuffix("%") if isinstance(v, str) else v
    try:
        if isinstance(text, bool) or not isinstance(text, int | float | str):
            raise ValueError
        value = float(Decimal(str(text)))
    except (ValueError, InvalidOperation):
        raise ValueError(f"invalid percentage {v!r}: use a number like 150 or '150%'") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"invalid percentage {v!r}")
    return value


def _format_percent(v: float) -> str:
    return f"{int(v) if v.is_integer() else v}%"


def parse_signal(v: object) -> str:
    """The signal's name without "SIG" for "TERM", "SIGTERM", "sigterm", "15" or 15.

    Raises ValueError for a name or number the host does not know.
    """
    text = str(v).strip().upper() if isinstance(v, int | str) and not isinstance(v, bool) else ""
    try:
        sig = Signals(int(text)) if text.isdigit() else Signals["SIG" + text.removeprefix("SIG")]
    except (KeyError, ValueError):
        raise ValueError(f"unknown signal {v!r} (e.g. TERM, INT, HUP, QUIT, KILL)") from None
    return sig.name.removeprefix("SIG")


Duration = Annotated[
    float, BeforeValidator(parse_duration), PlainSerializer(format_duration, return_type=str)
]
Size = Annotated[int, BeforeValidator(parse_size), PlainSerializer(format_size, return_type=str)]
Percent = Annotated[
    float, BeforeValidator(_parse_percent), PlainSerializer(_format_percent, return_type=str)
]
