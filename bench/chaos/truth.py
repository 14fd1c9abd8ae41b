"""Ground truth for the chaos soak: what the log files, the state files, ``/proc`` and the
services' own records say, never what corral says about itself.

- :func:`check_counter_log` reads every file of the counter's log (oldest first) and
  accounts for each line the counter says it wrote: present once, present twice
  (duplicated), dropped and reported by one of the launcher's ``[corral] dropped ...``
  records, or lost (none of these).
- :func:`load_state_files` loads every JSON/YAML file of a state directory with corral's own
  readers (the ones the supervisor uses at start), and anything else that looks like state
  with a plain JSON/YAML parser.
- :func:`downtimes` pairs each exit of the crash-looper with the next start.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

RECORD = re.compile(rb"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z (\d+) ([OE]) (.*)$")
NOTE = re.compile(rb"^\[corral\] dropped (\d+) bytes \((\d+) records\) of output from \S+ to "
                  rb"\S+: .+$")
COUNTER = re.compile(rb"^(\d{9}) counter$")


def log_files(logs: Path, name: str) -> list[Path]:
    """``<name>.log`` and its rotated files, oldest first (``.N`` is older than ``.N-1``)."""
    rotated = []
    for p in logs.glob(f"{name}.log.*"):
        suffix = p.name.rsplit(".", 1)[1]
        if suffix.isdigit():
            rotated.append((int(suffix), p))
    files = [p for _, p in sorted(rotated, reverse=True)]
    current = logs / f"{name}.log"
    return files + ([current] if current.exists() else [])


@dataclass
class LogVerdict:
    """How each line the counter wrote ended up in its log."""

    written: int = 0            # lines the counter says it wrote (all its pids)
    present: int = 0            # distinct lines found
    duplicated: int = 0         # extra copies of lines found more than once
    dropped_reported: int = 0   # records the launcher's drop records account for
    lost: int = 0               # written, not present, not accounted for by a drop record
    over_reported: int = 0      # drop records count more than is missing
    drop_records: int = 0       # "[corral] dropped ..." records
    gaps_without_record: int = 0  # runs of missing lines not followed by a drop record
    out_of_order: int = 0       # a line numbered below the one before it (same pid)
    torn: int = 0               # lines that are not whole records of a whole counter line
    foreign: int = 0            # records of another pid that are not drop records
    files: int = 0
    pids: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_counter_log(files: list[Path], written: dict[int, int]) -> LogVerdict:
    """Account for the lines ``written`` (pid -> how many the counter with that pid wrote,
    numbered from 0) in ``files`` (oldest first)."""
    v = LogVerdict(written=sum(written.values()), files=len(files), pids=sorted(written))
    seen: dict[int, set[int]] = {pid: set() for pid in written}
    last: dict[int, int] = {}
    note_since_line = False
    for path in files:
        data = path.read_bytes()
        lines = data.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        else:
            v.torn += 1  # a last line without its newline
            lines = lines[:-1]
        for line in lines:
            m = RECORD.match(line)
            if m is None:
                v.torn += 1
                continue
            pid, text = int(m.group(1)), m.group(3)
            note = NOTE.match(text)
            if note is not None:
                v.drop_records += 1
                v.dropped_reported += int(note.group(2))
                note_since_line = True
                continue
            if pid not in seen:
                v.foreign += 1
                continue
            c = COUNTER.match(text)
            if c is None:  # the counter writes nothing else: part of a line
                v.torn += 1
                continue
            n = int(c.group(1))
            if n in seen[pid]:
                v.duplicated += 1
            seen[pid].add(n)
            before = last.get(pid, -1)
            if n < before:
                v.out_of_order += 1
            elif n > before + 1 and not note_since_line:
                v.gaps_without_record += 1
            last[pid] = max(before, n)
            note_since_line = False
    v.present = sum(len({n for n in s if n < written[pid]}) for pid, s in seen.items())
    missing = v.written - v.present
    v.lost = max(0, missing - v.dropped_reported)
    v.over_reported = max(0, v.dropped_reported - missing)
    return v


def _plain(path: Path) -> None:
    text = path.read_bytes()
    if path.suffix == ".json":
        json.loads(text)
    elif path.suffix == ".jsonl":
        for line in text.decode().splitlines():
            if line:
                json.loads(line)
    else:
        yaml.safe_load(text)


def load_state_files(state: Path) -> tuple[int, list[str]]:
    """Load every state file under ``state`` as the supervisor (or launcher) would; the
    number of files loaded and one line per file that did not load."""
    from corral.launcher import record
    from corral.spec import load_target
    from corral.store.secrets import SecretStore
    from corral.supervisor import formats
    from corral.supervisor.persistence import StateFiles
    from corral.supervisor.rollout import Rollout

    files = StateFiles(state)

    def target() -> None:
        if files.target_path.exists():
            load_target(files.target_path.read_text(), str(files.target_path))

    def rollout() -> None:
        doc = files.rollout()
        if doc is not None:
            Rollout.from_state(doc)

    def resource_index() -> None:
        path = state / "resources" / "index.json"
        if path.exists():
            formats.upgrade("resources/index.json", path, json.loads(path.read_bytes()))

    def event_seq() -> None:
        path = state / "event-seq.json"
        if path.exists():
            doc = json.loads(path.read_bytes())
            if not isinstance(doc, dict) or not all(isinstance(v, int) for v in doc.values()):
                raise ValueError(f"not an object of numbers: {doc!r}")

    def children() -> None:
        record.load(str(state / "run" / "launcher-children.jsonl"))

    readers: dict[str, Any] = {
        "target.yaml": target,
        "desired.json": files.desired,
        "rollout.json": rollout,
        "run/spawn_base.json": files.spawn_base,
        "run/ports.json": files.ports,
        "secrets.json": lambda: SecretStore(state / "secrets.json").names(),
        "resources/index.json": resource_index,
        "event-seq.json": event_seq,
        "run/launcher-children.jsonl": children,
    }
    problems: list[str] = []
    loaded = 0
    for name, read in readers.items():
        if not (state / name).exists():
            continue
        loaded += 1
        try:
            read()
        except Exception as exc:  # any failure to load is what we count
            problems.append(f"{name}: {type(exc).__name__}: {exc}")
    # Anything else that looks like state (the cluster's files, a future file), parsed plainly;
    # not the logs, not the services' own working directories, not temporary files.
    for path in sorted(_other_state_files(state)):
        rel = str(path.relative_to(state))
        if rel in readers:
            continue
        loaded += 1
        try:
            _plain(path)
        except Exception as exc:
            problems.append(f"{rel}: {type(exc).__name__}: {exc}")
    return loaded, problems


def _other_state_files(state: Path) -> list[Path]:
    out: list[Path] = []
    for top, dirs, names in os.walk(state):
        here = Path(top)
        rel = here.relative_to(state)
        if rel.parts[:1] in (("logs",), ("resources",)) or (
                rel.parts[:1] == ("run",) and len(rel.parts) > 1):
            dirs[:] = []
            continue
        for n in names:
            if n.startswith(".") or not n.endswith((".json", ".jsonl", ".yaml", ".yml")):
                continue
            out.append(here / n)
    return out


def leftover_temp_files(state: Path) -> list[str]:
    """Temporary files of state writes that a kill cut short (``.<name>.tmp<pid>``)."""
    out = []
    for top, dirs, names in os.walk(state):
        rel = Path(top).relative_to(state)
        if rel.parts[:1] == ("logs",):
            dirs[:] = []
            continue
        out += [str(rel / n) for n in names if n.startswith(".") and ".tmp" in n]
    return sorted(out)


def downtimes(events: list[tuple[int, str, int]]) -> list[tuple[int, int]]:
    """From ``(time ns, "start"|"exit", pid)`` events of one service: each exit's
    ``(exit time, ns until the next start)``; an exit with no later start is left out."""
    out: list[tuple[int, int]] = []
    pending: int | None = None
    for t, kind, _pid in sorted(events):
        if kind == "exit":
            pending = t if pending is None else pending
        elif kind == "start" and pending is not None:
            out.append((pending, t - pending))
            pending = None
    return out
