"""Tests of service output handling (corral.launcher.output, .logfile and .echo): stamping,
long lines, rotation.

Real ``os.pipe()`` pairs feed a :class:`PipeReader`; each ``chunk()`` is one write followed
by one read, so a test controls exactly which bytes arrive together.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import resource
import signal
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from time import time

import pytest

from corral.launcher import echo as echo_module
from corral.launcher.dispatch import echo_label
from corral.launcher.echo import Echo
from corral.launcher.logfile import START_XATTR, DropReport, LogFile, timestamp
from corral.launcher.output import MAX_LINE, PipeReader, enlarge_pipe

KIB = 1024
F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)
STAMP = rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z"
RECORD = re.compile(rb"^(" + STAMP + rb") (\d+) ([OE]) (.*)$", re.S)


def pattern(size: int, seed: int = 0) -> bytes:
    """``size`` bytes with no newline that never repeat locally, so reordering shows."""
    out = bytearray()
    i = seed
    while len(out) < size:
        out += b"%08d," % i
        i += 1
    return bytes(out[:size])


def records(path: Path) -> list[tuple[bytes, int, bytes, bytes]]:
    """The (timestamp, pid, tag, text) of every record in a stamped log file."""
    data = path.read_bytes() if path.exists() else b""
    assert data == b"" or data.endswith(b"\n"), "a record is not terminated"
    out = []
    for line in data.split(b"\n")[:-1]:
        match = RECORD.match(line)
        assert match, f"not a record: {line[:80]!r}"
        stamp, pid, tag, text = match.groups()
        out.append((stamp, int(pid), tag, text))
    return out


def texts(path: Path) -> list[bytes]:
    return [text for *_, text in records(path)]


class Pipe:
    """A pipe whose read end belongs to a PipeReader writing to ``log``."""

    def __init__(self, log: LogFile, pid: int = 123, tag: bytes = b"O",
                 stamped: bool = True) -> None:
        self.r, self.w = os.pipe()
        os.set_blocking(self.r, False)
        enlarge_pipe(self.w)
        self.capacity = fcntl.fcntl(self.w, F_GETPIPE_SZ)
        self.log = log
        self.reader = PipeReader(self.r, pid, tag, log, stamped)
        self.closed = False

    def chunk(self, data: bytes) -> None:
        """Deliver ``data`` to the reader as one read."""
        assert len(data) <= self.capacity, "the pipe cannot hold this chunk"
        view = memoryview(data)
        while view:
            view = view[os.write(self.w, view):]
        assert self.reader.read() is True

    def feed(self, data: bytes, piece: int) -> None:
        """Deliver ``data`` in reads of ``piece`` bytes."""
        for start in range(0, len(data), piece):
            self.chunk(data[start:start + piece])

    def eof(self) -> None:
        """Close the writing end; the reader sees end of file."""
        os.close(self.w)
        self.closed = True
        assert self.reader.read() is False

    def cleanup(self) -> None:
        if not self.closed:
            os.close(self.w)
        os.close(self.r)
        self.log.close()


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "logs" / "web.log"


@pytest.fixture
def pipes(log_path: Path) -> Iterator[list[Pipe]]:
    made: list[Pipe] = []
    yield made
    for pipe in made:
        pipe.cleanup()


@pytest.fixture
def pipe(pipes: list[Pipe], log_path: Path) -> Pipe:
    made = Pipe(LogFile(str(log_path), 1 << 30, 5))
    pipes.append(made)
    if made.capacity < 512 * KIB:
        pytest.skip("this system does not allow enlarged pipes")
    return made


# ----------------------------------------------------------------------------- timestamp
def test_timestamp_is_rfc3339_utc_with_microseconds() -> None:
    """Timestamps read like 2026-11-21T23:59:01.123456Z and are the current UTC time."""
    before = datetime.fromtimestamp(int(time() * 1e6) / 1e6, UTC)
    stamp = timestamp()
    after = datetime.fromtimestamp(time(), UTC)
    assert re.fullmatch(STAMP, stamp)
    parsed = datetime.strptime(stamp.decode(), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert before <= parsed <= after


# ------------------------------------------------------------------------ stamped format
def test_stamped_record_format(pipe: Pipe, log_path: Path) -> None:
    """Each line becomes one record: timestamp, pid, O for stdout, then the text."""
    pipe.chunk(b"hello world\n")
    content = log_path.read_bytes()
    assert re.match(rb"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z 123 O hello world\n$", content)


def test_stderr_records_are_tagged_e(pipes: list[Pipe], log_path: Path) -> None:
    """Lines from stderr are tagged E and carry the process id."""
    pipe = Pipe(LogFile(str(log_path), 1 << 30, 5), pid=77, tag=b"E")
    pipes.append(pipe)
    pipe.chunk(b"oops\n")
    assert [(pid, tag, text) for _, pid, tag, text in records(log_path)] == [(77, b"E", b"oops")]


def test_every_line_of_a_chunk_is_stamped(pipe: Pipe, log_path: Path) -> None:
    """A chunk of several lines gives one record per line, empty lines included, in order."""
    pipe.chunk(b"one\n\ntwo words\n  three  \n")
    assert texts(log_path) == [b"one", b"", b"two words", b"  three  "]


def test_text_bytes_are_kept_as_they_are(pipe: Pipe, log_path: Path) -> None:
    """Non-UTF-8 bytes, tabs and carriage returns are written unchanged."""
    pipe.chunk(b"\xff\xfe bin\tary\r\n")
    assert texts(log_path) == [b"\xff\xfe bin\tary\r"]


def test_partial_line_is_held_until_its_newline(pipe: Pipe, log_path: Path) -> None:
    """A line that arrives in pieces becomes one record once its newline arrives."""
    pipe.chunk(b"hel")
    assert texts(log_path) == []
    pipe.chunk(b"lo")
    assert texts(log_path) == []
    pipe.chunk(b" world\nnext")
    assert texts(log_path) == [b"hello world"]
    pipe.chunk(b" line\n")
    assert texts(log_path) == [b"hello world", b"next line"]


def test_partial_line_is_flushed_at_eof(pipe: Pipe, log_path: Path) -> None:
    """A last line without a newline is still written when the pipe closes."""
    pipe.chunk(b"done\nno newline at the end")
    assert texts(log_path) == [b"done"]
    pipe.eof()
    assert texts(log_path) == [b"done", b"no newline at the end"]


def test_eof_without_partial_line_adds_nothing(pipe: Pipe, log_path: Path) -> None:
    """Closing a pipe whose output ended with a newline adds no empty record."""
    pipe.chunk(b"a\nb\n")
    pipe.eof()
    assert texts(log_path) == [b"a", b"b"]


def test_drain_writes_what_is_in_the_pipe_and_keeps_the_partial_line(
        pipe: Pipe, log_path: Path) -> None:
    """Output already in the pipe when a child exits is written, without waiting for EOF."""
    os.write(pipe.w, b"last words\nand a half")
    pipe.reader.drain()
    assert texts(log_path) == [b"last words"]
    pipe.reader.flush()
    assert texts(log_path) == [b"last words", b"and a half"]


def test_recent_lines_are_remembered(pipe: Pipe) -> None:
    """The reader remembers the last five complete lines for exit reports."""
    pipe.chunk(b"".join(b"line %d\n" % i for i in range(15)))
    assert list(pipe.reader.recent) == [b"line %d" % i for i in range(10, 15)]


def test_a_line_whose_newline_comes_in_a_later_read_is_remembered_whole(pipe: Pipe) -> None:
    """`print()` to a pipe may reach us as "text" then "\n": the exit report must still
    show the line (it used to remember an empty one)."""
    pipe.chunk(b"starting up")
    pipe.chunk(b"\n")
    pipe.chunk(b"config ")
    pipe.chunk(b"missing\nnext")
    assert list(pipe.reader.recent) == [b"starting up", b"config missing"]


def test_drain_after_end_of_file_reads_nothing(pipe: Pipe) -> None:
    """Once closed, a reader's fd number may belong to another pipe: drain() leaves it."""
    pipe.chunk(b"done\n")
    pipe.eof()
    pipe.reader.fd = -1  # what the launcher does when it closes the pipe at end of file
    pipe.reader.drain()
    assert list(pipe.reader.recent) == [b"done"]


