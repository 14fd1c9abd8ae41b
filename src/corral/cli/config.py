"""``corral config apply | show``: a service group's configuration.

``config apply SERVICE_GROUP VERSION FILE`` sends the file's text untouched (the
supervisor parses it: TOML, YAML or JSON by its suffix, errors with the file and line);
the supervisor stores it for the whole group (etcd, or this host without ``--cluster``)
and every member re-renders.  ``config show`` prints the merged values with where each
came from.  ``svc config set`` (in :mod:`corral.cli.svc`) sets one host's own layer;
:func:`read_values_file` is shared with it.
"""

from __future__ import annotations

import argparse
import json
import os

from corral.cli.common import CommandContext, add_parser, quote_segment
from corral.cli.errors import EXIT_OK, CliError
from corral.cli.render import table

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~2 ms at start-up
if TYPE_CHECKING:
    from typing import Any

#: File suffixes and the format each one means (as :data:`corral.render.FORMATS`).
SUFFIXES = {".toml": "toml", ".yaml": "yaml", ".yml": "yaml", ".json": "json"}


def register(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``config`` and its sub-commands."""
    config = add_parser(subparsers, "config", "apply and show service groups' config",
                        "A service group (<process>.<cluster group>) has one versioned config\n"
                        "for all its members, layered over each process's `config:` defaults\n"
                        "and each host's own file (corral svc config set).",
                        """
  corral config apply redis.default 2 redis.toml
  corral config show redis.default""", parents)
    verbs = config.add_subparsers(dest="config_verb", metavar="SUBCOMMAND", required=True)
    p = add_parser(verbs, "apply", "store a new version of a group's config",
                   "Store FILE (TOML, YAML or JSON, by its suffix) as version VERSION of the\n"
                   "service group's config. VERSION must be higher than the current one.\n"
                   "Every member renders its templates again; a member whose files changed\n"
                   "runs its reconfigure hook, or replaces its instances one at a time.\n"
                   "Values may refer to secrets as ${NAME}: each host resolves them from its\n"
                   "own store, and no secret value is stored in the cluster. Refused (and\n"
                   "nothing stored) when this host's process of the group does not render\n"
                   "with it.",
                   """
  corral config apply redis.default 2 redis.toml
  corral config apply web.prod 7 web.yaml""", parents)
    p.add_argument("service_group", metavar="SERVICE_GROUP", help="e.g. redis.default")
    p.add_argument("version", metavar="VERSION", type=_version, help="a whole number >= 1")
    p.add_argument("file", metavar="FILE", help="a .toml, .yaml, .yml or .json file")
    p.set_defaults(handler=cmd_apply)

    p = add_parser(verbs, "show", "show a group's config and where each value came from",
                   "Print the group config's version, then every value merged from the\n"
                   "process's defaults, this host's file and the group config, with its\n"
                   "source. Secrets show as their ${NAME} reference.",
                   """
  corral config show redis.default
  corral config show redis.default --json | jq .values""", parents)
    p.add_argument("service_group", metavar="SERVICE_GROUP", help="e.g. redis.default")
    p.add_argument("--json", action="store_true", help="print the API's JSON object")
    p.set_defaults(handler=cmd_show)


def _version(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of 1 or more, got {text!r}")
    return int(text)


def read_values_file(path: str) -> dict[str, Any]:
    """``{"text", "format", "source"}`` for a config file, its format from its suffix.

    Raises:
        CliError: an unknown suffix, or a file that cannot be read.
    """
    fmt = SUFFIXES.get(os.path.splitext(path)[1].lower())
    if fmt is None:
        raise CliError(f"{path}: unknown config format; use a .toml, .yaml, .yml or .json file")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text"
        raise CliError(f"cannot read {path}: {why}") from None
    return {"text": text, "format": fmt, "source": os.path.abspath(path)}


def cmd_apply(args: argparse.Namespace, ctx: CommandContext) -> int:
    """``PUT /v1/config/{service_group}``."""
    body = {**read_values_file(args.file), "version": args.version}
    path = f"/v1/config/{quote_segment(args.service_group)}"
    _, answer = ctx.client().request("PUT", path, body, timeout=None)
    ctx.out(f"{args.service_group}: config version {answer.get('version', args.version)} "
            "applied")
    return EXIT_OK


def cmd_show(args: argparse.Namespace, ctx: CommandContext) -> int:
    """``GET /v1/config/{service_group}``."""
    _, shown = ctx.client().request("GET", f"/v1/config/{quote_segment(args.service_group)}")
    if args.json:
        ctx.out(json.dumps(shown, indent=2))
        return EXIT_OK
    for line in show_lines(shown, ctx.colour):
        ctx.out(line)
    return EXIT_OK


def show_lines(shown: Any, colour: bool) -> list[str]:
    """The version line, a PATH VALUE SOURCE table, and the last refused render if any."""
    version = shown.get("version") or "none applied"
    lines = [f"{shown.get('service_group')}: config version {version}"]
    rows = [[str(r.get("path")), json.dumps(r.get("value")), str(r.get("source"))]
            for r in shown.get("rows") or []]
    lines += table(("PATH", "VALUE", "SOURCE"), rows, colour) if rows else ["no values"]
    if shown.get("error"):
        lines.append(f"refused: {shown['error']}")
    return lines
