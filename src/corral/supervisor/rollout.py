"""Target plans and rollout records.  PURE (no I/O, no clock: times are given).

:func:`diff` compares two targets and says what ``corral target plan`` prints and what
``corral target set`` does: processes and services added, changed (with the fields that
differ) and removed.  A changed process whose only difference is ``instances`` is scaled
(the instances that stay are not touched); any other change replaces its instances one by
one, health-gated (see :meth:`corral.supervisor.targets.Targets.apply`).

:class:`Rollout` is the record of one ``target set`` (or secret change): which processes it
replaces, how far each got, and, when one failed, why and the new instance's last log lines.
``corral target status`` shows the last one.  It also holds what a failure must put back
(each replaced process's previous spec and generation, the secrets it changed), and
:meth:`Rollout.to_state` / :meth:`Rollout.from_state` carry all of it through
``rollout.json``, so that a supervisor started after a crash can finish (or revert) it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from corral.spec import ProcessSpec, ServiceSpec, Target, validate_process

from .events import rfc3339


class Edit(StrEnum):
    ADD = "added"
    CHANGE = "changed"
    REMOVE = "removed"


@dataclass(frozen=True)
class Change:
    """One entry of a plan: a process or service added, changed or removed."""

    kind: str            # "process" | "service"
    name: str
    action: Edit
    fields: tuple[str, ...] = ()   # dotted paths that differ (changes only)

    @property
    def replaces(self) -> bool:
        """Whether applying it replaces running instances (anything but ``instances``)."""
        return (self.kind == "process" and self.action is Edit.CHANGE
                and self.fields != ("instances",))

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "action": self.action.value,
                "fields": list(self.fields), "replaces": self.replaces}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Change:
        return cls(str(doc["kind"]), str(doc["name"]), Edit(doc["action"]),
                   tuple(str(f) for f in doc.get("fields", [])))


def differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted paths where two JSON-like values differ (lists compared whole, by path)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in [*old, *(k for k in new if k not in old)]:
            path = f"{prefix}.{key}" if prefix else str(key)
            if key not in old or key not in new:
                out.append(path)
            else:
                out += differences(old[key], new[key], path)
        return out
    return [] if old == new else [prefix or "(all)"]


def diff(old: Target, new: Target) -> list[Change]:
    """What changes from ``old`` to ``new``: processes then services; added, changed,
    removed, each in the order of the file that has them."""
    changes: list[Change] = []
    kinds: tuple[tuple[str, list[ProcessSpec] | list[ServiceSpec],
                       list[ProcessSpec] | list[ServiceSpec]], ...] = (
        ("process", old.processes, new.processes), ("service", old.services, new.services))
    for kind, old_items, new_items in kinds:
        before: dict[str, ProcessSpec | ServiceSpec] = {i.name: i for i in old_items}
        after: dict[str, ProcessSpec | ServiceSpec] = {i.name: i for i in new_items}
        for name, spec in after.items():
            was = before.get(name)
            if was is None:
                changes.append(Change(kind, name, Edit.ADD))
            # Equal models dump to equal dicts: only a model that differs pays for the two
            # dumps (at 1,000 processes they were most of a no-op plan's diff).
            elif spec != was and (a := was.to_dict()) != (b := spec.to_dict()):
                changes.append(Change(kind, name, Edit.CHANGE, tuple(differences(a, b))))
        changes += [Change(kind, name, Edit.REMOVE) for name in before if name not in after]
    return changes


class Phase(StrEnum):
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    REVERTED = "reverted"   # a step put back to its old version after another one failed


@dataclass
class Step:
    """The replacement of one process's instances."""

    name: str
    instances: int
    replaced: int = 0
    phase: Phase = Phase.RUNNING
    detail: str = "waiting"
    last_lines: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "instances": self.instances, "replaced": self.replaced,
                "phase": self.phase.value, "detail": self.detail,
                "last_lines": list(self.last_lines)}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Step:
        return cls(str(doc["name"]), int(doc["instances"]), int(doc.get("replaced", 0)),
                   Phase(doc.get("phase", "running")), str(doc.get("detail", "")),
                   [str(line) for line in doc.get("last_lines", [])])


@dataclass(frozen=True)
class Prior:
    """What a replaced process ran before the rollout, to put back if the rollout fails."""

    spec: ProcessSpec
    gen: int


