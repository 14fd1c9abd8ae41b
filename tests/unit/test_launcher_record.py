"""The pure parts of the launcher's children record and instance marks
(corral.launcher.record, corral.launcher.procs): /proc stat parsing, marks, the record's
format, and which processes of a dead launcher are stopped (start-time matching)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from corral.launcher.procs import Stat, make_mark, mark_in, parse_mark, parse_stat
from corral.launcher.record import Entry, Record, RecordError, Writer, header, load, parse, plan

# A real /proc/<pid>/stat line, with a command name holding a space and a parenthesis.
STAT = ("4242 (my (odd) prog) S 1 4240 4240 0 -1 4194560 120 0 0 0 3 1 0 0 20 0 1 0 "
        "987654 12345678 300 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0")


def test_parse_stat_counts_fields_from_the_last_parenthesis() -> None:
    """Field 22 (start time) and the pid/pgrp/session fields survive a command name with
    spaces and parentheses."""
    stat = parse_stat(STAT)
    assert stat == Stat(pid=4242, state="S", ppid=1, pgrp=4240, session=4240, start=987654)
    assert stat.alive
    zombie = parse_stat(STAT.replace(") S 1", ") Z 1"))
    assert not zombie.alive


@pytest.mark.parametrize("text", ["", "4242 (x) S 1 2", "no parenthesis at all"])
def test_parse_stat_refuses_what_is_not_a_stat_line(text: str) -> None:
    with pytest.raises(ValueError):
        parse_stat(text)


def test_marks_round_trip_and_keep_names_with_at_signs() -> None:
    """``<name>@<launcher pid>.<launcher start>.<n>``; a name may hold ``@`` (a generation)."""
    mark = make_mark("web/0@3", "120.998", 7)
    assert mark == "web/0@3@120.998.7"
    assert parse_mark(mark) == ("web/0@3", "120.998", 7)
    assert parse_mark(make_mark(".supervisor", "1.2", 1)) == (".supervisor", "1.2", 1)


@pytest.mark.parametrize("text", ["web/0", "web/0@", "@1.2.3", "web/0@1.2", "web/0@a.2.3",
                                  "web/0@1.2.x"])
def test_parse_mark_refuses_other_values(text: str) -> None:
    assert parse_mark(text) is None


def test_mark_in_finds_the_variable_anywhere_in_an_environ_block() -> None:
    mark = b"CORRAL_INSTANCE_ID=db/0@9.8.7"
    assert mark_in(mark + b"\0PATH=/bin\0") == "db/0@9.8.7"
    assert mark_in(b"PATH=/bin\0" + mark + b"\0HOME=/\0") == "db/0@9.8.7"
    assert mark_in(b"PATH=/bin\0" + mark) == "db/0@9.8.7"
    assert mark_in(b"PATH=/bin\0X_CORRAL_INSTANCE_ID=no\0") is None
    assert mark_in(b"") is None


def entry(name: str, pid: int, start: int, launcher: str = "77.500", n: int = 1,
          **extra: object) -> Entry:
    return Entry(name=name, pid=pid, pgid=pid, start=start, mark=make_mark(name, launcher, n),
                 **extra)  # type: ignore[arg-type]


def test_the_record_round_trips_through_appends_and_compaction(tmp_path: Path) -> None:
    """What the launcher writes (a header, lines appended per loop turn, compacted in
    place once dead lines pile up) reads back as the live children."""
    path = str(tmp_path / "children.jsonl")
    writer = Writer(path, "boot-1", "77.500")
    web = entry("web/0", 120, 99812, stop_signal="INT", stop_timeout=30.0)
    balancer = entry(".balancer", 130, 99820, n=2, cgroup="/sys/fs/cgroup/x/.balancer")
    writer.append([web.encode(), balancer.encode()])
    assert load(path) == Record(boot_id="boot-1", launcher="77.500", children=[web, balancer])
    restarts = [entry("web/0", 200 + i, 100000 + i, n=3 + i) for i in range(70)]
    for restarted in restarts:
        writer.append([restarted.encode()])
    assert writer.crowded(2)
    writer.compact([balancer.encode(), restarts[-1].encode()])
    assert not writer.crowded(2)
    assert load(path) == Record("boot-1", "77.500", [balancer, restarts[-1]])
    writer.close()
    assert load(path) is None


def test_a_line_cut_by_a_kill_is_skipped() -> None:
    """A kill may cut a write at a page boundary: lines that cannot be decoded are
    skipped, the others count; a later line for the same mark wins."""
    web, db = entry("web/0", 120, 5), entry("db/0", 130, 6, n=2)
    moved = Entry(**{**web.__dict__, "stop_timeout": 3.0})
    text = "\n".join([header("b", "77.500"), web.encode(), db.encode()[:20] + "xx",
                      '{"name": "bad", "pid": "1"}', moved.encode(), db.encode()[:30]])
    assert parse(text).children == [moved]


@pytest.mark.parametrize(("first", "says"), [
    ('{"version": 2, "boot_id": "b", "launcher": "1.2"}', "version 2"),
    ('{"version": 1, "boot_id": 3, "launcher": "1.2"}', "'boot_id' or 'launcher'"),
    ('[1]', "not a JSON object"),
    ('{"version": 1, "boot', "not JSON"),
    ("", "not JSON"),
])
def test_a_record_whose_header_is_bad_is_refused_with_one_line(first: str, says: str) -> None:
    with pytest.raises(RecordError, match=says):
        parse(first + "\n" + entry("web/0", 120, 5).encode() + "\n")


@pytest.mark.parametrize("change", [
    {"pid": "120"}, {"start": -1}, {"stop_signal": "NOPE"}, {"stop_timeout": True},
    {"cgroup": 3}, {"name": None},
])
def test_a_child_line_with_a_bad_field_is_not_trusted(change: dict[str, object]) -> None:
    data = {**json.loads(entry("web/0", 120, 5).encode()), **change}
    with pytest.raises(RecordError):
        Entry.decode(data)
    assert parse(header("b", "1.2") + "\n" + json.dumps(data) + "\n").children == []


def proc(pid: int, start: int, ppid: int = 1, pgrp: int | None = None,
         state: str = "S") -> Stat:
    return Stat(pid=pid, state=state, ppid=ppid, pgrp=pgrp or pid, session=pgrp or pid,
                start=start)


def table(*stats: Stat) -> dict[int, Stat]:
    return {s.pid: s for s in stats}


def groups_of(record: Record, procs: dict[int, Stat], marks: dict[int, str] | None = None,
              cgroups: dict[str, list[int]] | None = None,
              spare: set[int] | None = None) -> dict[str, list[int]]:
    found = plan(record, procs, (marks or {}).get, lambda path: (cgroups or {}).get(path, []),
                 spare or set())
    return {group.entry.name: group.pids for group in found}


def test_a_recycled_pid_is_never_touched() -> None:
    """A recorded pid now held by a process that started at another time is not ours,
    nor is its process group; the one whose start time matches is, with its group."""
    record = Record("b", "77.500", [entry("db/0", 100, 5000), entry("web/0", 200, 6000)])
    procs = table(proc(100, 7777), proc(101, 7778, ppid=100, pgrp=100),  # reused
                  proc(200, 6000), proc(201, 6001, ppid=200, pgrp=200))
    assert groups_of(record, procs) == {"web/0": [200, 201]}


def test_zombies_and_the_new_launcher_are_left_alone() -> None:
    record = Record("b", "77.500", [entry("db/0", 100, 5000), entry("web/0", 200, 6000)])
    procs = table(proc(100, 5000, state="Z"), proc(200, 6000), proc(300, 6100, ppid=200))
    assert groups_of(record, procs, spare={300}) == {"web/0": [200]}


def test_marked_daemons_descendants_and_cgroups_belong_to_their_instance() -> None:
    """A daemon that left the group (its mark says whose it is), its own children
    (whatever their environment), and the processes of a recorded cgroup; a mark of
    another launcher is not ours; a mark the record does not list is stopped too."""
    web = entry("web/0", 200, 6000)
    db = entry("db/0", 100, 5000, n=2, cgroup="/cg/db.0")
    record = Record("b", "77.500", [db, web])
    procs = table(proc(200, 6000),
                  proc(210, 6010, ppid=1, pgrp=210),  # web's setsid daemon
                  proc(211, 6011, ppid=210, pgrp=210),  # its child, environment cleared
                  proc(100, 9999),  # db's recorded pid, reused...
                  proc(150, 5100, pgrp=150),  # ...but db's cgroup still holds this one
                  proc(400, 6500, pgrp=400),  # another corral's service
                  proc(500, 6600, pgrp=500))  # spawned after the last write
    marks = {210: web.mark, 400: make_mark("web/0", "88.600", 1),
             500: make_mark("late/0", "77.500", 9)}
    found = plan(record, procs, marks.get, {"/cg/db.0": [150]}.get, set())  # type: ignore[arg-type]
    assert [(g.entry.name, g.pids) for g in found] == [
        ("web/0", [200, 210, 211]), ("db/0", [150]), ("late/0", [500])]
    late = found[2].entry
    assert (late.stop_signal, late.stop_timeout) == ("TERM", 8.0)  # the default stop


def test_the_group_of_a_leader_that_is_gone_is_matched_by_mark_only() -> None:
    """With the recorded leader gone, its process group id is not trusted alone: only
    members that carry the instance's mark are stopped."""
    record = Record("b", "77.500", [entry("web/0", 200, 6000)])
    procs = table(proc(201, 6001, pgrp=200), proc(202, 9000, pgrp=200))
    assert groups_of(record, procs, marks={201: record.children[0].mark}) == {"web/0": [201]}
