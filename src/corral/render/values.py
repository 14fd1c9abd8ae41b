"""Configuration values: loading a file, layering with provenance, ``${SECRET}`` references.

Pure apart from :func:`load_values` reading the one file it is given.  Values are what JSON
can hold: mappings with text keys, lists, text, numbers, booleans and null.  Anything else
(a TOML date, a YAML set, a non-text key) is refused with the path of the value, because
the values travel through etcd as JSON and must read back the same on every host.

Layering (Habitat's order): ``defaults < host file < group config``.  Mappings merge key by
key, at any depth (so an empty mapping changes nothing); anything else (text, a number, a
list) is replaced whole by the higher layer.  :func:`layer` remembers which layer gave
each leaf, for ``corral config show``.

Secrets: a text value may hold ``${NAME}`` references (the grammar of
:mod:`corral.store.subst`).  They are stored and layered as they are, and resolved on each
host from its own store, at render time only (:func:`resolve_secrets`), so a secret's
value never leaves the host it is set on.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from corral.errors import SpecError
from corral.store.subst import expand

#: File suffixes :func:`load_values` understands, and the format each one means.
FORMATS = {".toml": "toml", ".yaml": "yaml", ".yml": "yaml", ".json": "json"}


def load_values(path: Path) -> dict[str, Any]:
    """The values in the TOML, YAML or JSON file ``path`` (chosen by its suffix).

    Raises:
        SpecError: the file cannot be read, has an unknown suffix, does not parse (the
            message is ``path:line: reason``), is not a mapping at its top, or holds a
            value JSON cannot carry (the message names its dotted path).
    """
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise SpecError(f"{path}: unknown config format {path.suffix or '(no suffix)'!r}; "
                        "use .toml, .yaml, .yml or .json")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    return parse_values(text, fmt, str(path))


def parse_values(text: str, fmt: str, source: str) -> dict[str, Any]:
    """Parse ``text`` in format ``fmt`` (``toml``, ``yaml`` or ``json``).

    See :func:`load_values` for what is refused.
    """
    data: Any
    if fmt == "toml":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise SpecError(_toml_message(source, str(exc))) from None
    elif fmt == "yaml":
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f":{mark.line + 1}" if mark is not None else ""
            reason = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise SpecError(f"{source}{line}: {reason}") from None
        if data is None:
            data = {}
    elif fmt == "json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpecError(f"{source}:{exc.lineno}: {exc.msg}") from None
    else:
        raise SpecError(f"{source}: unknown config format {fmt!r}; use toml, yaml or json")
    if not isinstance(data, dict):
        raise SpecError(f"{source}: the top level must be a mapping of names to values, "
                        f"not {_kind(data)}")
    check_values(data, source)
    return data


def _toml_message(source: str, message: str) -> str:
    # tomllib says "Invalid value (at line 3, column 7)": put the line in front, as elsewhere.
    match = re.search(r"\s*\(at line (\d+), column \d+\)$", message)
    if match is None:
        return f"{source}: {message}"
    return f"{source}:{match[1]}: {message[:match.start()]}"


def check_values(values: Mapping[str, Any], source: str) -> None:
    """Raise SpecError unless ``values`` is JSON-compatible (see the module docstring).

    The message is ``source: path: reason`` for the first value that is not.
    """
    for path, value in _walk(values, ""):
        problem = _problem(value)
        if problem is not None:
            raise SpecError(f"{source}: {path or '(top)'}: {problem}")


def _walk(value: Any, path: str) -> Iterator[tuple[str, Any]]:
    yield path, value
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str):
                yield from _walk(item, f"{path}.{key}" if path else key)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _walk(item, f"{path}[{i}]")


def _problem(value: Any) -> str | None:
    if isinstance(value, dict):
        bad = [k for k in value if not isinstance(k, str)]
        return f"key {bad[0]!r} is not text" if bad else None
    if isinstance(value, float) and not math.isfinite(value):
        return f"{value} cannot be stored (JSON has no infinities or NaN)"
    if value is None or isinstance(value, str | int | float | bool | list):
        return None
    return f"a {_kind(value)} cannot be stored; use text, a number, true/false, a list or a mapping"


def _kind(value: Any) -> str:
    return {list: "a list", str: "text", type(None): "null"}.get(type(value), type(value).__name__)


# ------------------------------------------------------------------------------ layering
@dataclass(frozen=True)
class Layer:
    """One source of values: ``source`` names it for people (``default``, ``host file
    /etc/redis.toml``, ``group config v7``)."""

    source: str
    values: Mapping[str, Any]


@dataclass(frozen=True)
class Layered:
    """Merged values, and which layer each leaf came from (``{"db.port": "default"}``).

    A leaf is a value that is not a mapping (an empty mapping is a leaf too); its path is
    the dotted keys from the top.
    """

    values: dict[str, Any]
    origins: dict[str, str] = field(default_factory=dict)

    def rows(self) -> list[tuple[str, Any, str]]:
        """``(path, value, source)`` for every leaf, sorted by path: what ``config show`` prints."""
        return [(path, value, self.origins[path])
                for path, value in sorted(_leaves(self.values, ""), key=lambda row: row[0])]


def layer(layers: Sequence[Layer]) -> Layered:
    """Merge ``layers``, lowest first; the inputs are not changed."""
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for each in layers:
        _merge(values, each.values, "", each.source, origins)
    return Layered(values, origins)


def _merge(into: dict[str, Any], top: Mapping[str, Any], path: str, source: str,
           origins: dict[str, str]) -> None:
    for key, value in top.items():
        here = f"{path}.{key}" if path else key
        below = into.get(key)
        if isinstance(value, Mapping) and isinstance(below, dict):
            if value and not below:  # an empty mapping was a leaf; now its keys are
                origins.pop(here, None)
            _merge(below, value, here, source, origins)
            continue
        if key in into:  # replaced whole: its leaves no longer come from the layer below
            for old, _ in _leaves({key: below}, path):
                del origins[old]
        into[key] = _copy(value)
        for leaf, _ in _leaves({key: value}, path):
            origins[leaf] = source


def _leaves(values: Mapping[str, Any], path: str) -> Iterator[tuple[str, Any]]:
    for key, value in values.items():
        here = f"{path}.{key}" if path else key
        if isinstance(value, Mapping) and value:
            yield from _leaves(value, here)
        else:
            yield here, value


def _copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


# ------------------------------------------------------------------------------ secrets
class _Recorder(Mapping[str, str]):
    """A mapping that answers every name with "" and remembers which were asked for."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def __getitem__(self, name: str) -> str:
        self.names.append(name)
        return ""

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


