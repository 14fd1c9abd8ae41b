"""The chaos soak's ground truth: how the counter's lines are accounted for, which state
files count as loading, and how downtime is paired (bench/chaos/truth.py)."""

from __future__ import annotations

import json
from pathlib import Path

from bench.chaos import truth

TS = "2026-12-06T10:00:00.000000Z"


def line(pid: int, n: int) -> str:
    return f"{TS} {pid} O {n:09d} counter\n"


def note(records: int) -> str:
    return (f"{TS} 1 E [corral] dropped {records * 20} bytes ({records} records) of output "
            f"from {TS} to {TS}: No space left on device\n")


def write(tmp_path: Path, *texts: str) -> list[Path]:
    """Files oldest first, named as rotation names them."""
    paths = []
    for i, text in enumerate(texts):
        k = len(texts) - 1 - i
        p = tmp_path / ("counter.log" if k == 0 else f"counter.log.{k}")
        p.write_text(text)
        paths.append(p)
    assert truth.log_files(tmp_path, "counter") == paths
    return paths


def test_a_gap_that_a_drop_record_reports_is_dropped_not_lost(tmp_path: Path) -> None:
    files = write(tmp_path, "".join(line(7, n) for n in range(3)),
                  note(2) + "".join(line(7, n) for n in range(5, 8)))
    v = truth.check_counter_log(files, {7: 8})
    assert (v.present, v.dropped_reported, v.lost, v.duplicated) == (6, 2, 0, 0)
    assert v.gaps_without_record == 0 and v.torn == 0 and v.files == 2


def test_missing_lines_without_a_record_are_lost_and_copies_are_duplicates(
        tmp_path: Path) -> None:
    text = "".join(line(7, n) for n in (0, 1, 1, 4))
    v = truth.check_counter_log(write(tmp_path, text), {7: 6})
    assert (v.present, v.lost, v.duplicated, v.gaps_without_record) == (3, 3, 1, 1)


def test_a_torn_record_and_another_pid_are_counted(tmp_path: Path) -> None:
    text = line(7, 0) + f"{TS} 7 O 0000" + "\n" + line(9, 1) + line(7, 1)[:-1]
    v = truth.check_counter_log(write(tmp_path, text), {7: 2})
    assert (v.torn, v.foreign, v.present, v.lost) == (2, 1, 1, 1)


def test_state_files_load_with_corrals_readers_and_a_torn_one_does_not(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "desired.json").write_text(json.dumps({"format": 1, "down": [], "gen": {}}))
    (tmp_path / "run" / "ports.json").write_text('{"format": 1, "web/0": {"web": 30001}}')
    (tmp_path / "target.yaml").write_text("processes:\n  - name: a\n    command: [x]\n")
    assert truth.load_state_files(tmp_path) == (3, [])
    (tmp_path / "desired.json").write_text('{"format": 1, "do')
    (tmp_path / "target.yaml").write_text("processes:\n  - name: a\n    comm")
    loaded, problems = truth.load_state_files(tmp_path)
    assert loaded == 3 and [p.split(":")[0] for p in problems] == ["target.yaml",
                                                                  "desired.json"]


def test_each_exit_is_paired_with_the_next_start() -> None:
    events = [(10, "start", 1), (20, "exit", 1), (23, "start", 2), (40, "exit", 2),
              (41, "exit", 2), (50, "start", 3), (60, "exit", 3)]
    assert truth.downtimes(events) == [(20, 3), (40, 10)]
