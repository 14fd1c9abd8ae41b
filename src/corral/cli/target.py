"""``corral target get | plan FILE | set FILE | status``: the declarative desired state.

The file's text goes to the server untouched (``{"yaml": text, "source": FILE}``): the
server parses and validates it, so the CLI needs no YAML parser and every error names the
file, the line and the field.  ``set`` prints the plan, then follows the rollout by polling
``GET /v1/target/status`` until it ends (``--no-wait`` returns at once).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from corral.cli.common import CommandContext, add_parser
from corral.cli.errors import EXIT_OK, CliError

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing slows every command's start
if TYPE_CHECKING:
    from typing import Any

    from corral.cli.http import Json

POLL = 0.25  # seconds between two looks at a running rollout
MARKS = {"added": ("+", "32"), "changed": ("~", "33"), "removed": ("-", "31")}


def register(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``target`` and its sub-commands."""
    target = add_parser(subparsers, "target", "get, plan and set the whole desired state",
                        "The target is every process and service corral keeps running, in one\n"
                        "YAML file (see docs/architecture.md). `svc load/unload` edit the same\n"
                        "target. `set` validates everything before it changes anything, leaves\n"
                        "unchanged processes alone, and replaces changed ones instance by\n"
                        "instance, health-gated (replace: start-first or stop-first).",
                        """
  corral target get > target.yaml
  corral target plan target.yaml
  corral target set target.yaml
  corral target set target.yaml --no-wait && corral target status""", parents)
    verbs = target.add_subparsers(dest="target_verb", metavar="SUBCOMMAND", required=True)

    p = add_parser(verbs, "get", "print the target as YAML",
                   "Print everything loaded, however it got there, as canonical YAML.",
                   "\n  corral target get\n  corral target get > backup.yaml", parents)
    p.add_argument("--json", action="store_true", help="print the API's object")
    p.set_defaults(handler=cmd_get)

    p = add_parser(verbs, "plan", "show what `target set FILE` would change",
                   "Validate FILE and print the processes and services it would add (+),\n"
                   "change (~, with the fields that differ) and remove (-). Nothing changes.",
                   "\n  corral target plan target.yaml\n  corral target plan - < target.yaml",
                   parents)
    p.add_argument("file", metavar="FILE", help="the target's YAML ('-' for stdin)")
    p.add_argument("--json", action="store_true", help="print the list of changes as JSON")
    p.set_defaults(handler=cmd_plan)

    p = add_parser(verbs, "set", "make FILE the desired state",
                   "Validate FILE (on any error nothing changes), print the plan, apply it\n"
                   "and follow the rollout until it ends. Exits 0 once every instance it\n"
                   "added or replaced is running and healthy; exits 1 if one is not, after\n"
                   "putting back everything the rollout replaced (the old version keeps\n"
                   "running, or was restored).",
                   "\n  corral target set target.yaml\n  corral target set target.yaml --no-wait",
                   parents)
    p.add_argument("file", metavar="FILE", help="the target's YAML ('-' for stdin)")
    p.add_argument("--no-wait", action="store_true",
                   help="return once applied; replacements go on (see: corral target status)")
    p.add_argument("--json", action="store_true", help="print the API's answer (and, when "
                   "waiting, the finished rollout) as JSON")
    p.set_defaults(handler=cmd_set)

    p = add_parser(verbs, "status", "show the running (or last) rollout",
                   "Each process being replaced: instances replaced so far, what it is doing,\n"
                   "and for a failed one the reason and the new instance's last log lines.",
                   "\n  corral target status\n  corral target status --json", parents)
    p.add_argument("--json", action="store_true", help="print the API's object")
    p.set_defaults(handler=cmd_status)


def _read(path: str) -> dict[str, str]:
    """The request body for a target file (``-`` = stdin)."""
    try:
        if path == "-":
            return {"yaml": sys.stdin.read(), "source": "<stdin>"}
        with open(path, encoding="utf-8") as f:
            return {"yaml": f.read(), "source": path}
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise CliError(f"{path} is not UTF-8 text") from None


def cmd_get(args: argparse.Namespace, ctx: CommandContext) -> int:
    """``GET /v1/target``: the YAML as it is (so ``get > f; set f`` is a no-op)."""
    _, answer = ctx.client().request("GET", "/v1/target")
    if args.json:
        ctx.out(json.dumps(answer, indent=2))
    else:
        ctx.stdout.write(answer.get("yaml") or "{}\n")
    return EXIT_OK


