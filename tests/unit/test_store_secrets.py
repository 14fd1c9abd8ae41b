"""Tests of the secret store (corral.store.secrets): names, values, 0600, atomic writes,
all-or-nothing removal, and no value in any repr or message."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from corral import atomic
from corral.errors import CorralError, NotFound, SpecError
from corral.store.secrets import MAX_VALUE, Secret, SecretStore

VALUE = "hunter2-\u00e9-line1\nline2\n"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_set_get_names_values(tmp_path: Path) -> None:
    """A set secret is listed by name and read back exactly, newlines and all."""
    store = SecretStore(tmp_path / "secrets.json")
    assert store.names() == []
    assert store.set("DB_PASS", VALUE) is True
    assert store.set("A_1", "x") is True
    assert store.names() == ["A_1", "DB_PASS"]
    assert store.get("DB_PASS").reveal() == VALUE
    assert store.values() == {"A_1": "x", "DB_PASS": VALUE}
    assert "DB_PASS" in store and "NOPE" not in store


def test_setting_the_same_value_changes_nothing(tmp_path: Path) -> None:
    """set() says whether the value changed, and an unchanged one is not rewritten."""
    path = tmp_path / "secrets.json"
    store = SecretStore(path)
    store.set("A", "1")
    before = path.stat().st_ino
    assert store.set("A", "1") is False
    assert path.stat().st_ino == before
    assert store.set("A", "2") is True
    assert path.stat().st_ino != before  # a new file renamed over the old one


def test_a_new_store_reads_what_an_old_one_wrote(tmp_path: Path) -> None:
    """The file is the state: a second store (a restarted supervisor) sees the same secrets."""
    SecretStore(tmp_path / "s.json").set("K", VALUE)
    assert SecretStore(tmp_path / "s.json").get("K").reveal() == VALUE


def test_file_is_0600_even_with_an_open_umask(tmp_path: Path) -> None:
    """The file is created 0600 whatever the umask, and a widened mode is narrowed on read."""
    path = tmp_path / "secrets.json"
    old = os.umask(0)
    try:
        SecretStore(path).set("K", "v")
    finally:
        os.umask(old)
    assert mode(path) == 0o600
    os.chmod(path, 0o644)
    SecretStore(path).names()
    assert mode(path) == 0o600


def test_temp_file_is_never_wider_than_0600(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The temp file has its final mode from creation (checked at the moment of the rename)."""
    seen: list[int] = []
    real_rename = os.rename

    def spy(src: str | Path, dst: str | Path) -> None:
        seen.append(stat.S_IMODE(os.stat(src).st_mode))
        real_rename(src, dst)
    monkeypatch.setattr(atomic.os, "rename", spy)
    SecretStore(tmp_path / "secrets.json").set("K", "v")
    assert seen == [0o600]