def secret_references(values: Mapping[str, Any], source: str = "config") -> dict[str, list[str]]:
    """Which secrets ``values`` refers to, and where: ``{"DB_PASS": ["db.password"]}``.

    Raises:
        SpecError: a malformed reference (``${`` without ``}``, a bad name), naming
            ``source`` and the value's path.
    """
    used: dict[str, list[str]] = {}
    for path, value in _walk(values, ""):
        if not isinstance(value, str):
            continue
        recorder = _Recorder()
        try:
            expand(value, recorder)
        except ValueError as exc:  # subst's syntax problem: its message says what to write
            raise SpecError(f"{source}: {path}: {exc}") from None
        for name in recorder.names:
            if path not in used.setdefault(name, []):
                used[name].append(path)
    return used


def resolve_secrets(values: Mapping[str, Any], secrets: Mapping[str, str],
                    source: str = "config") -> dict[str, Any]:
    """A copy of ``values`` with every ``${NAME}`` replaced by ``secrets[NAME]``.

    The result holds secret values: give it to templates, never to etcd, a log, an event
    or a status.

    Raises:
        SpecError: a malformed reference, or secrets that are not set; one line per
            secret with the paths that use it, never a value.
    """
    used = secret_references(values, source)
    missing = [name for name in used if name not in secrets]
    if missing:
        lines = [f"{source}: {', '.join(used[name])}: secret {name!r} is not set on this host; "
                 f"set it with: corral secret set {name} -" for name in missing]
        raise SpecError("\n".join(lines), lines)
    return _resolve(values, secrets) if used else _copy(values)  # type: ignore[no-any-return]


def _resolve(value: Any, secrets: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        return expand(value, secrets)
    if isinstance(value, Mapping):
        return {k: _resolve(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, secrets) for v in value]
    return value