# ---------------------------------------------------------------------------- long lines
def test_long_line_in_one_chunk_is_split_into_64k_records(pipe: Pipe, log_path: Path) -> None:
    """A 200 KiB line without newline becomes 64 KiB records and no byte is lost."""
    line = pattern(200 * KIB)
    pipe.chunk(line)
    pipe.eof()
    got = texts(log_path)
    assert [len(text) for text in got] == [MAX_LINE, MAX_LINE, MAX_LINE, 200 * KIB - 3 * MAX_LINE]
    assert b"".join(got) == line


@pytest.mark.parametrize("piece", [1000, 50 * KIB, 64 * KIB, 65 * KIB, 130 * KIB])
def test_long_line_in_pieces_loses_nothing(pipe: Pipe, log_path: Path, piece: int) -> None:
    """A 200 KiB line arriving in reads of any size is kept whole, in records of at most 64 KiB."""
    line = pattern(200 * KIB)
    pipe.feed(line, piece)
    pipe.eof()
    got = texts(log_path)
    assert all(len(text) <= MAX_LINE for text in got)
    assert b"".join(got) == line


def test_long_line_followed_by_newline_and_more(pipe: Pipe, log_path: Path) -> None:
    """A long line then short lines in one chunk: the long one is split, the others intact."""
    line = pattern(150 * KIB)
    pipe.chunk(line + b"\nafter\nlast")
    pipe.eof()
    got = texts(log_path)
    assert got[-2:] == [b"after", b"last"]
    assert b"".join(got[:-2]) == line
    assert [len(text) for text in got[:-2]] == [MAX_LINE, MAX_LINE, 150 * KIB - 2 * MAX_LINE]


