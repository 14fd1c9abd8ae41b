"""``corral events [-f] [--service NAME] [--json] [-n N]``: the supervisor's state changes.

Human lines read ``2026-11-21 23:59:01.123 web[0] exit up->backoff exited with code 1`` (time
in UTC, as the server stamps it); ``--json`` prints each event object on one line (JSON Lines).
``-f`` streams ``/v1/events?follow=1`` with ``n=0`` unless ``-n`` is given (no history), and
goes on across supervisor restarts: it reconnects asking for the events after the last
``seq`` it printed (``seq`` only grows within a state directory), so none is printed twice;
events the supervisor could no longer give are announced on stderr.
"""

from __future__ import annotations

import argparse
import json

from corral.cli.common import CommandContext, add_parser, non_negative_int, quote_segment
from corral.cli.errors import EXIT_OK
from corral.cli.render import event_line

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing slows every command's start
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

    from corral.cli.http import Json

DEFAULT_EVENTS = 50


def register(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``events``."""
    p = add_parser(subparsers, "events", "show or follow state changes",
                   "Print the supervisor's recent events (loads, spawns, exits, restarts,\n"
                   "state changes), oldest first. With -f, print only new ones (and the\n"
                   "last N with -n), across supervisor restarts, none twice.",
                   """
  corral events
  corral events --service web -n 10
  corral events -f
  corral events -f --json | jq 'select(.kind == "exit")'""", parents)
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new events, across supervisor restarts, "
                   "until corral stops")
    p.add_argument("--service", metavar="NAME", help="only this service's events")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("-n", "--lines", metavar="N", type=non_negative_int, default=None,
                   help=f"how many past events to print (default {DEFAULT_EVENTS}; "
                        "with -f: none unless given)")
    p.set_defaults(handler=cmd_events)


def cmd_events(args: argparse.Namespace, ctx: CommandContext) -> int:
    """Print past events, or follow the stream."""
    past = args.lines
    if past is None:
        past = 0 if args.follow else DEFAULT_EVENTS
    query = ["follow=1"] if args.follow else []
    query.append(f"n={past}")
    if args.service:
        query.append(f"service={quote_segment(args.service)}")
    path = "/v1/events?" + "&".join(query)
    client = ctx.client()
    if not args.follow:
        _, answer = client.request("GET", path)
        _print(ctx, answer.get("events", []), args.json, follow=False)
        return EXIT_OK
    _print(ctx, client.follow(path, stopped=ctx.stopped()), args.json, follow=True)
    return ctx.stream_ended()  # follow() ends only when corral stopped


def _print(ctx: CommandContext, events: Iterable[Json], as_json: bool, follow: bool) -> None:
    last_seq = -1
    for event in events:
        skipped = event.get("skipped")
        if isinstance(skipped, dict) and "seq" not in event:
            ctx.stdout.flush()
            count = skipped.get("events")
            why = skipped.get("reason") or "no longer kept by the supervisor"
            if isinstance(count, int):
                ctx.stderr.write(f"corral: {count} events missing here: {why}\n")
            else:
                ctx.stderr.write(f"corral: events may be missing here: {why}\n")
            ctx.stderr.flush()
            last_seq = -1  # what comes next is new, whatever its number
            continue
        seq = event.get("seq")
        if isinstance(seq, int):
            if seq <= last_seq:
                continue
            last_seq = seq
        ctx.out(json.dumps(event) if as_json else event_line(event, ctx.colour))
        if follow:
            ctx.stdout.flush()
