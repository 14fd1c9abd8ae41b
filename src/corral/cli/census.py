"""``corral census [SERVICE_GROUP]``: every member of every service group.

The census comes from the supervisor (``GET /v1/census``): with ``sup run --cluster``,
every member on every host of the etcd cluster; without, this host's own.  A member is
``alive`` while its supervisor keeps its lease; ``stale`` while this supervisor's link to
etcd is down (the last known state).
"""

from __future__ import annotations

import argparse
import json
from urllib.parse import quote

from corral.cli.common import CommandContext, add_parser
from corral.cli.errors import EXIT_OK
from corral.cli.render import state_cell, table

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing slows every command's start
if TYPE_CHECKING:
    from typing import Any

HEADER = ("GROUP", "MEMBER", "HOST", "ADDRESS", "STATE", "HEALTH", "INSTANCES", "CONFIG",
          "ALIVE")


def register(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``census``."""
    p = add_parser(subparsers, "census", "show the members of every service group",
                   "Show every member of every service group (<process>.<cluster group>):\n"
                   "its host, advertised address, state, health, instances up, the group\n"
                   "config version it runs, and whether it is alive. With `sup run --cluster`\n"
                   "this is every host of the etcd cluster; without, this host's groups.\n"
                   "While the link to etcd is down, members are the last known ones, marked\n"
                   "stale.",
                   """
  corral census
  corral census redis.default
  corral census --json | jq '.groups["web.prod"][].address'""", parents)
    p.add_argument("service_group", nargs="?", metavar="SERVICE_GROUP",
                   help="only this service group (e.g. redis.default)")
    p.add_argument("--json", action="store_true", help="print the API's JSON object")
    p.set_defaults(handler=cmd_census)


def cmd_census(args: argparse.Namespace, ctx: CommandContext) -> int:
    """``GET /v1/census[/SERVICE_GROUP]``."""
    path = "/v1/census" + (f"/{quote(args.service_group, safe='')}" if args.service_group
                           else "")
    _, census = ctx.client().request("GET", path)
    if args.json:
        ctx.out(json.dumps(census, indent=2))
        return EXIT_OK
    for line in census_lines(census, ctx.colour):
        ctx.out(line)
    return EXIT_OK


def census_lines(census: Any, colour: bool) -> list[str]:
    """One row per member; a note when the census is stale, and its problems."""
    rows = []
    for group, members in (census.get("groups") or {}).items():
        for member in members:
            instances = member.get("instances") or []
            up = sum(1 for i in instances if i.get("state") == "up")
            alive = "stale" if member.get("stale") else "alive" if member.get("alive") \
                else "no"
            name = str(member.get("member")) + (" *" if member.get("local") else "")
            rows.append([group, name, str(member.get("host")), str(member.get("address")),
                         state_cell(member.get("state")), str(member.get("health")),
                         f"{up}/{len(instances)}", str(member.get("config_version")),
                         alive])
    lines = ["no service group has a member"] if not rows else table(HEADER, rows, colour)
    if census.get("stale"):
        lines.append("the link to the cluster is down: members are the last known ones "
                     "(see corral sup status)")
    lines += [f"problem: {p}" for p in census.get("problems") or []]
    return lines
