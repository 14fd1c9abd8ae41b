"""``corral secret ls | get NAME... | set NAME VALUE|- | rm NAME...``: the secret store.

``${NAME}`` in a process's command, env, cwd or before is replaced by the secret's value
when the process starts.  Values travel only in ``get``'s output and ``set``'s request;
``ls`` shows names and the processes using them.

``set NAME -`` reads the value from stdin (preferred: a value on the command line shows in
``ps`` and the shell's history).  One trailing newline is dropped when the value is a
single line, so ``echo s3cret | corral secret set DB_PASS -`` stores ``s3cret``; a value of
several lines is kept byte for byte (a PEM key keeps its last newline).
"""

from __future__ import annotations

import argparse
import json
import sys

from corral.cli.common import CommandContext, add_parser, quote_segment
from corral.cli.errors import EXIT_OK, CliError, UsageError
from corral.cli.render import table

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing slows every command's start
if TYPE_CHECKING:
    from typing import Any, BinaryIO

    from corral.cli.http import Json

#: The store's limit (bytes of UTF-8); reading stops one byte past it.
MAX_VALUE = 1024 * 1024
EMPTY = "no secrets (set one with: corral secret set NAME -)"


def register(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``secret`` and its sub-commands."""
    secret = add_parser(subparsers, "secret", "store secrets used as ${NAME} in specs",
                        "Store named secrets; ${NAME} in a process's command, env, cwd or\n"
                        "before is replaced by the value when the process starts. Setting a\n"
                        "secret that processes use replaces them (health-gated); removing one\n"
                        "in use is refused.",
                        """
  printf %s "$PASSWORD" | corral secret set DB_PASS -
  corral secret ls
  corral svc load web --env 'DATABASE_URL=postgres://app:${DB_PASS}@db/app' -- ./web
  corral secret rm DB_PASS""", parents)
    verbs = secret.add_subparsers(dest="secret_verb", metavar="SUBCOMMAND", required=True)

    p = add_parser(verbs, "ls", "list secrets (names only)",
                   "Every secret's name and the processes that use it; never a value.",
                   "\n  corral secret ls\n  corral secret ls --json", parents)
    p.add_argument("--json", action="store_true", help="print [{name, used_by}, ...]")
    p.set_defaults(handler=cmd_ls)

    p = add_parser(verbs, "get", "print secrets' values",
                   "With one NAME, print its value (and a newline, unless it ends with one).\n"
                   "With several, print NAME=VALUE lines; a value with a newline, a quote,\n"
                   "a backslash or leading/trailing spaces is JSON-quoted. --json prints\n"
                   "{NAME: VALUE} exactly. All or nothing: one unknown NAME prints nothing.",
                   """
  corral secret get DB_PASS
  corral secret get DB_USER DB_PASS
  corral secret get DB_PASS --json | jq -r .DB_PASS""", parents)
    p.add_argument("names", metavar="NAME", nargs="+", help="secret name")
    p.add_argument("--json", action="store_true", help="print {NAME: VALUE, ...}")
    p.set_defaults(handler=cmd_get)

    p = add_parser(verbs, "set", "add or change a secret",
                   "Store VALUE as secret NAME. With -, read the value from stdin (better:\n"
                   "a VALUE argument shows in ps and in shell history); one trailing newline\n"
                   "of a single-line value is dropped, a multi-line value is kept as is\n"
                   "(and a value that starts with - can only come this way).\n"
                   "If processes use NAME and the value changed, they are replaced one\n"
                   "instance at a time, health-gated (as by `corral target set`), and the\n"
                   "command follows that rollout; it exits 1 if the rollout failed, and\n"
                   "then the secret has its old value again.",
                   """
  corral secret set DB_PASS -              (then type the value and Ctrl-D)
  printf %s "$TOKEN" | corral secret set API_TOKEN -
  corral secret set TLS_KEY - < server.key
  corral secret set LOG_LEVEL debug""", parents)
    p.add_argument("name", metavar="NAME", help="secret name: [A-Za-z_][A-Za-z0-9_]*")
    p.add_argument("value", metavar="VALUE", help="the value, or - to read it from stdin")
    p.add_argument("--no-wait", action="store_true",
                   help="do not follow the rollout of the processes that use it")
    p.add_argument("--json", action="store_true", help="print the API's answer")
    p.set_defaults(handler=cmd_set)

    p = add_parser(verbs, "rm", "remove secrets",
                   "Remove every NAME. All or nothing: an unknown name, or one a process\n"
                   "still uses (the error names them), removes none.",
                   "\n  corral secret rm DB_PASS\n  corral secret rm OLD_A OLD_B", parents)
    p.add_argument("names", metavar="NAME", nargs="+", help="secret name")
    p.set_defaults(handler=cmd_rm)


def read_value(stream: BinaryIO, limit: int = MAX_VALUE) -> str:
    """A value read from ``stream``: UTF-8, at most ``limit`` bytes, and without the one
    trailing newline (LF or CRLF) of a single-line value."""
    raw = stream.read(limit + 1)
    if len(raw) > limit:
        raise CliError(f"the value on stdin is over {limit} bytes (the limit of a secret; "
                       "store a large file as a resource: corral resource up FILE)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CliError("the value on stdin is not UTF-8 text") from None
    for ending in ("\r\n", "\n"):
        if text.endswith(ending) and "\n" not in text[:-len(ending)]:
            return text[:-len(ending)]
    return text


def _quoted(value: str) -> str:
    plain = value == value.strip() and not any(c in value for c in "\n\r\"\\") \
        and value.isprintable()
    return value if plain else json.dumps(value, ensure_ascii=False)


def cmd_ls(args: argparse.Namespace, ctx: CommandContext) -> int:
    """``GET /v1/secrets``."""
    _, answer = ctx.client().request("GET", "/v1/secrets")
    secrets: list[Json] = answer.get("secrets", [])
    if args.json:
        ctx.out(json.dumps(secrets, indent=2))
    elif not secrets:
        ctx.out(EMPTY)
    else:
        rows = [[str(s.get("name")), ", ".join(s.get("used_by") or []) or "-"]
                for s in secrets]
        for line in table(["NAME", "USED BY"], rows, ctx.colour):
            ctx.out(line)
    return EXIT_OK


def cmd_get(args: argparse.Namespace, ctx: CommandContext) -> int:
    """``POST /v1/secrets/get`` (all or nothing)."""
    names = list(dict.fromkeys(args.names))
    _, answer = ctx.client().request("POST", "/v1/secrets/get", {"names": names})
    values: dict[str, str] = answer.get("secrets", {})
    if args.json:
        ctx.out(json.dumps(values, indent=2, ensure_ascii=False))
    elif len(names) == 1:
        value = values[names[0]]
        ctx.stdout.write(value if value.endswith("\n") else value + "\n")
    else:
        for name in names:
            ctx.out(f"{name}={_quoted(values[name])}")
    return EXIT_OK


def cmd_set(args: argparse.Namespace, ctx: CommandContext) -> int:
    """``PUT /v1/secrets/{name}``; prints ``DB_PASS: updated (used by web)``."""
    if args.value == "-":
        if sys.stdin is None:
            raise UsageError("no stdin to read the value from")
        value = read_value(sys.stdin.buffer)
    else:
        value = args.value
    path = f"/v1/secrets/{quote_segment(args.name)}"
    _, answer = ctx.client().request("PUT", path, {"value": value}, timeout=None)
    if args.json:
        ctx.out(json.dumps(answer, indent=2))
        return EXIT_OK
    users = answer.get("used_by") or []
    where = f" (used by {', '.join(users)})" if users else ""
    ctx.out(f"{args.name}: {answer.get('result', 'set')}{where}")
    rollout = answer.get("rollout")
    if not rollout:
        return EXIT_OK
    if args.no_wait:
        ctx.out(f"rollout {rollout.get('id')} replacing {', '.join(users)} "
                "(see: corral target status)")
        return EXIT_OK
    from corral.cli.target import follow, verdict

    return verdict(follow(ctx.client(), rollout, ctx), ctx)


def cmd_rm(args: argparse.Namespace, ctx: CommandContext) -> int:
    """``POST /v1/secrets/delete`` (all or nothing)."""
    names = list(dict.fromkeys(args.names))
    _, answer = ctx.client().request("POST", "/v1/secrets/delete", {"names": names},
                                     timeout=None)
    ctx.out(f"removed {', '.join(answer.get('removed', names))}")
    return EXIT_OK