@dataclass
class Rollout:
    """One application of a target (or of a secret change) and how far it got."""

    id: int
    cause: str                    # e.g. "target set", "secret DB_PASS changed"
    started_at: float
    changes: list[Change]
    steps: dict[str, Step] = field(default_factory=dict)
    phase: Phase = Phase.RUNNING
    ended_at: float | None = None
    reason: str = ""
    prior: dict[str, Prior] = field(default_factory=dict)   # by process name
    added: list[str] = field(default_factory=list)          # processes it adds
    secrets: list[str] = field(default_factory=list)        # secrets whose change it rolls out
    reverting: bool = False   # a step failed: putting back what it changed
    # An old instance was not kept running: it was started again, or put back as it was
    # (down, failed).
    restored: bool = False

    def finish(self, now: float) -> None:
        """Close the record: failed if any step failed, else done."""
        failed = [s for s in self.steps.values() if s.phase is Phase.FAILED]
        self.phase = Phase.FAILED if failed else Phase.DONE
        if failed:
            self.reason = "; ".join(f"{s.name}: {s.detail}" for s in failed)
        self.ended_at = now

    def outcome(self) -> str:
        """What a failed rollout left running, in words ("" when it replaced nothing back)."""
        if self.restored:
            return "the old version was restored"
        if self.reverting:
            return "the old version keeps running"
        return ""

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "cause": self.cause, "phase": self.phase.value,
                "started_at": rfc3339(self.started_at),
                "ended_at": rfc3339(self.ended_at) if self.ended_at else None,
                "reason": self.reason, "restored": self.restored,
                "outcome": self.outcome() if self.phase is Phase.FAILED else "",
                "changes": [c.as_dict() for c in self.changes],
                "steps": [s.as_dict() for s in self.steps.values()]}

    def to_state(self) -> dict[str, Any]:
        """Everything, JSON-able, for ``rollout.json`` (names of secrets, never values)."""
        return {"format": 1, "id": self.id, "cause": self.cause, "phase": self.phase.value,
                "started_at": self.started_at, "ended_at": self.ended_at,
                "reason": self.reason, "reverting": self.reverting, "restored": self.restored,
                "changes": [c.as_dict() for c in self.changes],
                "steps": [s.as_dict() for s in self.steps.values()],
                "prior": {name: {"spec": p.spec.to_dict(), "gen": p.gen}
                          for name, p in self.prior.items()},
                "added": list(self.added), "secrets": list(self.secrets)}

    @classmethod
    def from_state(cls, doc: dict[str, Any]) -> Rollout:
        """The record :meth:`to_state` wrote.

        Raises:
            ValueError: (or KeyError, TypeError, SpecError) the document is not one.
        """
        ended = doc.get("ended_at")
        steps = [Step.from_dict(s) for s in doc.get("steps", [])]
        return cls(id=int(doc["id"]), cause=str(doc["cause"]),
                   started_at=float(doc["started_at"]),
                   changes=[Change.from_dict(c) for c in doc.get("changes", [])],
                   steps={s.name: s for s in steps}, phase=Phase(doc["phase"]),
                   ended_at=float(ended) if ended is not None else None,
                   reason=str(doc.get("reason", "")),
                   prior={str(name): Prior(validate_process(p["spec"], "rollout.json"),
                                           int(p["gen"]))
                          for name, p in doc.get("prior", {}).items()},
                   added=[str(n) for n in doc.get("added", [])],
                   secrets=[str(n) for n in doc.get("secrets", [])],
                   reverting=bool(doc.get("reverting", False)),
                   restored=bool(doc.get("restored", False)))


def own_lines(lines: list[str], since: str, exclude: set[int]) -> list[str]:
    """The log records in ``lines`` (``<stamp> <pid> <O|E> <text>``) stamped at or after
    ``since`` (an RFC 3339 stamp of the same form) by a pid not in ``exclude``: what a new
    instance (its process, its hooks) wrote, without the lines of the old instances running
    beside it.  Records without a stamp and pid (``format: raw``) cannot be told apart:
    they are all kept."""
    out = []
    for line in lines:
        stamp, _, rest = line.partition(" ")
        pid, _, _ = rest.partition(" ")
        unstamped = not pid.isdigit() or not stamp.endswith("Z")
        if unstamped or (stamp >= since and int(pid) not in exclude):
            out.append(line)
    return out
