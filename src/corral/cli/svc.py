"""``corral svc load | unload | start | stop | restart | scale | status``: services.

``svc load NAME [options] -- CMD...`` sends ``{"spec": {...}}`` with only the fields given;
``svc load -f FILE`` sends the file's text untouched as ``{"yaml": text, "source": FILE}``
(the server parses and validates it, so the CLI needs no YAML parser).
"""

from __future__ import annotations

import argparse
import json
import os
import time

from corral.cli.common import CommandContext, add_parser, non_negative_int, quote_segment
from corral.cli.errors import EXIT_OK, CliError, UsageError
from corral.cli.render import RUNNING, balancer_lines, service_table
from corral.protocol import defaults

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing slows every command's start
if TYPE_CHECKING:
    from typing import Any

    from corral.cli.http import Json

EMPTY = "no services loaded (add one with: corral svc load NAME -- CMD)"


def register(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``svc`` and its sub-commands."""
    svc = add_parser(subparsers, "svc", "load, control and inspect services",
                     "Load services into the supervisor, start/stop/restart/scale them, and\n"
                     "show their status.",
                     """
  corral svc load web --instances 2 -- python -m http.server 8000
  corral svc status
  corral svc restart web""", parents)
    verbs = svc.add_subparsers(dest="svc_verb", metavar="SUBCOMMAND", required=True)
    _register_load(verbs, parents)
    for name, help_, desc, example in (
        ("unload", "stop a service and forget it",
         "Stop every instance of the service, then remove it from the target.", "unload web"),
        ("start", "start a stopped service",
         "Set the service's desired state to up and start its instances.", "start web"),
        ("stop", "stop a service (it stays loaded)",
         "Stop every instance (stop signal, then KILL after the stop timeout) and keep\n"
         "the service loaded with desired state down.", "stop web"),
        ("restart", "restart a service's instances",
         "Stop and start every instance of the service.", "restart web"),
        ("reload", "reload a service's configuration without a restart",
         "Run the service's reload hook (hooks.reload), or send it hooks.reload_signal,\n"
         "in every running instance. Fails if the service has neither.", "reload web"),
    ):
        p = add_parser(verbs, name, help_, desc, f"\n  corral svc {example}", parents)
        p.add_argument("name", metavar="NAME", help="service name")
        if name in ("start", "restart"):
            _add_wait(p)
        p.set_defaults(handler=cmd_action, action=name)

    p = add_parser(verbs, "scale", "change a service's number of instances",
                   "Run N instances of the service (new ones start, extra ones stop).",
                   "\n  corral svc scale web 4\n  corral svc scale web 0", parents)
    p.add_argument("name", metavar="NAME", help="service name")
    p.add_argument("instances", metavar="N", type=non_negative_int, help="number of instances")
    p.set_defaults(handler=cmd_scale)

    config = add_parser(verbs, "config", "set this host's own config values for a service",
                        "The host's own layer of a service's config values: over its\n"
                        "`config:` defaults, under its service group's applied config.",
                        "\n  corral svc config set redis redis.toml", parents)
    config_verbs = config.add_subparsers(dest="config_verb", metavar="SUBCOMMAND",
                                         required=True)
    p = add_parser(config_verbs, "set", "set this host's config values for a service",
                   "Store FILE (TOML, YAML or JSON, by its suffix) as this host's values for\n"
                   "the service (Habitat's user.toml): they override its `config:` defaults,\n"
                   "and the group config (corral config apply) overrides them. The service\n"
                   "renders its templates again, then runs its reconfigure hook or replaces\n"
                   "its instances if its files changed. Refused, and nothing stored, when it\n"
                   "does not render with them.",
                   "\n  corral svc config set redis redis.toml\n"
                   "  corral config show redis.default", parents)
    p.add_argument("name", metavar="NAME", help="service name")
    p.add_argument("file", metavar="FILE", help="a .toml, .yaml, .yml or .json file")
    p.set_defaults(handler=cmd_config_set)

    p = add_parser(verbs, "status", "show services' states",
                   "A table of every service (or one), with one indented line per instance\n"
                   "for a service with several. With NAME, exits 1 if the service is not\n"
                   "running (state down, backoff or failed).",
                   """
  corral svc status
  corral svc status web
  corral svc status --json | jq '.[] | select(.state != "up") | .name'""", parents)
    p.add_argument("name", metavar="NAME", nargs="?", help="only this service")
    p.add_argument("--json", action="store_true",
                   help="print the API's list of service objects (one element with NAME)")
    p.set_defaults(handler=cmd_status)


def _register_load(verbs: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = add_parser(verbs, "load", "add or update a service",
                   "Add a service, or update a loaded one (only what changed is restarted).\n"
                   "Either give NAME, options and the command after --, or a spec file\n"
                   "with -f (one process entry in the target's YAML format).",
                   """
  corral svc load web -- python -m http.server 8000
  corral svc load web --env PORT=8000 --restart on-failure --instances 2 -- ./server --port 8000
  corral svc load worker --stop-signal INT --stop-timeout 30s -- python worker.py
  corral svc load -f web.yaml""", parents,
                   usage="corral svc load NAME [options] -- CMD [ARGS...]\n"
                         "       corral svc load -f FILE")
    p.add_argument("name", metavar="NAME", nargs="?", help="service name ([a-z0-9][a-z0-9_.-]*)")
    p.add_argument("-f", "--file", metavar="FILE", help="load a YAML spec file instead")
    p.add_argument("--restart", choices=("always", "on-failure", "never"),
                   help="restart policy (default always)")
    p.add_argument("--env", metavar="K=V", action="append", type=_env_pair, default=[],
                   help="environment variable (repeatable); ${SECRET} values are substituted")
    p.add_argument("--cwd", metavar="D", help="working directory (default: a fresh one)")
    p.add_argument("--user", metavar="U", help="run as this user (when corral runs as root)")
    p.add_argument("--group", metavar="G", help="run with this group")
    p.add_argument("--stop-signal", metavar="S", help=f"stop signal (default {defaults.STOP_SIGNAL})")
    p.add_argument("--stop-timeout", metavar="T",
                   help="seconds or a duration like 30s before KILL "
                        f"(default {defaults.STOP_TIMEOUT:g}s)")
    p.add_argument("--instances", metavar="N", type=non_negative_int, help="instances to run")
    p.add_argument("--log-format", choices=("stamped", "raw"), help="log record format")
    _add_wait(p)
    p.set_defaults(handler=cmd_load, takes_tail=True)


def _env_pair(text: str) -> tuple[str, str]:
    """argparse ``type=`` for ``--env``: ``KEY=VALUE`` with a non-empty key."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return key, value


def _number_or_text(text: str) -> int | float | str:
    """``30`` -> 30, ``2.5`` -> 2.5, ``30s`` -> ``"30s"`` (the server parses durations)."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def load_body(args: argparse.Namespace) -> dict[str, Json]:
    """The ``POST /v1/services`` body for ``svc load``.

    Raises :class:`UsageError` for a wrong combination of arguments, :class:`CliError` when
    the ``-f`` file cannot be read.
    """
    tail = args.argv_tail
    if args.file:
        given = [opt for opt, val in (("NAME", args.name), ("-- CMD", tail), ("--env", args.env))
                 if val]
        given += [f"--{k.replace('_', '-')}" for k in _SPEC_OPTIONS if getattr(args, k) is not None]
        if given:
            raise UsageError(f"-f takes the whole spec from the file; drop {', '.join(given)}")
        try:
            with open(args.file, encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise CliError(f"cannot read {args.file}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise CliError(f"{args.file} is not UTF-8 text") from None
        return {"yaml": text, "source": args.file}
    if not args.name:
        raise UsageError("give a NAME and a command: corral svc load NAME [options] -- CMD [ARGS...]")
    if not tail:
        raise UsageError(f"give the command after --: corral svc load {args.name} [options] -- CMD")
    spec: dict[str, Json] = {"name": args.name, "command": tail}
    if args.env:
        spec["env"] = dict(args.env)
    if args.cwd:
        spec["cwd"] = os.path.abspath(args.cwd)
    for key in ("user", "group", "instances"):
        if getattr(args, key) is not None:
            spec[key] = getattr(args, key)
    if args.restart:
        spec["restart"] = {"policy": args.restart}
    stop: dict[str, Json] = {}
    if args.stop_signal:
        stop["signal"] = args.stop_signal
    if args.stop_timeout:
        stop["timeout"] = _number_or_text(args.stop_timeout)
    if stop:
        spec["stop"] = stop
    if args.log_format:
        spec["logs"] = {"format": args.log_format}
    return {"spec": spec}


_SPEC_OPTIONS = ("restart", "cwd", "user", "group", "stop_signal", "stop_timeout", "instances",
                 "log_format")


def _add_wait(p: argparse.ArgumentParser) -> None:
    p.add_argument("--wait", metavar="SECONDS", nargs="?", type=float, const=60.0,
                   help="return only once every instance is ready (default 60 s); fail "
                        "with the last log lines if it is not")


def _wait_query(args: argparse.Namespace) -> str:
    wait = getattr(args, "wait", None)
    if wait is None:
        return ""
    if wait < 0:
        raise UsageError(f"--wait must be a number of seconds >= 0, not {wait:g}")
    return f"?wait={wait:g}"


def cmd_load(args: argparse.Namespace, ctx: CommandContext) -> int:
    """``POST /v1/services``; prints ``web: added (pid 1234)``."""
    body = load_body(args)
    _, answer = ctx.client().request("POST", "/v1/services" + _wait_query(args), body,
                                     timeout=None)
    svc = answer.get("service") or {}
    where = f" (pid {svc['pid']})" if svc.get("pid") is not None else ""
    ctx.out(f"{svc.get('name', args.name)}: {answer.get('result', 'loaded')}{where}")
    return EXIT_OK


def cmd_action(args: argparse.Namespace, ctx: CommandContext) -> int:
    """``unload`` (DELETE) and ``start``/``stop``/``restart`` (POST); prints one line."""
    path = f"/v1/services/{quote_segment(args.name)}"
    client = ctx.client()
    if args.action == "unload":
        _, answer = client.request("DELETE", path, timeout=None)
        ctx.out(f"{args.name}: {answer.get('result', 'unloaded') if answer else 'unloaded'}")
        return EXIT_OK
    _, svc = client.request("POST", f"{path}/{args.action}{_wait_query(args)}", timeout=None)
    done = {"start": "started", "stop": "stopped", "restart": "restarted",
            "reload": "reloaded"}[args.action]
    ctx.out(f"{args.name}: {done}, {_state_pid(svc)}")
    return EXIT_OK


def cmd_config_set(args: argparse.Namespace, ctx: CommandContext) -> int:
    """``PUT /v1/services/{name}/config``."""
    from corral.cli.config import read_values_file

    path = f"/v1/services/{quote_segment(args.name)}/config"
    _, shown = ctx.client().request("PUT", path, read_values_file(args.file), timeout=None)
    ctx.out(f"{args.name}: host config set from {args.file} (group "
            f"{shown.get('service_group')}, config version {shown.get('version') or 'none'})")
    return EXIT_OK


def cmd_scale(args: argparse.Namespace, ctx: CommandContext) -> int:
    """``POST /v1/services/{name}/scale``."""
    path = f"/v1/services/{quote_segment(args.name)}/scale"
    _, svc = ctx.client().request("POST", path, {"instances": args.instances}, timeout=None)
    count = svc.get("instances", args.instances)
    ctx.out(f"{args.name}: scaled to {count} instance{'' if count == 1 else 's'}, "
            f"{_state_pid(svc)}")
    return EXIT_OK


def cmd_status(args: argparse.Namespace, ctx: CommandContext) -> int:
    """``GET /v1/services`` or ``/v1/services/{name}``; table or JSON list."""
    client = ctx.client()
    if args.name:
        _, one = client.request("GET", f"/v1/services/{quote_segment(args.name)}")
        services = [one]
    else:
        _, services = client.request("GET", "/v1/services")
    if args.json:
        ctx.out(json.dumps(services, indent=2))
    elif not services:
        ctx.out(EMPTY)
    else:
        for line in service_table(services, time.time(), ctx.colour):
            ctx.out(line)
        if args.name and services[0].get("traffic"):
            ctx.out("traffic:")
            for line in balancer_lines({"services": list(services[0]["traffic"].values())}):
                ctx.out(line)
    if args.name and services[0].get("state") not in RUNNING:
        ctx.stdout.flush()
        raise CliError(f"{args.name} is not running ({services[0].get('state')})")
    return EXIT_OK


def _state_pid(svc: Json) -> str:
    """``up (pid 1234)``, or just the state when there is no pid."""
    if not isinstance(svc, dict):
        return "?"
    pid = svc.get("pid")
    return str(svc.get("state", "?")) + (f" (pid {pid})" if pid is not None else "")
