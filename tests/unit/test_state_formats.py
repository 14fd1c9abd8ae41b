"""State files of each format: the fixtures under ``tests/fixtures/state/v<N>/`` are what
that release wrote (v1: made by running the release before formats were recorded), and
this release reads and migrates them; a newer format is refused in one line, untouched."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from corral.errors import CorralError
from corral.store.resources import ResourceStore
from corral.store.secrets import SecretStore
from corral.supervisor import formats
from corral.supervisor.persistence import StateFiles

FIXTURES = Path(__file__).parent.parent / "fixtures" / "state"
RESOURCE = "8d0d4c8a1e6ab75ae2f81abf1e1e66ce1ab7be53c7b8f245a41907fc45b3a801"


@pytest.fixture
def v1(tmp_path: Path) -> Path:
    state = tmp_path / "state"
    shutil.copytree(FIXTURES / "v1", state)
    return state


def snapshot(state: Path) -> dict[str, bytes]:
    return {str(p.relative_to(state)): p.read_bytes() for p in sorted(state.rglob("*"))
            if p.is_file()}


def without_format(doc: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in doc.items() if k != "format"}


def test_every_versioned_file_has_a_v1_fixture() -> None:
    assert sorted(formats.CURRENT) == sorted(
        str(p.relative_to(FIXTURES / "v1")) for p in (FIXTURES / "v1").rglob("*.json"))


def test_v1_files_read_as_the_previous_release_wrote_them(v1: Path) -> None:
    files = StateFiles(v1)
    assert files.desired() == ({"idle"}, {})
    assert files.ports() == {"app/0": {"web": 41234}, "app/1": {"web": 41235}}
    assert files.spawn_base() == {"app/0": 3, "idle/0": 1}
    assert files.rollout()["cause"] == "target set"
    assert "name: idle" in (files.stored_target() or "")
    assert SecretStore(v1 / "secrets.json").values() == {"GREETING": "hello"}
    assert [r["id"] for r in ResourceStore(v1 / "resources").list()] == [RESOURCE]


def test_prepare_adds_the_version_and_changes_nothing_else(v1: Path) -> None:
    before = snapshot(v1)
    rewritten = formats.prepare(v1)
    assert sorted(rewritten) == ["desired.json", "run/ports.json", "run/spawn_base.json"]
    after = snapshot(v1)
    assert after.keys() == before.keys()
    for name, current in formats.CURRENT.items():
        doc = json.loads(after[name])
        assert doc["format"] == current, name
        assert without_format(doc) == without_format(json.loads(before[name])), name
    assert after["target.yaml"] == before["target.yaml"]
    assert formats.prepare(v1) == []  # migrated once
    assert snapshot(v1) == after


def test_writers_record_the_format(tmp_path: Path) -> None:
    files = StateFiles(tmp_path)
    files.save_ports({"web/0": {"web": 4000}})
    files.save_spawn_base({"web/0": 2})
    files.save_rollout({"id": 1})
    for name in ("run/ports.json", "run/spawn_base.json", "rollout.json"):
        assert json.loads((tmp_path / name).read_text())["format"] == formats.CURRENT[name]
    assert files.ports() == {"web/0": {"web": 4000}}
    assert files.spawn_base() == {"web/0": 2}


@pytest.mark.parametrize("name", sorted(formats.CURRENT))
def test_a_newer_format_is_refused_in_one_line_and_nothing_is_written(
        v1: Path, name: str) -> None:
    path = v1 / name
    doc = json.loads(path.read_text())
    newer = formats.CURRENT[name] + 2
    path.write_text(json.dumps({**doc, "format": newer}))
    before = snapshot(v1)
    with pytest.raises(formats.TooNew) as caught:
        formats.prepare(v1)
    message = str(caught.value)
    assert "\n" not in message
    assert f"{path} has format {newer}; this corral" in message
    assert f"reads up to {formats.CURRENT[name]}: upgrade corral" in message
    assert snapshot(v1) == before


def test_a_format_that_is_not_a_number_is_refused(v1: Path) -> None:
    (v1 / "desired.json").write_text('{"format": "2", "down": []}')
    with pytest.raises(formats.TooNew, match="has format '2', which is not a format"):
        formats.prepare(v1)


def test_the_stores_refuse_a_newer_format_themselves(v1: Path) -> None:
    (v1 / "secrets.json").write_text('{"format": 9, "secrets": {}}')
    with pytest.raises(CorralError, match="has format 9; this corral reads up to 1"):
        SecretStore(v1 / "secrets.json").names()
    index = v1 / "resources" / "index.json"
    index.write_text('{"format": 9, "resources": {}}')
    with pytest.raises(CorralError, match="has format 9; this corral reads up to 1"):
        ResourceStore(v1 / "resources").list()


def test_an_older_format_is_upgraded_step_by_step(v1: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # A made-up format 2 of ports.json (the map under a key), to exercise the steps.
    monkeypatch.setitem(formats.CURRENT, "run/ports.json", 2)
    monkeypatch.setitem(formats.UPGRADES, ("run/ports.json", 1),
                        lambda doc: {"ports": doc})
    assert formats.prepare(v1) == ["desired.json", "run/ports.json", "run/spawn_base.json"]
    assert json.loads((v1 / "run/ports.json").read_text()) == {
        "format": 2, "ports": {"app/0": {"web": 41234}, "app/1": {"web": 41235}}}
