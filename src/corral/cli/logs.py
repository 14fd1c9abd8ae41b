"""``corral logs NAME [-f] [-n N]``: a service's output, as the launcher recorded it.

Without ``-f``: ``GET /v1/services/NAME/logs?n=N`` and print ``lines``.  With ``-f``: stream
``?n=N&follow=1`` (server-sent events ``{"line": ...}``) until interrupted (exit 130) or the
server ends the stream (exit 1: the supervisor went away, e.g. it is restarting).
"""

from __future__ import annotations

import argparse

from corral.cli.common import (
    EXIT_OK,
    CliError,
    Context,
    add_parser,
    non_negative_int,
    quote_segment,
)

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~2 ms at start-up
if TYPE_CHECKING:
    from typing import Any

DEFAULT_LINES = 50


def register(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``logs``."""
    p = add_parser(subparsers, "logs", "show or follow a service's output",
                   "Print the last N records of a service's stdout and stderr, oldest first,\n"
                   "across rotated files. Each stamped record reads\n"
                   "  <RFC 3339 UTC time> <pid> <O|E> <text>\n"
                   "With -f, keep printing new records as they are written.",
                   """
  corral logs web
  corral logs web -n 200
  corral logs web -f
  corral logs web -f -n 0 | grep ERROR""", parents)
    p.add_argument("name", metavar="NAME", help="service name")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new records")
    p.add_argument("-n", "--lines", metavar="N", type=non_negative_int, default=DEFAULT_LINES,
                   help=f"how many past records to print first (default {DEFAULT_LINES})")
    p.set_defaults(handler=cmd_logs)


def cmd_logs(args: argparse.Namespace, ctx: Context) -> int:
    """Print past records, then (with ``-f``) follow."""
    path = f"/v1/services/{quote_segment(args.name)}/logs?n={args.lines}"
    client = ctx.client()
    if not args.follow:
        _, answer = client.request("GET", path)
        for line in answer.get("lines", []):
            ctx.stdout.write(f"{line}\n")
        return EXIT_OK
    for event in client.stream(path + "&follow=1"):
        ctx.stdout.write(f"{event.get('line', '')}\n")
        ctx.stdout.flush()
    raise CliError("the supervisor ended the log stream (is it restarting? check: corral sup status)")
