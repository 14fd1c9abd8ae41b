"""Byte-exact check of a captured log against the writer's stream.

``raw`` logs must equal the stream. ``stamped`` logs (corral) must have, on every line,
the prefix ``<RFC 3339 UTC µs> <pid> O `` (format checked, pid = the writer's), and equal
the stream once the prefixes are stripped; the timestamps must not go backwards (checked
on the first and last line of every 8 MiB block). Only when the fast comparison fails are
the lines parsed one by one to count what was lost, duplicated, reordered or corrupted.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.writer import LINE_BYTES, build, lines

BLOCK = 8 * 1024 * 1024
_TS = rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z"


@dataclass
class LogCheck:
    file_bytes: int = 0
    lines: int = 0
    identical: bool = False
    lost: int = 0
    duplicated: int = 0
    reordered: int = 0
    corrupt: int = 0
    bad_prefix: int = 0
    ts_backwards: int = 0

    @property
    def ok(self) -> bool:
        return self.identical and not (self.bad_prefix or self.ts_backwards)


def _blocks(files: Sequence[Path]) -> Iterator[bytes]:
    """Whole lines, about BLOCK bytes at a time, across all files in order."""
    carry = b""
    for path in files:
        with open(path, "rb") as f:
            while chunk := f.read(BLOCK):
                chunk = carry + chunk
                cut = chunk.rfind(b"\n") + 1
                carry = chunk[cut:]
                if cut:
                    yield chunk[:cut]
    if carry:
        yield carry


def check(files: Sequence[Path], total_lines: int, stamped_pid: int | None,
          repeats: int = 1) -> LogCheck:
    """Compare ``files`` (concatenated) with lines 0..total_lines-1, ``repeats`` times over."""
    res = LogCheck(file_bytes=sum(p.stat().st_size for p in files))
    prefix = None
    if stamped_pid is not None:
        prefix = re.compile(rb"^" + _TS + rb" %d O " % stamped_pid, re.M)
    expected = _expected(total_lines)
    pos, last_ts, same = 0, b"", True
    for block in _blocks(files):
        n = block.count(b"\n")
        res.lines += n
        if prefix is not None and stamped_pid is not None:
            first_ts, last = block[:27], block[block.rfind(b"\n", 0, len(block) - 1) + 1 :][:27]
            if first_ts < last_ts:
                res.ts_backwards += 1
            last_ts = last
            stripped = _strip_fixed(block, n, b" %d O " % stamped_pid)
            if stripped is None:  # not all records of the expected length: use the regex
                stripped, hits = prefix.subn(b"", block)
                res.bad_prefix += n - hits
            block = stripped
        if same and not _matches(expected, pos, block):
            same = False
        pos += len(block)
    res.identical = same and pos == len(expected) * repeats
    if not res.identical:
        _count_damage(res, files, total_lines, prefix, repeats)
    return res


_DIGITS = b"0123456789"
_TS_SHAPE = b"dddd-dd-ddTdd:dd:dd.ddddddZ"


def _strip_fixed(block: bytes, n: int, tail: bytes) -> bytes | None:
    """Fast path for stamped records of one fixed length (``<ts><tail><100-byte line>``):
    check every prefix column at once with strided slices and cut the prefixes off; None
    when the block is not made of such records (then the regex path decides)."""
    plen = len(_TS_SHAPE) + len(tail)
    rec = plen + LINE_BYTES
    if n == 0 or len(block) != n * rec:
        return None
    shape = _TS_SHAPE + tail
    for k, ch in enumerate(shape):
        col = block[k::rec]
        if ch == ord("d"):
            if col.translate(None, _DIGITS):
                return None
        elif col != bytes([ch]) * n:
            return None
    if block[rec - 1 :: rec] != b"\n" * n:
        return None
    out = bytearray(n * LINE_BYTES)
    for i in range(LINE_BYTES):
        out[i::LINE_BYTES] = block[plen + i :: rec]
    return bytes(out)


def _matches(expected: bytes, pos: int, block: bytes) -> bool:
    """``block`` equals the endlessly repeated ``expected`` stream from offset ``pos``."""
    size, i = len(expected), 0
    while i < len(block):
        off = (pos + i) % size
        n = min(len(block) - i, size - off)
        if expected[off : off + n] != block[i : i + n]:
            return False
        i += n
    return True


_CACHE: dict[int, bytes] = {}


def _expected(total: int) -> bytes:
    if total not in _CACHE:
        _CACHE.clear()
        _CACHE[total] = bytes(build(total))
    return _CACHE[total]


def data_file(directory: Path, total: int) -> Path:
    """The writer's input (lines 0..total-1), written once per line count."""
    path = directory / f"lines-{total}.bin"
    if not path.exists() or path.stat().st_size != total * LINE_BYTES:
        directory.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(_expected(total))
        tmp.replace(path)
    return path


def _count_damage(
    res: LogCheck, files: Sequence[Path], total: int, prefix: re.Pattern[bytes] | None,
    repeats: int,
) -> None:
    """Slow path: parse every line to count lost / duplicated / reordered / corrupt ones."""
    seen = [0] * total
    prev = -1
    for block in _blocks(files):
        if prefix is not None:
            block = prefix.sub(b"", block)
        for line in block.split(b"\n")[:-1]:
            try:
                num = int(line[:10])
            except ValueError:
                res.corrupt += 1
                continue
            if not 0 <= num < total or line + b"\n" != lines(num, 1):
                res.corrupt += 1
                continue
            if seen[num] >= repeats:
                res.duplicated += 1
            seen[num] += 1
            if num < prev and not (num == 0 and prev == total - 1):  # a new repeat starts
                res.reordered += 1
            prev = num
    res.lost = sum(max(0, repeats - k) for k in seen)