def plan_lines(changes: list[Json], colour: bool) -> list[str]:
    """``+ process web`` / ``~ process api: env.PORT, command`` / ``- service old``."""
    from corral.cli.render import paint

    if not changes:
        return ["no changes"]
    lines = []
    for change in changes:
        mark, sgr = MARKS.get(change.get("action"), ("?", None))
        text = f"{mark} {change.get('kind')} {change.get('name')}"
        fields = change.get("fields") or []
        if fields:
            text += ": " + ", ".join(fields)
            if change.get("replaces"):
                text += " (replaced, health-gated)"
        lines.append(paint(text, sgr, colour))
    return lines


def cmd_plan(args: argparse.Namespace, ctx: CommandContext) -> int:
    """``POST /v1/target/plan``."""
    _, answer = ctx.client().request("POST", "/v1/target/plan", _read(args.file))
    if args.json:
        ctx.out(json.dumps(answer.get("changes", []), indent=2))
    else:
        for line in plan_lines(answer.get("changes", []), ctx.colour):
            ctx.out(line)
    return EXIT_OK


def cmd_set(args: argparse.Namespace, ctx: CommandContext) -> int:
    """``PUT /v1/target``, then follow ``/v1/target/status`` until the rollout ends."""
    client = ctx.client()
    _, answer = client.request("PUT", "/v1/target", _read(args.file), timeout=None)
    rollout = answer.get("rollout")
    if not args.json:
        for line in plan_lines(answer.get("changes", []), ctx.colour):
            ctx.out(line)
    if answer.get("result") != "applying" or args.no_wait:
        if args.json:
            ctx.out(json.dumps(answer, indent=2))
        elif answer.get("result") == "applying":
            ctx.out(f"rollout {rollout.get('id')} running (see: corral target status)")
        return EXIT_OK
    current = follow(client, rollout, ctx, quiet=args.json)
    if args.json:
        ctx.out(json.dumps({**answer, "rollout": current}, indent=2))
    return verdict(current, ctx, quiet=args.json)


def follow(client: Any, rollout: Json, ctx: CommandContext, quiet: bool = False) -> Json:
    """Poll ``/v1/target/status`` until ``rollout`` ends, printing each new step of its
    progress (unless ``quiet``); returns its final record."""
    seen: set[str] = set()
    while True:
        _, status = client.request("GET", "/v1/target/status")
        current = status.get("rollout") or {}
        if current.get("id") != rollout.get("id"):
            raise CliError("the rollout was replaced by another one (see: corral target status)")
        for step in current.get("steps", []):
            line = f"{step.get('name')}: {step.get('detail')}"
            if line not in seen and not quiet:
                seen.add(line)
                ctx.out(line)
                ctx.stdout.flush()
        if not status.get("running"):
            return current
        time.sleep(POLL)  # polling the server's status, not synchronising a test


def verdict(rollout: Json, ctx: CommandContext, quiet: bool = False) -> int:
    """Exit 0 for a finished rollout, raise for a failed one (with the last log lines and
    what it left running: the old version kept, or restored)."""
    if rollout.get("phase") == "failed":
        lines = []
        for step in rollout.get("steps", []):
            if step.get("phase") == "failed" and step.get("last_lines"):
                lines += [f"last log lines of {step.get('name')}:",
                          *("  " + ln for ln in step["last_lines"])]
        outcome = rollout.get("outcome")
        raise CliError(f"rollout {rollout.get('id')} failed: {rollout.get('reason')}"
                       + (f"; {outcome}" if outcome else ""), lines or None)
    if not quiet:
        ctx.out(f"rollout {rollout.get('id')} {rollout.get('phase')}")
    return EXIT_OK


def cmd_status(args: argparse.Namespace, ctx: CommandContext) -> int:
    """``GET /v1/target/status``."""
    _, status = ctx.client().request("GET", "/v1/target/status")
    if args.json:
        ctx.out(json.dumps(status, indent=2))
        return EXIT_OK
    rollout = status.get("rollout")
    if not rollout:
        ctx.out("no rollout yet")
        return EXIT_OK
    ctx.out(f"rollout {rollout.get('id')} ({rollout.get('cause')}): {rollout.get('phase')}, "
            f"started {rollout.get('started_at')}")
    for step in rollout.get("steps", []):
        ctx.out(f"  {step.get('name')}: {step.get('replaced')}/{step.get('instances')} "
                f"replaced, {step.get('phase')}: {step.get('detail')}")
        for line in step.get("last_lines") or []:
            ctx.out(f"    {line}")
    return EXIT_OK
