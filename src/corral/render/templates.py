"""Jinja2 templates and ``exports`` expressions.  Pure: values in, text out.

A template sees four names (Habitat's, with the same meaning):

- ``cfg``: the process's layered values, secrets resolved (:mod:`corral.render.values`);
- ``sys``: this host (``host``, ``address``, ``member``);
- ``svc``: the process's service group (``group``, ``members``, ``me``, ``first``,
  ``leader``), built by :func:`corral.render.binds.service_view`;
- ``bind``: one entry per bind name (``group``, ``members``, ``first``), built by
  :func:`corral.render.binds.bind_view`.

Undefined is strict: a missing key is a :class:`~corral.errors.TemplateError` naming the
template file, its line and the key (``redis.conf:3: cfg.db has no key 'port' (it has:
host, user)``), never silently empty text.  Messages name keys, never values, so a
resolved secret cannot leak through an error.  Templates can ``{% include %}`` one
another by name.

Compiled templates and export expressions are kept (a bounded cache keyed by their
sources, never by the values they are rendered with), so rendering a process again
compiles nothing.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jinja2

from corral.errors import TemplateError

from .values import check_values

_MAX_KEYS_SHOWN = 12


class Node(dict[str, Any]):
    """A mapping in a template's context that knows where it is (``cfg.db``), for messages.

    The attribute has an odd name so that it never hides a key: ``cfg.path`` is the key
    ``path``.
    """

    __slots__ = ("_corral_path",)

    def __init__(self, path: str, items: Mapping[str, Any]) -> None:
        super().__init__(items)
        self._corral_path = path


class NodeList(list[Any]):
    """A list in a template's context that knows where it is (``bind.db.members``)."""

    __slots__ = ("_corral_path",)

    def __init__(self, path: str, items: list[Any]) -> None:
        super().__init__(items)
        self._corral_path = path


def wrap(value: Any, path: str) -> Any:
    """``value`` with every mapping and list turned into a :class:`Node`/:class:`NodeList`."""
    if isinstance(value, Mapping):
        return Node(path, {k: wrap(v, f"{path}.{k}") for k, v in value.items()})
    if isinstance(value, list | tuple):
        return NodeList(path, [wrap(v, f"{path}[{i}]") for i, v in enumerate(value)])
    return value


def unwrap(value: Any) -> Any:
    """Plain dicts and lists again (for JSON)."""
    if isinstance(value, Mapping):
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [unwrap(v) for v in value]
    return value


class _Undefined(jinja2.StrictUndefined):
    """StrictUndefined whose message says which mapping lacked which key."""

    __slots__ = ()

    @property
    def _undefined_message(self) -> str:
        obj, name = self._undefined_obj, self._undefined_name
        where = getattr(obj, "_corral_path", None)
        if where is None or name is None:
            return str(super()._undefined_message)
        if isinstance(obj, NodeList):
            return f"{where} has no item {name!r} (it has {len(obj)})"
        keys = sorted(str(k) for k in obj)
        shown = ", ".join(keys[:_MAX_KEYS_SHOWN]) + (", ..." if len(keys) > _MAX_KEYS_SHOWN else "")
        return f"{where} has no key {name!r} (it has: {shown or 'no keys'})"


def _environment(templates: Mapping[str, str]) -> jinja2.Environment:
    def load(name: str) -> tuple[str, str, Callable[[], bool]] | None:
        source = templates.get(name)
        # The file name is the template's name, so tracebacks point into it (see _where).
        return None if source is None else (source, name, lambda: True)

    return jinja2.Environment(
        loader=jinja2.FunctionLoader(load), undefined=_Undefined, autoescape=False,
        keep_trailing_newline=True, auto_reload=False)


@functools.lru_cache(maxsize=128)
def _compiled(templates: tuple[tuple[str, str], ...]) -> jinja2.Environment:
    """The environment of ``templates`` (name, source pairs).  It keeps every template it
    has compiled, and the same sources give the same environment back: a process rendered
    again (a group config, a member coming or going) compiles nothing again."""
    return _environment(dict(templates))


@functools.lru_cache(maxsize=256)
def _expression(source: str) -> Callable[..., Any]:
    """``source`` compiled as one expression (an export), kept for the next render."""
    return _environment({}).compile_expression(source, undefined_to_none=False)


@dataclass(frozen=True)
class Context:
    """What a template sees; see the module docstring for each name."""

    cfg: Mapping[str, Any]
    sys: Mapping[str, Any]
    svc: Mapping[str, Any] = field(default_factory=dict)
    bind: Mapping[str, Any] = field(default_factory=dict)

    def variables(self) -> dict[str, Any]:
        return {name: wrap(getattr(self, name), name) for name in ("cfg", "sys", "svc", "bind")}


def render_templates(templates: Mapping[str, str], context: Context) -> dict[str, str]:
    """Render every template of ``templates`` (name -> source) with ``context``.

    Returns:
        name -> rendered text, in the order of ``templates``.

    Raises:
        TemplateError: the first template that fails, with its file (the name given
            here, or the included file's) and line: a syntax error, a missing key, or an
            error raised while rendering (``{{ 1 / 0 }}``).
    """
    env = _compiled(tuple(templates.items()))
    variables = context.variables()
    out: dict[str, str] = {}
    for name in templates:
        try:
            out[name] = env.get_template(name).render(variables)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(exc.filename or exc.name or name, exc.lineno,
                                exc.message or "syntax error") from None
        except Exception as exc:  # anything a template can raise: said where, with file:line
            file, line = _where(exc, templates, name)
            raise TemplateError(file, line, _reason(exc)) from None
    return out


def _where(exc: BaseException, templates: Mapping[str, str], name: str) -> tuple[str, int]:
    """The innermost template frame of ``exc``'s traceback (Jinja maps it to the template line)."""
    file, line = name, 0
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename in templates:
            file, line = tb.tb_frame.f_code.co_filename, tb.tb_lineno
        tb = tb.tb_next
    return file, line


def _reason(exc: BaseException) -> str:
    if isinstance(exc, jinja2.UndefinedError):
        return exc.message or "undefined value"
    return f"{type(exc).__name__}: {exc}"


def compute_exports(exports: Mapping[str, str], cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Evaluate a producer's ``exports: {port: cfg.port, ...}`` against its ``cfg``.

    Give it the layered values *before* secrets are resolved: exports are published to
    the other hosts, so a ``${SECRET}`` reference stays a reference and is resolved by
    each consumer from its own store.

    Raises:
        TemplateError: ``exports.<key>: reason`` for a syntax error, a missing key, or a
            result JSON cannot carry.
    """
    variables = {"cfg": wrap(cfg, "cfg")}
    out: dict[str, Any] = {}
    for key, source in exports.items():
        where = f"exports.{key}"
        try:
            value = _expression(source)(**variables)
            if isinstance(value, jinja2.Undefined):
                value._fail_with_undefined_error()
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(where, 0, f"{exc.message} in {source!r}") from None
        except Exception as exc:  # the same boundary as render_templates
            raise TemplateError(where, 0, _reason(exc)) from None
        out[key] = unwrap(value)
    try:
        check_values(out, "exports")
        json.dumps(out)
    except Exception as exc:  # SpecError from check_values names the path
        raise TemplateError("exports", 0, str(exc).removeprefix("exports: ")) from None
    return out
