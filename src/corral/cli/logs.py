"""``corral logs NAME [-f] [-n N]``: a service's output, as the launcher recorded it.

Without ``-f``: ``GET /v1/services/NAME/logs?n=N`` and print ``lines``.  With ``-f``: stream
``?n=N&follow=1`` (server-sent events, each a batch ``{"lines": [...]}`` whose id is the
cursor after it) until interrupted (exit 130).  When the stream is cut (``sup restart``, a
killed supervisor) it reconnects from the last cursor, so no record is printed twice or
missed; it gives up (exit 1) only when no supervisor answers for 30 s.  Records rotated
away before they could be read are announced on stderr with their size.
"""

from __future__ import annotations

import argparse

from corral.cli.common import CommandContext, add_parser, non_negative_int, quote_segment
from corral.cli.errors import EXIT_OK

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing slows every command's start
if TYPE_CHECKING:
    from typing import Any

DEFAULT_LINES = 50


def register(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``logs``."""
    p = add_parser(subparsers, "logs", "show or follow a service's output",
                   "Print the last N records of a service's stdout and stderr, oldest first,\n"
                   "across rotated files. Each stamped record reads\n"
                   "  <RFC 3339 UTC time> <pid> <O|E> <text>\n"
                   "With -f, keep printing new records as they are written; following\n"
                   "survives a supervisor restart (nothing printed twice, nothing missed)\n"
                   "and says on stderr how much it skipped if the log rotated faster than\n"
                   "it could read.",
                   """
  corral logs web
  corral logs web -n 200
  corral logs web -f
  corral logs web -f -n 0 | grep ERROR""", parents)
    p.add_argument("name", metavar="NAME", help="service name")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new records, across supervisor restarts, "
                   "until corral stops")
    p.add_argument("-n", "--lines", metavar="N", type=non_negative_int, default=DEFAULT_LINES,
                   help=f"how many past records to print first (default {DEFAULT_LINES})")
    p.set_defaults(handler=cmd_logs)


def cmd_logs(args: argparse.Namespace, ctx: CommandContext) -> int:
    """Print past records, then (with ``-f``) follow."""
    path = f"/v1/services/{quote_segment(args.name)}/logs?n={args.lines}"
    client = ctx.client()
    if not args.follow:
        _, answer = client.request("GET", path)
        for line in answer.get("lines", []):
            ctx.stdout.write(f"{line}\n")
        return EXIT_OK
    for event in client.follow(path + "&follow=1", stopped=ctx.stopped()):
        lines = event.get("lines")
        if isinstance(lines, list):
            if lines:
                ctx.stdout.write("\n".join(str(line) for line in lines) + "\n")
        elif "line" in event:  # a supervisor from before batches
            ctx.stdout.write(f"{event['line']}\n")
        elif isinstance(event.get("skipped"), dict):
            ctx.stdout.flush()
            ctx.stderr.write(_skipped(args.name, event["skipped"].get("bytes")) + "\n")
            ctx.stderr.flush()
        ctx.stdout.flush()
    return ctx.stream_ended()  # follow() ends only when corral stopped


def _skipped(name: str, size: object) -> str:
    what = f"skipped {size} bytes" if isinstance(size, int) else "may have skipped records"
    return (f"corral: {what} of {name}'s log: rotated away before they could be read "
            "(raise logs.max_bytes or logs.keep to keep more)")