@pytest.mark.parametrize("count", [1, 10, 100])
def test_many_short_lines_and_one_100k_line_keep_every_byte_in_order(
        pipe: Pipe, log_path: Path, count: int) -> None:
    """A chunk mixing short lines with one 100 KiB line keeps every byte, in order."""
    before = [b"short %05d" % i for i in range(count)]
    long_line = pattern(100 * KIB, seed=7)
    after = [b"tail %05d" % i for i in range(count)]
    pipe.chunk(b"\n".join([*before, long_line, *after]) + b"\n")
    got = texts(log_path)
    assert got == [*before, long_line[:MAX_LINE], long_line[MAX_LINE:], *after]


def test_thousands_of_short_lines_and_one_100k_line_keep_every_byte_in_order(
        pipe: Pipe, log_path: Path) -> None:
    """A chunk of thousands of short lines around one 100 KiB line is logged in full."""
    before = [b"short %05d" % i for i in range(3000)]
    long_line = pattern(100 * KIB, seed=7)
    after = [b"tail %05d" % i for i in range(3000)]
    pipe.chunk(b"\n".join([*before, long_line, *after]) + b"\n")
    got = texts(log_path)
    assert got == [*before, long_line[:MAX_LINE], long_line[MAX_LINE:], *after]


def test_many_pieces_in_one_log_write_are_all_written(log_path: Path) -> None:
    """A log write made of a thousand pieces is written whole and in order."""
    log = LogFile(str(log_path), max_bytes=1 << 30, keep=1)
    pieces = [b"%04d\n" % i for i in range(1000)]
    log.write(pieces)
    log.close()
    assert log_path.read_bytes() == b"".join(pieces)


