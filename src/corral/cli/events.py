"""``corral events [-f] [--service NAME] [--json] [-n N]``: the supervisor's state changes.

Human lines read ``2026-11-21 23:59:01.123 web[0] exit up->backoff exited with code 1`` (time
in UTC, as the server stamps it); ``--json`` prints each event object on one line (JSON Lines).
``-f`` streams ``/v1/events?follow=1`` (with ``n`` only when ``-n`` is given); events already
printed (same or lower ``seq``) are skipped.
"""

from __future__ import annotations

import argparse
import json

from corral.cli.common import (
    EXIT_OK,
    CliError,
    Context,
    add_parser,
    non_negative_int,
    quote_segment,
)
from corral.cli.render import event_line

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~2 ms at start-up
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

    from corral.cli.common import Json

DEFAULT_EVENTS = 50


def register(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``events``."""
    p = add_parser(subparsers, "events", "show or follow state changes",
                   "Print the supervisor's recent events (loads, spawns, exits, restarts,\n"
                   "state changes), oldest first; with -f keep printing new ones.",
                   """
  corral events
  corral events --service web -n 10
  corral events -f
  corral events -f --json | jq 'select(.kind == "exit")'""", parents)
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new events")
    p.add_argument("--service", metavar="NAME", help="only this service's events")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("-n", "--lines", metavar="N", type=non_negative_int, default=None,
                   help=f"how many past events to print (default {DEFAULT_EVENTS}; "
                        "with -f: none unless given)")
    p.set_defaults(handler=cmd_events)


def cmd_events(args: argparse.Namespace, ctx: Context) -> int:
    """Print past events, or follow the stream."""
    query = []
    if args.follow:
        query.append("follow=1")
    if args.lines is not None or not args.follow:
        query.append(f"n={args.lines if args.lines is not None else DEFAULT_EVENTS}")
    if args.service:
        query.append(f"service={quote_segment(args.service)}")
    path = "/v1/events?" + "&".join(query)
    client = ctx.client()
    if not args.follow:
        _, answer = client.request("GET", path)
        _print(ctx, answer.get("events", []), args.json, follow=False)
        return EXIT_OK
    _print(ctx, client.stream(path), args.json, follow=True)
    raise CliError("the supervisor ended the event stream (is it restarting? "
                   "check: corral sup status)")


def _print(ctx: Context, events: Iterable[Json], as_json: bool, follow: bool) -> None:
    last_seq = -1
    for event in events:
        seq = event.get("seq")
        if isinstance(seq, int):
            if seq <= last_seq:
                continue
            last_seq = seq
        ctx.out(json.dumps(event) if as_json else event_line(event, ctx.colour))
        if follow:
            ctx.stdout.flush()
