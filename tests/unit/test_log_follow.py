"""Following a log the launcher writes and rotates: real files, the launcher's own writer.

Each record carries its number, so a record read twice or lost shows; what a follower
skips it must announce, to the byte.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from pathlib import Path

import pytest

from corral.launcher.logfile import LogFile
from corral.logs import reader
from corral.logs.reader import Batch, Cursor

RECORD = 32  # bytes per record, newline included


def record(i: int) -> bytes:
    return b"%06d:" % i + b"r" * (RECORD - 8) + b"\n"


def write(log: LogFile, first: int, count: int) -> None:
    """Records first..first+count-1, one write each (the launcher rotates between writes)."""
    for i in range(first, first + count):
        log.write([record(i)])


def numbers(batches: list[Batch]) -> list[int]:
    return [int(line.split(":")[0]) for b in batches for line in b.lines]


async def take(follow: AsyncGenerator[Batch, None], until: int) -> list[Batch]:
    """Batches until the record numbered ``until`` has come."""
    got: list[Batch] = []
    while until not in numbers(got):
        got.append(await asyncio.wait_for(follow.__anext__(), 5))
    return got


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "logs" / "web.log"


def test_cursor_text_round_trips_and_refuses_other_text() -> None:
    for cursor in (Cursor(12, 34, 56), Cursor(12, 34), reader.BEFORE_FIRST):
        assert Cursor.parse(cursor.token()) == cursor
    for bad in ("", "12", "a:b", "1:2:3:4", "-1:2", "1:2:x"):
        with pytest.raises(ValueError):
            Cursor.parse(bad)


def test_follow_prints_the_tail_then_new_records_across_rotations(path: Path) -> None:
    """The last n records, then every new one once, while the log rotates under the
    follower (files of 4 records, keep=2)."""
    log = LogFile(str(path), max_bytes=4 * RECORD, keep=2)
    write(log, 0, 10)

    async def scenario() -> list[int]:
        follow = reader.follow(path, 3, keep=2)
        try:
            first = await follow.__anext__()
            assert numbers([first]) == [7, 8, 9]
            got = [first]
            for start in range(10, 40, 5):
                write(log, start, 5)
                got += await take(follow, start + 4)
            return numbers(got)
        finally:
            await follow.aclose()
    assert asyncio.run(scenario()) == list(range(7, 40))


def test_a_new_follower_resumes_from_a_cursor(path: Path) -> None:
    """A follower started from the cursor of another one's last batch gets exactly the
    records after it, though the log rotated in between (the file is found by inode)."""
    log = LogFile(str(path), max_bytes=4 * RECORD, keep=3)
    write(log, 0, 3)

    async def scenario() -> list[int]:
        first = reader.follow(path, 10, keep=3)
        got = await take(first, 2)
        await first.aclose()
        cursor = got[-1].cursor
        write(log, 3, 6)  # the cursor's file is now web.log.1
        second = reader.follow(path, 10, keep=3, cursor=cursor)
        try:
            resumed = await take(second, 8)
            assert all(b.skipped == 0 for b in resumed)
            return numbers(got) + numbers(resumed)
        finally:
            await second.aclose()
    assert asyncio.run(scenario()) == list(range(9))


def test_resuming_after_the_cursors_file_was_deleted_says_how_much_is_lost(path: Path) -> None:
    """When the cursor's file and the next ones were rotated past keep, the follower says
    how many bytes are gone (exactly those of the lost records), then goes on."""
    log = LogFile(str(path), max_bytes=4 * RECORD, keep=1)
    write(log, 0, 2)

    async def scenario() -> tuple[list[Batch], list[int]]:
        first = reader.follow(path, 10, keep=1)
        got = await take(first, 1)
        await first.aclose()
        write(log, 2, 20)  # files of 4: 0-3, 4-7, ... 16-19, 20-21; kept: 16-19, 20-21
        second = reader.follow(path, 0, keep=1, cursor=got[-1].cursor)
        try:
            return await take(second, 21), numbers(got)
        finally:
            await second.aclose()
    resumed, before = asyncio.run(scenario())
    assert before == [0, 1]
    assert [b.skipped for b in resumed if b.skipped] == [14 * RECORD]  # records 2..15
    assert numbers(resumed) == list(range(16, 22))


def test_a_slow_follower_finishes_its_file_and_counts_what_rotated_away(path: Path) -> None:
    """A follower that stops reading while the log rotates past keep reads the file it
    held to its end (deleted or not), then announces the files it never saw, to the byte:
    every record is either printed once or counted."""
    log = LogFile(str(path), max_bytes=4 * RECORD, keep=1)
    write(log, 0, 2)

    async def scenario() -> list[Batch]:
        follow = reader.follow(path, 0, keep=1)
        try:
            got = [await follow.__anext__()]  # the start: the end of records 0-1
            write(log, 2, 1)
            got += await take(follow, 2)
            write(log, 3, 40)  # rotates ten times while nobody reads
            got += await take(follow, 42)
            return got
        finally:
            await follow.aclose()
    got = asyncio.run(scenario())
    seen = numbers(got)
    assert seen == sorted(set(seen)) and seen[:2] == [2, 3]  # its own file, to the end
    skipped = sum(b.skipped or 0 for b in got)
    assert skipped == (41 - len(seen)) * RECORD
    assert seen[-1] == 42


def test_a_log_created_after_the_follower_started_is_read_from_its_start(path: Path) -> None:
    """Following a service that has not written yet: the first file is read whole."""
    async def scenario() -> list[int]:
        follow = reader.follow(path, 5, keep=2)
        try:
            start = await follow.__anext__()
            assert start.lines == [] and start.cursor == reader.BEFORE_FIRST
            write(LogFile(str(path), max_bytes=1 << 20, keep=2), 0, 3)
            return numbers(await take(follow, 2))
        finally:
            await follow.aclose()
    assert asyncio.run(scenario()) == [0, 1, 2]


def test_partial_and_endless_lines(path: Path) -> None:
    """A partial last line is not replayed as a record of its own, and bytes without a
    newline come in records of at most 64 KiB."""
    log = LogFile(str(path), max_bytes=1 << 30, keep=1)
    log.write([record(0), b"half a li"])

    async def scenario() -> list[str]:
        follow = reader.follow(path, 5, keep=1)
        try:
            first = await follow.__anext__()
            assert first.lines == [record(0).decode().rstrip("\n")]
            log.write([b"ne\n", b"y" * (200 * 1024)])
            lines: list[str] = []
            while sum(map(len, lines)) < 3 * reader.MAX_RECORD:  # the rest waits for its end
                lines += (await asyncio.wait_for(follow.__anext__(), 5)).lines
            return lines
        finally:
            await follow.aclose()
    lines = asyncio.run(scenario())
    assert lines[0] == "half a line"
    assert lines[1:] == ["y" * reader.MAX_RECORD] * 3