def test_line_of_exactly_64k_is_one_record(pipe: Pipe, log_path: Path) -> None:
    """A line of exactly 64 KiB is not split."""
    line = pattern(MAX_LINE)
    pipe.chunk(line + b"\n")
    assert texts(log_path) == [line]


def test_line_of_exactly_64k_in_two_reads_is_one_record(pipe: Pipe, log_path: Path) -> None:
    """A 64 KiB line whose newline arrives in a later read is still one record."""
    line = pattern(MAX_LINE)
    pipe.chunk(line)
    pipe.chunk(b"\nnext\n")
    assert texts(log_path) == [line, b"next"]


def test_long_line_whose_newline_comes_later_adds_no_empty_record(
        pipe: Pipe, log_path: Path) -> None:
    """A 70 KiB line whose newline arrives in the next read logs no extra empty record."""
    line = pattern(70 * KIB)
    pipe.chunk(line)
    pipe.chunk(b"\nnext\n")
    got = texts(log_path)
    assert got == [line[:MAX_LINE], line[MAX_LINE:], b"next"]


# ------------------------------------------------------------------------------ raw format
def test_raw_format_writes_bytes_unchanged(pipes: list[Pipe], log_path: Path) -> None:
    """In raw format the log holds exactly the bytes the program wrote, partial lines too."""
    pipe = Pipe(LogFile(str(log_path), 1 << 30, 5), stamped=False)
    pipes.append(pipe)
    stream = [b"2024-01-01 own stamp\n", b"partial", b" line\n\xff\x00binary", pattern(100 * KIB)]
    for data in stream:
        pipe.chunk(data)
    pipe.eof()
    assert log_path.read_bytes() == b"".join(stream)


# ------------------------------------------------------------------------------ rotation
def rotated(path: Path, keep: int) -> list[Path]:
    """The log and its rotated files that exist, oldest first."""
    candidates = [path.with_name(f"{path.name}.{i}") for i in range(keep + 5, 0, -1)] + [path]
    return [p for p in candidates if p.exists()]


def test_rotation_keeps_every_byte_across_files(log_path: Path) -> None:
    """Rotation makes .1, .2, .3 and the files, oldest first, hold the whole stream."""
    log = LogFile(str(log_path), max_bytes=100, keep=3)
    writes = [b"%02d:" % i + b"x" * 26 + b"\n" for i in range(12)]  # 30 bytes each
    for data in writes:
        log.write([data])
    log.close()
    files = rotated(log_path, 3)
    assert [p.name for p in files] == ["web.log.3", "web.log.2", "web.log.1", "web.log"]
    assert all(p.stat().st_size <= 100 for p in files)
    assert b"".join(p.read_bytes() for p in files) == b"".join(writes)


def test_rotation_drops_only_files_beyond_keep(log_path: Path) -> None:
    """Past keep files the oldest is dropped, and what remains is the newest part, in order."""
    log = LogFile(str(log_path), max_bytes=100, keep=2)
    writes = [b"%02d:" % i + b"y" * 26 + b"\n" for i in range(20)]
    for data in writes:
        log.write([data])
    log.close()
    files = rotated(log_path, 2)
    assert [p.name for p in files] == ["web.log.2", "web.log.1", "web.log"]
    kept = b"".join(p.read_bytes() for p in files)
    assert b"".join(writes).endswith(kept)
    assert kept == b"".join(writes[-8:])


def test_rotation_with_keep_zero_truncates(log_path: Path) -> None:
    """With keep=0 the log starts over instead of keeping old files."""
    log = LogFile(str(log_path), max_bytes=100, keep=0)
    writes = [b"%02d:" % i + b"z" * 26 + b"\n" for i in range(7)]
    for data in writes:
        log.write([data])
    log.close()
    assert rotated(log_path, 0) == [log_path]
    assert log_path.read_bytes() == b"".join(writes[6:])


