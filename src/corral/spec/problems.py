"""Problems in a spec, and how they read: ``<source>:<line>: <field path>: <message>``.

LEAF: imports the stdlib, pydantic, yaml (for its node type) and :mod:`corral.errors` only.

A problem is a location (the path of keys and indexes to a field) and a message.  Models
raise theirs with :func:`fail`; :func:`raise_problems` turns a list of them into one
:class:`~corral.errors.SpecError`, each problem on its own line, with the line of the YAML
it names when the node tree is known; :func:`describe` words a pydantic error plainly.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import NoReturn

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails, InitErrorDetails, PydanticCustomError

from corral.errors import SpecError

Loc = tuple[str | int, ...]
Problem = tuple[Loc, str]


def fail(problems: list[Problem], kind: str = "spec") -> None:
    """Raise the problems as one ValidationError, each at its own location (if any): a
    model validator calls it, so pydantic reports them beside its own."""
    if problems:
        details = [
            InitErrorDetails(
                type=PydanticCustomError(kind, "{detail}", {"detail": msg}), loc=loc, input=None
            )
            for loc, msg in problems
        ]
        raise ValidationError.from_exception_data("spec", details)


_TYPES = {"int": "an integer", "float": "a number", "bool": "true or false", "string": "a string"}
_TYPES |= {"list": "a list", "dict": "a mapping", "model": "a mapping"}
_PLAIN = {"missing": "required field is missing", "int_from_float": "must be a whole number"}
_PLAIN |= dict.fromkeys(("too_short", "string_too_short"), "must not be empty")
_PLAIN |= {
    "greater_than": "must be greater than {gt}",
    "greater_than_equal": "must be at least {ge}",
}
_PLAIN |= {"less_than": "must be less than {lt}", "less_than_equal": "must be at most {le}"}


def raise_problems(source: str, node: yaml.Node | None, problems: list[Problem]) -> NoReturn:
    """Raise SpecError with one line per problem, in the order of the file."""
    located = sorted(
        ((_line_of(node, loc), loc, msg) for loc, msg in problems), key=lambda p: p[0] or 0
    )
    lines = []
    for line, loc, msg in located:
        where = f"{source}:{line}" if line is not None else source
        lines.append(f"{where}: {_path(loc)}: {msg}" if loc else f"{where}: {msg}")
    head = f"{len(lines)} problems in {source}:\n" if len(lines) > 1 else ""
    raise SpecError(head + "\n".join(lines), lines)


def describe(err: ErrorDetails, root: type[BaseModel],
             owners: Mapping[str, type[BaseModel]]) -> str:
    """``err`` in plain words; ``owners`` maps a field to the model that validates its value
    (for the allowed fields of an unknown one), ``root`` is the model of the whole document."""
    kind, ctx = err["type"], err.get("ctx") or {}
    if kind == "extra_forbidden":
        parents = [part for part in err["loc"][:-1] if isinstance(part, str)]
        owner = owners[parents[-1]] if parents else root
        allowed = ", ".join(owner.model_fields)
        return f"unknown field {err['loc'][-1]!r} (allowed: {allowed})"
    if kind == "literal_error":
        return "must be one of " + ", ".join(re.findall(r"'([^']*)'", str(ctx.get("expected"))))
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        return str(ctx["error"])
    if kind in _PLAIN:
        return _PLAIN[kind].format(**ctx)
    if kind.endswith(("_type", "_parsing")) and kind.split("_")[0] in _TYPES:
        return "must be " + _TYPES[kind.split("_")[0]]
    return err["msg"][:1].lower() + err["msg"][1:]


def _line_of(node: yaml.Node | None, loc: Loc) -> int | None:
    """1-based line of the YAML that ``loc`` names: its key's line, or the nearest parent's."""
    if node is None:
        return None
    line = node.start_mark.line
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            keys = [(k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode)]
            match = [(k, v) for k, v in keys if k.value == str(part)]
            if not match:
                break
            line, node = match[-1][0].start_mark.line, match[-1][1]
        elif (
            isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value)
        ):
            node = node.value[part]
            line = node.start_mark.line
        else:
            break
    return line + 1


def _path(loc: Loc) -> str:
    out = ""
    for part in loc:
        if part == "[key]":
            continue
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out
