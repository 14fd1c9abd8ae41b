"""What a run produces: tables of rows per workload, plus what could not be measured."""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field
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
            self.not_measured.append((workload, peer, " ".join(reason.split())[:400]))

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("_lock", None)
        return d