def test_write_larger_than_max_bytes_is_kept_whole(log_path: Path) -> None:
    """A single write bigger than max_bytes goes into a file of its own, not dropped."""
    log = LogFile(str(log_path), max_bytes=10, keep=2)
    log.write([b"small\n"])
    log.write([b"a much longer record than ten bytes\n"])
    log.close()
    assert log_path.read_bytes() == b"a much longer record than ten bytes\n"
    assert log_path.with_name("web.log.1").read_bytes() == b"small\n"


def test_existing_log_size_counts_towards_rotation(log_path: Path) -> None:
    """A launcher that reopens an existing log rotates it at the same size as before."""
    log_path.parent.mkdir(parents=True)
    log_path.write_bytes(b"o" * 90)
    log = LogFile(str(log_path), max_bytes=100, keep=1)
    log.write([b"x" * 20])
    log.close()
    assert log_path.with_name("web.log.1").read_bytes() == b"o" * 90
    assert log_path.read_bytes() == b"x" * 20


def test_each_file_records_where_it_starts_in_the_log(log_path: Path) -> None:
    """Every file carries its offset in the whole log: the sizes of the files before it,
    including those rotated away, and a reopened log goes on counting from its own."""
    log = LogFile(str(log_path), max_bytes=100, keep=1)
    writes = [b"%02d:" % i + b"w" * 26 + b"\n" for i in range(10)]  # 30 bytes each
    for data in writes:
        log.write([data])
    log.close()

    def start(path: Path) -> int:
        return int(os.getxattr(path, START_XATTR))
    # 3 records a file: files start at 0, 90, 180, 270; keep=1 leaves the last two.
    assert start(log_path.with_name("web.log.1")) == 180
    assert start(log_path) == 270
    again = LogFile(str(log_path), max_bytes=100, keep=1)
    again.write([b"x" * 80])  # 30 + 80 > 100: rotates
    again.close()
    assert start(log_path) == 300 and start(log_path.with_name("web.log.1")) == 270


def test_stamped_stream_rotates_between_whole_records(pipes: list[Pipe], log_path: Path) -> None:
    """A rotated stamped log splits only between records and loses none of them."""
    pipe = Pipe(LogFile(str(log_path), max_bytes=4 * KIB, keep=10))
    pipes.append(pipe)
    lines = [b"message number %04d" % i for i in range(300)]
    for start in range(0, len(lines), 20):
        pipe.chunk(b"".join(line + b"\n" for line in lines[start:start + 20]))
    pipe.eof()
    files = rotated(log_path, 10)
    assert len(files) > 2
    got = [text for path in files for text in texts(path)]
    assert got == lines


def test_failed_write_is_reported_once_and_retried(tmp_path: Path) -> None:
    """A log that cannot be written says so once, never raises, works again later, and
    the file then says first how much was dropped and when."""
    blocker = tmp_path / "logs"
    blocker.write_text("a file where the log directory should be")
    log = LogFile(str(blocker / "web.log"), max_bytes=1000, keep=1)
    reports: list[DropReport] = []
    log.on_drop = lambda _, report: reports.append(report)
    log.write([b"lost 1\n"])
    log.write([b"lost 2\n", b"lost 3\n"])
    assert [r.dropping for r in reports] == [True]
    why = reports[0].error.encode()  # the directory cannot be made: a file is in the way
    assert why
    blocker.unlink()
    log.write([b"kept\n"])
    log.close()
    assert [r.dropping for r in reports] == [True, False]
    assert (reports[1].bytes, reports[1].records) == (21, 3)
    assert (log.dropped_bytes_total, log.dropped_records_total) == (21, 3)
    note, kept = (blocker / "web.log").read_bytes().split(b"\n")[:2]
    _, pid, tag, text = RECORD.match(note).groups()  # type: ignore[union-attr]
    assert (int(pid), tag) == (os.getpid(), b"E")
    assert re.fullmatch(rb"\[corral\] dropped 21 bytes \(3 records\) of output from "
                        + STAMP + b" to " + STAMP + b": " + re.escape(why), text)
    assert kept == b"kept"


