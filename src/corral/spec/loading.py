"""Loading a spec: YAML text or parsed data to a model, or SpecError naming every problem.

LEAF: imports the stdlib, pydantic, yaml and the modules of :mod:`corral.spec` only.
"""

from __future__ import annotations

from typing import Any, NoReturn, TypeVar

import yaml
from pydantic import ValidationError

from .checks import cross_problems
from .models import FIELD_OWNERS, ProcessSpec, ServiceSpec, SpecModel, Target
from .problems import Problem, describe, raise_problems
from .reader import UNUSUAL, compose, keys_twice, plain_data

M = TypeVar("M", bound=SpecModel)


def _fast(model: type[M], text: str) -> M | None:
    """Parse and validate with libyaml; None if anything is wrong (the slow path then
    composes the node tree to name the line of every problem)."""
    try:
        data = plain_data(text)
        if data is UNUSUAL:  # the slow path also finds keys given twice
            return None
        if model is Target and data is None:
            data = {}
        return model.model_validate(data) if isinstance(data, dict) else None
    except (yaml.YAMLError, ValidationError):
        return None


def load_target(text: str, source: str) -> Target:
    """The target in YAML ``text``; an empty document is an empty target.

    Raises SpecError naming ``source``, the line and the field of every problem.
    """
    fast = _fast(Target, text)
    if fast is not None:
        return fast
    data, node = compose(text, source)
    if twice := keys_twice(node):
        raise_problems(source, node, twice)
    return _validate(Target, {} if data is None else data, source, node)


def load_process(text: str, source: str) -> ProcessSpec:
    """The process spec in YAML ``text`` (the form of ``svc load -f``).

    Raises SpecError naming ``source``, the line and the field of every problem.
    """
    fast = _fast(ProcessSpec, text)
    if fast is not None:
        return fast
    data, node = compose(text, source)
    if twice := keys_twice(node):
        raise_problems(source, node, twice)
    return _validate(ProcessSpec, data, source, node)


def validate_target(data: object, source: str) -> Target:
    """``data`` (e.g. parsed JSON; None is empty) as a Target, or SpecError without line numbers."""
    return _validate(Target, {} if data is None else data, source, None)


def validate_process(data: object, source: str) -> ProcessSpec:
    """``data`` as a ProcessSpec, or SpecError naming ``source`` and each field (no lines)."""
    return _validate(ProcessSpec, data, source, None)


def refuse(text: str | None, source: str, problems: list[Problem]) -> NoReturn:
    """Raise SpecError for ``problems`` found outside this module (missing secrets, unknown
    resources, addresses that cannot be bound), naming the line of each in ``text``."""
    node = compose(text, source)[1] if text is not None else None
    raise_problems(source, node, problems)


def _validate(model: type[M], data: object, source: str, node: yaml.Node | None) -> M:
    if not isinstance(data, dict):
        what = "an empty document" if data is None else f"a {type(data).__name__}"
        raise_problems(source, node, [((), f"the top level must be a mapping, not {what}")])
    try:
        return model.model_validate(data)
    except ValidationError as e:
        errors = e.errors(include_url=False)
    problems = [(err["loc"], describe(err, model, FIELD_OWNERS)) for err in errors]
    if model is Target and not any(err["type"] == "target" for err in errors):
        # Field errors stop pydantic before the cross checks: run them on the valid entries.
        procs, proc_names = _valid_entries(data, "processes", ProcessSpec)
        svcs, svc_names = _valid_entries(data, "services", ServiceSpec)
        names = {"processes": proc_names, "services": svc_names}
        cross = cross_problems(procs, svcs, names)
        problems += [p for p in cross if p not in problems]
    raise_problems(source, node, problems)


def _valid_entries(
    data: dict[Any, Any], key: str, model: type[M]
) -> tuple[list[tuple[int, M]], list[tuple[int, str]]]:
    """The entries of ``data[key]`` that are valid alone, and the names of all entries."""
    items = data.get(key)
    items = items if isinstance(items, list) else []
    valid: list[tuple[int, M]] = []
    for i, raw in enumerate(items):
        try:
            valid.append((i, model.model_validate(raw)))
        except ValidationError:
            pass
    names = [(i, r["name"]) for i, r in enumerate(items) if isinstance(r, dict) and "name" in r]
    return valid, names
