"""Checks between the entries of a target: unique names, known dependencies and services,
no dependency cycles, no two services on one address.

LEAF: imports the stdlib and :mod:`corral.spec.problems` only (the models for types).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .problems import Problem

if TYPE_CHECKING:
    from .models import ProcessSpec, ServiceSpec


def cross_problems(
    procs: list[tuple[int, ProcessSpec]],
    svcs: list[tuple[int, ServiceSpec]],
    names: dict[str, list[tuple[int, str]]] | None = None,
) -> list[Problem]:
    """Problems between entries: ``procs`` and ``svcs`` are the valid ones with their index.

    ``names`` has the (index, name) of every entry, valid or not (default: of the valid ones).
    """
    if names is None:
        names = {"processes": [(i, p.name) for i, p in procs]}
        names["services"] = [(i, s.name) for i, s in svcs]
    problems: list[Problem] = []
    first = {section: _first_index(section, pairs, problems) for section, pairs in names.items()}
    for n, (i, s) in enumerate(svcs):
        other = next(((j, o) for j, o in svcs[:n] if o.clashes_with(s)), None)
        if other:
            j, o = other
            msg = f"address {s.on} clashes with services[{j}] ({o.name}, {o.on})"
            problems.append((("services", i, "on"), msg))
    for i, p in procs:
        for k, dep in enumerate(p.depends_on):
            if dep not in first["processes"]:
                problems.append((("processes", i, "depends_on", k), f"unknown process {dep!r}"))
        for k, svc in enumerate(p.receives):
            if svc not in first["services"]:
                problems.append((("processes", i, "receives", k), f"unknown service {svc!r}"))
    index = first["processes"]
    return problems + _cycles({p.name: p.depends_on for i, p in procs if index[p.name] == i}, index)


def _first_index(
    section: str, pairs: list[tuple[int, str]], problems: list[Problem]
) -> dict[str, int]:
    """Where each name first appears; a problem for every later duplicate."""
    first: dict[str, int] = {}
    for i, name in pairs:
        if name in first:
            msg = f"duplicate name {name!r} (also {section}[{first[name]}])"
            problems.append(((section, i, "name"), msg))
        first.setdefault(name, i)
    return first


def _cycles(deps: dict[str, list[str]], index: dict[str, int]) -> list[Problem]:
    """One problem per dependency cycle, at the ``depends_on`` of the process it starts from."""
    problems: list[Problem] = []
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    seen: set[frozenset[str]] = set()

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        path.append(name)
        for dep in deps[name]:
            if dep not in deps:
                continue
            if state.get(dep) == 1:
                cycle = [*path[path.index(dep) :], dep]
                if frozenset(cycle) not in seen:
                    seen.add(frozenset(cycle))
                    msg = "dependency cycle: " + " -> ".join(cycle)
                    problems.append((("processes", index[dep], "depends_on"), msg))
            elif dep not in state:
                visit(dep, path)
        path.pop()
        state[name] = 2

    for name in deps:
        if name not in state:
            visit(name, [])
    return problems
