"""Configuration and templates for service groups.  Pure: values in, files' text out.

- :mod:`.values`: load a config file (TOML, YAML, JSON), layer defaults < host file <
  group config with the source of every value, find and resolve ``${SECRET}`` references;
- :mod:`.templates`: render Jinja2 templates with ``cfg``, ``sys``, ``svc`` and ``bind``
  (strict: a missing key names the file, the line and the key), evaluate ``exports``;
- :mod:`.binds`: the ``svc`` and ``bind`` views, and ``CORRAL_BIND_<NAME>_ADDRS``.

Nothing here does I/O except :func:`load_values` reading the file it is given, and nothing
here knows about etcd or the supervisor: the caller reads template files, gets members
from :mod:`corral.cluster`, and writes the rendered text.
"""

from .binds import bind_env, bind_view, env_name, member_address, service_view
from .templates import Context, compute_exports, render_templates
from .values import (
    FORMATS,
    Layer,
    Layered,
    check_values,
    layer,
    load_values,
    parse_values,
    resolve_secrets,
    secret_references,
)

__all__ = [
    "FORMATS",
    "Context",
    "Layer",
    "Layered",
    "bind_env",
    "bind_view",
    "check_values",
    "compute_exports",
    "env_name",
    "layer",
    "load_values",
    "member_address",
    "parse_values",
    "render_templates",
    "resolve_secrets",
    "secret_references",
    "service_view",
]