def test_a_failed_write_leaves_the_previous_file(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that fails before the rename (a kill, a full disk) keeps the old set intact."""
    path = tmp_path / "secrets.json"
    store = SecretStore(path)
    store.set("OLD", "1")
    before = path.read_bytes()

    def boom(fd: int) -> None:
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(atomic.os, "fsync", boom)
    with pytest.raises(CorralError, match="No space left"):
        store.set("NEW", "2")
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["secrets.json"]  # no temp file left
    assert store.names() == ["OLD"]


@pytest.mark.parametrize("name", ["", "1A", "A-B", "A B", "É", "A" * 129, "${A}"])
def test_bad_names_are_refused(tmp_path: Path, name: str) -> None:
    """Names must be usable as ${NAME}."""
    with pytest.raises(SpecError, match="invalid secret name"):
        SecretStore(tmp_path / "s.json").set(name, "v")


def test_value_limits(tmp_path: Path) -> None:
    """Up to MAX_VALUE bytes of UTF-8 is fine; more, or a NUL, is refused by name only."""
    store = SecretStore(tmp_path / "s.json")
    store.set("BIG", "x" * MAX_VALUE)
    with pytest.raises(SpecError, match=r"'TOO_BIG'.*limit") as caught:
        store.set("TOO_BIG", "\u00e9" * (MAX_VALUE // 2 + 1))
    assert "\u00e9\u00e9" not in str(caught.value)
    with pytest.raises(SpecError, match="NUL") as caught:
        store.set("NUL", "abc\0secretpart")
    assert "secretpart" not in str(caught.value)
    with pytest.raises(SpecError, match="UTF-8"):
        store.set("SURROGATE", "\ud800")
    assert store.names() == ["BIG"]


def test_remove_is_all_or_nothing(tmp_path: Path) -> None:
    """An unknown name refuses the whole removal, naming it; otherwise all go at once."""
    store = SecretStore(tmp_path / "s.json")
    for name in ("A", "B", "C"):
        store.set(name, name.lower())
    with pytest.raises(NotFound, match="'NOPE'") as caught:
        store.remove(["A", "NOPE", "B"])
    assert "(set: A, B, C)" in str(caught.value)
    assert store.names() == ["A", "B", "C"]
    assert store.remove(["C", "A", "A"]) == ["A", "C"]
    assert SecretStore(tmp_path / "s.json").names() == ["B"]


def test_get_of_an_unknown_name(tmp_path: Path) -> None:
    """get() of an unknown name is NotFound listing the names there are."""
    store = SecretStore(tmp_path / "s.json")
    store.set("A", "secret-a")
    with pytest.raises(NotFound, match=r"no secret named 'B' \(set: A\)") as caught:
        store.get("B")
    assert "secret-a" not in str(caught.value)


def test_no_value_in_any_repr(tmp_path: Path) -> None:
    """Neither the store, a Secret, nor a container of Secrets shows a value."""
    store = SecretStore(tmp_path / "s.json")
    store.set("K", "topsecret")
    secret = store.get("K")
    shown = " ".join([repr(store), str(store), repr(secret), str(secret), f"{secret}",
                      repr([secret]), repr({"K": secret}), repr(store.__dict__)])
    assert "topsecret" not in shown
    assert repr(secret) == "Secret('***')"
    assert Secret("a") == Secret("a") and Secret("a") != Secret("b")


def test_a_damaged_file_is_reported_without_its_content(tmp_path: Path) -> None:
    """A file that is not corral's JSON is a CorralError that quotes nothing of it."""
    path = tmp_path / "s.json"
    path.write_text('{"secrets": {"K": "leaked-value"')  # truncated by hand
    with pytest.raises(CorralError, match="damaged") as caught:
        SecretStore(path).names()
    assert "leaked-value" not in str(caught.value)
    path.write_text(json.dumps({"secrets": {"K": 5}}))
    with pytest.raises(CorralError, match="damaged"):
        SecretStore(path).names()


def test_construction_does_no_io(tmp_path: Path) -> None:
    """Building a store touches nothing; the first read of a missing file is an empty set."""
    store = SecretStore(tmp_path / "missing-dir" / "s.json")
    assert store.names() == []
    assert not (tmp_path / "missing-dir").exists()


def test_the_api_request_model_hides_the_value() -> None:
    """The body model of `PUT /v1/secrets/{name}` shows no value in its repr or str."""
    from corral.api.stores import SecretValue

    body = SecretValue(value="topsecret")
    assert "topsecret" not in repr(body) + str(body)
    assert body.value == "topsecret"


def test_an_env_file_gives_name_value_pairs() -> None:
    """NAME=value lines; comments and blank lines skipped; the value is the rest of the
    line, '=' and spaces included."""
    from corral.store.secrets import parse_env_file
    text = "# comment\n\n  # indented comment\nA=1\nB= two = 2 \nEMPTY=\n"
    assert parse_env_file(text, "s.env") == {"A": "1", "B": " two = 2 ", "EMPTY": ""}


@pytest.mark.parametrize(("text", "line", "why"), [
    ("A=1\nno equals sign here s3cret\n", 2, "expected NAME=value"),
    ("A=1\n\n1BAD=x\n", 3, "invalid secret name"),
    ("A=1\nA=2\n", 2, "given twice (also on line 1)"),
])
def test_a_bad_env_file_line_is_one_error_with_its_line(text: str, line: int, why: str) -> None:
    """The first bad line is named by number; its text (maybe a value) is not quoted."""
    from corral.store.secrets import parse_env_file
    with pytest.raises(SpecError) as err:
        parse_env_file(text, "s.env")
    assert err.value.message.startswith(f"s.env:{line}: ") and why in err.value.message
    assert "s3cret" not in err.value.message
