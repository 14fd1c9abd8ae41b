"""The event log's numbers across supervisor restarts, and what a resuming client is told."""

from __future__ import annotations

from pathlib import Path

from corral.supervisor.events import SEQ_BLOCK, EventLog


def emit(log: EventLog, count: int, service: str = "web") -> list[int]:
    return [log.emit(service, "state", f"event {i}")["seq"] for i in range(count)]


def test_numbers_go_on_across_a_kill_and_a_clean_restart(tmp_path: Path) -> None:
    """A supervisor killed without a word, or ended cleanly: the next one's numbers are
    all above every number handed out before."""
    seq_file = tmp_path / "event-seq.json"
    first = EventLog(seq_file=seq_file)
    assert emit(first, 3) == [1, 2, 3]
    killed = EventLog(seq_file=seq_file)  # `first` never closed: it was killed
    after_kill = emit(killed, 2)
    assert after_kill[0] > 3 and after_kill == sorted(after_kill)
    killed.close()
    clean = EventLog(seq_file=seq_file)
    assert emit(clean, 1)[0] > after_kill[-1]
    assert clean.count == 1


def test_a_long_lived_log_reserves_more_numbers(tmp_path: Path) -> None:
    """Past its reservation a log reserves again, so a kill after that is covered too."""
    seq_file = tmp_path / "event-seq.json"
    log = EventLog(history=10, seq_file=seq_file)
    last = emit(log, SEQ_BLOCK + 5)[-1]
    assert EventLog(seq_file=seq_file).last_seq >= last


def test_since_counts_what_the_history_dropped() -> None:
    """Resuming within one supervisor: the kept events after the client's last, and how
    many it no longer has; a filter picks services but counts every event."""
    log = EventLog(history=5)
    emit(log, 4, "web")
    emit(log, 4, "db")  # keeps seq 4..8
    assert log.since(6)[:2] == ([e for e in log.recent(5) if e["seq"] > 6], 0)
    events, lost, why = log.since(1, "web")
    assert [e["seq"] for e in events] == [4] and lost == 2  # 2 and 3 were dropped
    assert why == "dropped from the supervisor's history (it keeps the last 5)"
    assert log.since(8)[:2] == ([], 0)


def test_since_across_restarts(tmp_path: Path) -> None:
    """After a clean end the next supervisor knows exactly how many events a client
    missed; after a kill it cannot (None); a number it never handed out is None too."""
    seq_file = tmp_path / "event-seq.json"
    old = EventLog(seq_file=seq_file)
    emit(old, 5)
    old.close()
    new = EventLog(seq_file=seq_file)
    emit(new, 2)
    events, lost, _ = new.since(5)
    assert len(events) == 2 and lost == 0  # the client had everything
    assert new.since(3)[1] == 2  # 4 and 5 are gone with the old supervisor
    killed = EventLog(seq_file=seq_file)  # `new` was killed: its last number is unknown
    emit(killed, 1)
    assert killed.since(new.last_seq)[1] is None
    assert killed.since(killed.last_seq + 100)[:2] == (killed.recent(10), None)
