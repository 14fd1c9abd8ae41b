"""The pure parts of `corral secret` and `corral resource`: stdin values, quoting, sizes,
file names from Content-Disposition, and usage errors (no server)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from corral.cli.main import run
from corral.cli.resource import _disposition_name, human_size
from corral.cli.secret import _quoted, read_value
from corral.errors import CorralError


@pytest.mark.parametrize(("raw", "value"), [
    (b"s3cret\n", "s3cret"),
    (b"s3cret\r\n", "s3cret"),
    (b"s3cret", "s3cret"),
    (b"s3cret\n\n", "s3cret\n\n"),  # not a single line: kept
    (b"line1\nline2\n", "line1\nline2\n"),
    (b"", ""),
    (b"\n", ""),
    ("w\u00f6rd\n".encode(), "w\u00f6rd"),
])
def test_read_value_drops_the_newline_of_one_line_only(raw: bytes, value: str) -> None:
    """`set NAME -`: one trailing newline of a single-line value goes; other values stay."""
    assert read_value(io.BytesIO(raw)) == value


def test_read_value_limits() -> None:
    """More than the limit, or bytes that are not UTF-8, are refused without echoing them."""
    with pytest.raises(CorralError, match="over 8 bytes"):
        read_value(io.BytesIO(b"123456789"), limit=8)
    assert read_value(io.BytesIO(b"12345678"), limit=8) == "12345678"
    with pytest.raises(CorralError, match="not UTF-8") as caught:
        read_value(io.BytesIO(b"\xffsecret"))
    assert "secret" not in str(caught.value)


@pytest.mark.parametrize(("value", "shown"), [
    ("plain", "plain"),
    ("with space", "with space"),
    (" lead", '" lead"'),
    ("two\nlines", '"two\\nlines"'),
    ('q"uote', '"q\\"uote"'),
    ("tab\there", '"tab\\there"'),
    ("", ""),
])
def test_several_values_are_quoted_when_needed(value: str, shown: str) -> None:
    """`get A B` prints NAME=VALUE, JSON-quoting values that would not read back plainly."""
    assert _quoted(value) == shown


@pytest.mark.parametrize(("n", "text"), [
    (0, "0B"), (1023, "1023B"), (1024, "1.0K"), (3 * 1024**2 + 17, "3.0M"),
    (1 << 30, "1.0G"), (5 * 1024**4, "5.0T"), (None, "-"),
])
def test_human_size(n: int | None, text: str) -> None:
    """Sizes in binary units, as in `svc status`."""
    assert human_size(n) == text


@pytest.mark.parametrize(("header", "name"), [
    ('attachment; filename="bundle.tar.gz"', "bundle.tar.gz"),
    ("attachment; filename*=utf-8''caf%C3%A9.txt", "caf\u00e9.txt"),
    ('attachment; filename="x"; filename*=utf-8\'\'y%20z', "y z"),
    ("", None),
])
def test_disposition_name(header: str, name: str | None) -> None:
    """The download's original name, preferring the RFC 5987 form."""
    assert _disposition_name(header) == name


@pytest.mark.parametrize(("argv", "needle"), [
    (["secret"], "required: SUBCOMMAND"),
    (["secret", "set", "A"], "the following arguments are required: VALUE"),
    (["secret", "get"], "the following arguments are required: NAME"),
    (["resource", "down", "abc"], "the following arguments are required: OUT"),
    (["resource", "rm"], "the following arguments are required: ID"),
])
def test_usage_errors(argv: list[str], needle: str, tmp_path: Path) -> None:
    """Wrong command lines exit 100 with one line pointing at the help."""
    out, err = io.StringIO(), io.StringIO()
    code = run(["--state-dir", str(tmp_path), *argv], stdout=out, stderr=err)
    assert code == 100 and needle in err.getvalue() and out.getvalue() == ""


def test_no_supervisor_is_exit_111(tmp_path: Path) -> None:
    """Without a supervisor the verbs fail with 111 and say how to start one."""
    out, err = io.StringIO(), io.StringIO()
    code = run(["--state-dir", str(tmp_path), "secret", "ls"], stdout=out, stderr=err)
    assert code == 111 and "corral sup run" in err.getvalue()
