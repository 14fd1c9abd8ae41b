"""Helpers for service-group tests (config apply, templates, binds), on one host or
several: a process whose working directory holds its templates, reading what it
rendered, its events, and the config a supervisor shows.  Each takes a :class:`Corral`,
so the same helpers drive supervisors in network namespaces."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .conftest import PY, Corral, wait_for

#: A process that writes its CORRAL_BIND_* variables to ``env.out`` (in its cwd), then
#: sleeps: what it was started with stays readable.
ENV_DUMP = ("import json, os, time\n"
            "bind = {k: v for k, v in os.environ.items() if k.startswith('CORRAL_BIND_')}\n"
            "open('env.out', 'w').write(json.dumps(bind))\n"
            "time.sleep(3600)\n")


@dataclass
class GroupProcess:
    """A process entry with ``config``, ``templates`` (files in its own ``cwd``),
    ``binds`` and ``exports``; :meth:`write` puts the templates and the spec on disk."""

    name: str
    root: Path
    templates: dict[str, str] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    binds: dict[str, str] = field(default_factory=dict)
    exports: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    reconfigure: str | None = None

    @property
    def cwd(self) -> Path:
        return self.root / self.name

    def spec(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"name": self.name, "command": [PY, "-u", "-c", ENV_DUMP],
                                 "cwd": str(self.cwd), "start_seconds": 0}
        for key in ("templates", "config", "binds", "exports"):
            value = getattr(self, key)
            if value:
                entry[key] = list(value) if key == "templates" else value
        if self.reconfigure is not None:
            entry["hooks"] = {"reconfigure": self.reconfigure}
        entry.update(self.extra)
        return entry

    def write(self) -> Path:
        self.cwd.mkdir(parents=True, exist_ok=True)
        for name, text in self.templates.items():
            (self.cwd / name).write_text(text)
        path = self.root / f"{self.name}.spec.yaml"
        path.write_text(yaml.safe_dump(self.spec()))
        return path

    def load(self, c: Corral) -> None:
        c.ok("svc", "load", "-f", str(self.write()))

    def file(self, name: str) -> str | None:
        """A rendered file's text (None while there is none)."""
        path = self.cwd / name
        return path.read_text() if path.exists() else None

    def env(self) -> dict[str, str] | None:
        """The CORRAL_BIND_* variables its running process was started with."""
        text = self.file("env.out")
        return json.loads(text) if text else None


def values_file(root: Path, name: str, values: dict[str, Any]) -> Path:
    """``values`` as a TOML-free JSON or YAML file (by ``name``'s suffix)."""
    path = root / name
    text = json.dumps(values) if name.endswith(".json") else yaml.safe_dump(values)
    path.write_text(text)
    return path


def config_show(c: Corral, service_group: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(c.ok("config", "show", service_group, "--json"))
    return data


def sources(c: Corral, service_group: str) -> dict[str, tuple[Any, str]]:
    """``{path: (value, source)}`` of ``config show``."""
    return {r["path"]: (r["value"], r["source"])
            for r in config_show(c, service_group)["rows"]}


def events(c: Corral, service: str, kind: str | None = None) -> list[dict[str, Any]]:
    out = c.ok("events", "--json", "--service", service, "-n", "1000")
    evs = [json.loads(line) for line in out.splitlines() if line.strip()]
    return [e for e in evs if kind is None or e.get("kind") == kind]


def wait_file(p: GroupProcess, name: str, contains: str, timeout: float = 20) -> str:
    return wait_for(lambda: (t := p.file(name)) is not None and contains in t and t,  # type: ignore[no-any-return]
                    timeout, f"{p.name}'s {name} to contain {contains!r}")


def pid(c: Corral, name: str) -> int | None:
    value = c.status(name)["pid"]
    return int(value) if value is not None else None


class ClusterHosts:
    """Supervisors joined to one etcd, each with its own state directory and member name
    (on loopback here; a namespace test starts its own with ``--advertise`` set)."""

    def __init__(self, root: Path, etcd_url: str, ttl: str = "2",
                 advertise: str = "127.0.0.1") -> None:
        self.root, self.etcd_url, self.ttl, self.advertise = root, etcd_url, ttl, advertise
        self.made: list[Corral] = []

    def start(self, member: str, *extra: str) -> Corral:
        state = self.root / member / "state"
        state.parent.mkdir(parents=True, exist_ok=True)
        c = Corral(state)
        self.made.append(c)
        c.start("--cluster", self.etcd_url, "--member-name", member, "--advertise",
                self.advertise, "--cluster-ttl", self.ttl, *extra)
        return c

    def stop(self) -> None:
        for c in self.made:
            c.stop()


def member(c: Corral, service_group: str, name: str) -> dict[str, Any] | None:
    """One member of a service group as ``c``'s census shows it (None: not there)."""
    data = json.loads(c.ok("census", "--json"))
    found = [m for m in data["groups"].get(service_group, []) if m["member"] == name]
    return found[0] if found else None
