"""What a run produces: tables of rows per workload, plus what could not be measured."""

from __future__ import annotations

import re
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass
class Table:
    """One workload's table: ``rows`` are dicts keyed by ``columns``; ``peer`` first."""

    title: str
    columns: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class Results:
    machine: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    configs: dict[str, dict[str, str]] = field(default_factory=dict)
    commands: dict[str, list[str]] = field(default_factory=dict)
    tables: dict[str, Table] = field(default_factory=dict)
    not_measured: list[tuple[str, str, str]] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def table(self, key: str, title: str, columns: list[str]) -> Table:
        with self._lock:
            if key not in self.tables:
                self.tables[key] = Table(title, columns)
            return self.tables[key]

    def add_row(self, key: str, row: dict[str, Any]) -> None:
        with self._lock:
            self.tables[key].rows.append(row)

    def fail(self, workload: str, peer: str, reason: str) -> None:
        """Record "not measured: reason" for one peer in one workload."""
        with self._lock:
            clean = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", reason)
            self.not_measured.append((workload, peer, " ".join(clean.split())[:400]))

    def to_json(self) -> dict[str, Any]:
        with self._lock:
            return {f.name: _plain(getattr(self, f.name))
                    for f in fields(self) if not f.name.startswith("_")}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Results:
        res = cls(**{k: v for k, v in d.items() if k != "tables"})
        res.not_measured = [tuple(x) for x in res.not_measured]  # type: ignore[misc]
        res.tables = {k: Table(**t) for k, t in d.get("tables", {}).items()}
        return res


def _plain(v: Any) -> Any:
    if isinstance(v, Table):
        return asdict(v)
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    return v


def say(msg: str) -> None:
    """Progress line on stderr."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