@contextlib.contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """Writes past ``limit`` bytes of any file are cut short, then fail (EFBIG): a full
    disk, for one file, without a file system to fill."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)


def test_a_write_cut_short_leaves_no_torn_record(pipe: Pipe, log_path: Path) -> None:
    """When the file takes only part of a write, the whole records of it stay, the torn
    one is cut off, the rest is counted; once writing works, one record says so."""
    lines = [b"line %04d " % i + b"x" * 90 for i in range(100)]
    pipe.chunk(b"".join(line + b"\n" for line in lines[:10]))
    size = log_path.stat().st_size
    with file_size_limit(size + 5000):  # room for 37 records and part of one more
        pipe.chunk(b"".join(line + b"\n" for line in lines[10:90]))
    assert log_path.stat().st_size <= size + 5000
    pipe.chunk(b"".join(line + b"\n" for line in lines[90:]))
    got = texts(log_path)  # every line is a whole record
    kept = [t for t in got if not t.startswith(b"[corral]")]
    assert 0 < len(kept) - 20 < 80  # the records that fitted stayed
    assert kept == lines[:10 + len(kept) - 20] + lines[90:]
    missing = 100 - len(kept)
    notes = [t for t in got if t.startswith(b"[corral]")]
    assert len(notes) == 1 and b"(%d records)" % missing in notes[0], notes
    assert b"File too large" in notes[0]
    assert got.index(notes[0]) == len(kept) - 10  # just before the first line after


def test_echo_gets_every_record_with_its_prefix(tmp_path: Path) -> None:
    """With an echo, each record also goes out as one line after the prefix: lines
    that span reads, long lines (split as in the file) and a last line without newline."""
    r, w = os.pipe()
    enlarge_pipe(w)
    echo = Echo(w, "stdout")
    log = LogFile(str(tmp_path / "web.log"), 1 << 30, 1)
    pipe = Pipe(log)
    pipe.reader = PipeReader(pipe.r, 123, b"O", log, True, echo=echo, echo_prefix=b"web[0] O ")
    try:
        pipe.chunk(b"one\ntw")
        pipe.chunk(b"o\nthree\n")
        pipe.chunk(b"y" * (MAX_LINE + 10) + b"\n")
        pipe.chunk(b"last")
        pipe.eof()
        out = os.read(r, 1 << 20).split(b"\n")
        assert out[:3] == [b"web[0] O one", b"web[0] O two", b"web[0] O three"]
        assert out[3:5] == [b"web[0] O " + b"y" * MAX_LINE, b"web[0] O " + b"y" * 10]
        assert out[5:] == [b"web[0] O last", b""]
        assert [t for t in texts(tmp_path / "web.log")] == [
            b"one", b"two", b"three", b"y" * MAX_LINE, b"y" * 10, b"last"]
    finally:
        os.close(r)
        os.close(w)
        log.close()


def test_echo_of_raw_output_is_split_into_lines(tmp_path: Path) -> None:
    """Raw output goes to the file as it comes, and to the echo one prefixed line at a
    time (a partial line waits for the rest)."""
    r, w = os.pipe()
    echo = Echo(w, "stdout")
    log = LogFile(str(tmp_path / "raw.log"), 1 << 30, 1)
    pipe = Pipe(log, stamped=False)
    pipe.reader = PipeReader(pipe.r, 1, b"E", log, False, echo=echo, echo_prefix=b"db[2] E ")
    try:
        pipe.chunk(b"12:00 a\n12:00 b")
        pipe.chunk(b"c\n12:01 d")
        pipe.eof()
        assert os.read(r, 1 << 20) == b"db[2] E 12:00 a\ndb[2] E 12:00 bc\ndb[2] E 12:01 d\n"
        assert (tmp_path / "raw.log").read_bytes() == b"12:00 a\n12:00 bc\n12:01 d"
    finally:
        os.close(r)
        os.close(w)
        log.close()


def read_all(r: int, echo: Echo) -> bytes:
    """What the reader gets when it reads until the echo has nothing left to send."""
    got = b""
    os.set_blocking(r, False)
    while True:
        with contextlib.suppress(BlockingIOError):
            got += os.read(r, 1 << 20)
        if not echo.buffer:
            return got
        echo.flush()


def test_echo_keeps_a_burst_for_a_reader_that_is_behind() -> None:
    """A burst larger than the pipe waits in the echo's buffer: nothing is lost, and the
    loop is asked to flush it when the pipe has room."""
    r, w = os.pipe()
    echo = Echo(w, "stdout")
    fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 64 * KIB)
    asked: list[int] = []
    echo.on_pending = lambda e: asked.append(len(e.buffer))
    try:
        lines = [b"%06d " % i + b"b" * 92 + b"\n" for i in range(10_000)]  # 1 MB
        for start in range(0, 10_000, 1000):
            echo.write([b"".join(lines[start:start + 1000])], lambda: 1000)
        assert asked and echo.dropped_records == 0
        assert read_all(r, echo) == b"".join(lines)
    finally:
        os.close(r)
        os.close(w)


def test_full_echo_drops_whole_records_and_counts_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """A reader that falls further behind than the buffer loses whole records (counted);
    a record the pipe took part of is finished first, so no line is ever torn."""
    monkeypatch.setattr(echo_module, "ECHO_BUFFER", 1000)
    r, w = os.pipe()
    echo = Echo(w, "stdout")
    fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 4096)
    drops: list[int] = []
    echo.on_drop = lambda e: drops.append(e.dropped_records)
    try:
        lines = [b"%05d " % i + b"z" * 94 + b"\n" for i in range(100)]  # 100 bytes each
        # Over PIPE_BUF (4 KiB), a write is not atomic: the pipe takes part of this one.
        echo.write([b"".join(lines[:50])], lambda: 50)
        echo.write([b"".join(lines[50:99])], lambda: 49)
        assert echo.buffer.endswith(b"\n") and len(echo.buffer) <= 1000
        assert drops and drops[-1] == echo.dropped_records
        kept = 99 - echo.dropped_records
        assert read_all(r, echo) == b"".join(lines[:kept]) and kept > 4096 // 100
        echo.write([lines[99]], lambda: 1)
        assert os.read(r, 1 << 16) == lines[99]
    finally:
        os.close(r)
        os.close(w)


def test_echo_leaves_the_shared_description_blocking() -> None:
    """The launcher's stdout may be shared with a shell: the echo writes through a file
    description of its own, so the original stays blocking."""
    r, w = os.pipe()
    try:
        echo = Echo(w, "stdout")
        assert echo.fd != w and os.get_blocking(w)
        assert not os.get_blocking(echo.fd)
    finally:
        os.close(r)
        os.close(w)


def test_echo_to_a_pipe_without_reader_drops_and_never_raises() -> None:
    """EPIPE (the reader exited) marks the echo gone: records are counted, never sent."""
    r, w = os.pipe()
    echo = Echo(w, "stdout")
    os.close(r)
    try:
        echo.write([b"a\n", b"b\n"], lambda: 2)
        echo.write([b"c\n"], lambda: 1)
        assert echo.gone and echo.error == "Broken pipe"
        assert (echo.dropped_records, echo.dropped_bytes) == (3, 6)
    finally:
        os.close(w)


def test_echo_label_names_service_and_instance() -> None:
    """``web/0`` and ``web/0@3`` both show as ``web[0]``; other names as they are."""
    assert echo_label("web/0") == b"web[0]"
    assert echo_label("web/12@3") == b"web[12]"
    assert echo_label(".balancer") == b".balancer"


def test_log_path_without_directory_is_written(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A log path given as a bare file name is written in the current directory."""
    monkeypatch.chdir(tmp_path)
    log = LogFile("web.log", max_bytes=1000, keep=1)
    log.write([b"hello\n"])
    log.close()
    assert (tmp_path / "web.log").read_bytes() == b"hello\n"
