"""Tests of what a rollout keeps to put things back: the record's round trip through
``rollout.json``, the new instance's own log lines, the secret store's kept values, the
and the replacement order of a spec (who holds a port, which needs real sockets and
processes, is tests/integration/test_port_owner.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from corral.errors import SpecError
from corral.spec import validate_process
from corral.store.secrets import SecretStore
from corral.supervisor.rollout import Change, Edit, Phase, Prior, Rollout, Step, own_lines


# ------------------------------------------------------------------------- the record
def record() -> Rollout:
    spec = validate_process({"name": "api", "command": "sleep 1", "env": {"V": "${V}"}}, "t")
    made = Rollout(id=7, cause="secret V changed", started_at=1700000000.25,
                   changes=[Change("process", "api", Edit.CHANGE, ("env.V",))],
                   secrets=["V"], added=["web"])
    made.steps["api"] = Step("api", 2, replaced=1, detail="instance 1: starting")
    made.prior["api"] = Prior(spec, 3)
    return made


def test_a_record_survives_its_state_file_whole() -> None:
    """to_state -> JSON -> from_state gives the same record, prior spec included."""
    before = record()
    after = Rollout.from_state(json.loads(json.dumps(before.to_state())))
    assert after == before
    assert after.as_dict() == before.as_dict()


def test_the_state_file_names_secrets_but_holds_no_value() -> None:
    text = json.dumps(record().to_state())
    assert '"secrets": ["V"]' in text and "${V}" in text


def test_a_damaged_state_file_is_refused() -> None:
    doc = record().to_state()
    for damage in ({**doc, "phase": "sideways"}, {k: v for k, v in doc.items() if k != "id"},
                   {**doc, "prior": {"api": {"spec": {"name": "api"}, "gen": 1}}}):
        with pytest.raises((ValueError, KeyError, SpecError)):
            Rollout.from_state(damage)


def test_outcome_says_what_a_failed_rollout_left_running() -> None:
    made = record()
    assert made.outcome() == ""                       # nothing put back (an added one failed)
    made.reverting = True
    assert made.outcome() == "the old version keeps running"
    made.restored = True
    assert made.outcome() == "the old version was restored"
    made.steps["api"].phase = Phase.FAILED
    made.finish(1700000001.0)
    assert made.as_dict()["outcome"] == "the old version was restored"


# ------------------------------------------------------------------ the new one's lines
LINES = [
    "2026-01-01T00:00:01.000000Z 100 O old tick",
    "2026-01-01T00:00:02.000000Z 200 O new starting",
    "2026-01-01T00:00:02.500000Z 100 O old tick",
    "2026-01-01T00:00:02.600000Z 300 E [hook before] tar: bad",
    "2026-01-01T00:00:03.000000Z 200 E new broken",
]


def test_own_lines_leave_out_older_lines_and_other_instances() -> None:
    since = "2026-01-01T00:00:02.000000Z"
    assert own_lines(LINES, since, {100}) == LINES[1:2] + LINES[3:]


def test_own_lines_keep_raw_records_they_cannot_tell_apart() -> None:
    raw = ["plain output", "another line"]
    assert own_lines(raw, "2026-01-01T00:00:02.000000Z", {100}) == raw


# ---------------------------------------------------------------------- kept secrets
def test_a_kept_value_is_put_back_or_forgotten(tmp_path: Path) -> None:
    store = SecretStore(tmp_path / "secrets.json")
    store.set("A", "one")
    assert store.set("A", "two", keep_previous=True)
    assert store.set("B", "new", keep_previous=True)
    assert store.previous() == {"A": "one", "B": None}
    reread = SecretStore(tmp_path / "secrets.json")   # kept in the file, atomically
    assert reread.previous() == {"A": "one", "B": None}
    assert reread.values() == {"A": "two", "B": "new"}
    reread.settle(["A", "B"], revert=True)
    assert reread.values() == {"A": "one"} and reread.previous() == {}
    reread.settle(["A"], revert=True)                 # twice: harmless
    assert SecretStore(tmp_path / "secrets.json").values() == {"A": "one"}


def test_a_second_change_before_the_verdict_keeps_the_first_value(tmp_path: Path) -> None:
    store = SecretStore(tmp_path / "secrets.json")
    store.set("A", "one")
    store.set("A", "two", keep_previous=True)
    store.set("A", "three", keep_previous=True)
    store.settle(["A"], revert=False)
    assert store.values() == {"A": "three"} and store.previous() == {}
    assert "previous" not in json.loads((tmp_path / "secrets.json").read_text())


# ----------------------------------------------------------------- replacement order
@pytest.mark.parametrize(("fields", "order"), [
    ({}, "stop-first"),
    ({"receives": ["web"]}, "start-first"),
    ({"replace": "start-first"}, "start-first"),
    ({"receives": ["web"], "replace": "stop-first"}, "stop-first"),
])
def test_replace_order_defaults_by_whether_it_receives_a_service(
        fields: dict[str, object], order: str) -> None:
    spec = validate_process({"name": "a", "command": "x", **fields}, "t")
    assert spec.replace_order == order


def test_an_unknown_replace_order_is_refused() -> None:
    with pytest.raises(SpecError, match="replace: must be one of stop-first, start-first"):
        validate_process({"name": "a", "command": "x", "replace": "sideways"}, "t")
