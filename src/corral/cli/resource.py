"""``corral resource ls | up FILE | down ID OUT | rm ID...``: the content-addressed blob store.

A resource's id is the sha256 of its bytes.  A process lists ``resources: [{id, file}]`` and
gets each one placed (hard-linked, read-only) in its fresh working directory before its
``before`` script runs.

``up`` streams the file (never whole in memory) and prints the id alone on stdout, so
``ID=$(corral resource up bundle.tar.gz)`` works; on a terminal it shows progress on stderr.
``down`` streams to a temp file beside OUT, checks the sha256 against the id, and only then
renames it into place (``-`` writes to stdout, checked at the end).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from corral import atomic
from corral.cli.common import CommandContext, add_parser, quote_segment
from corral.cli.errors import EXIT_OK, CliError, UsageError
from corral.cli.render import table

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing slows every command's start
if TYPE_CHECKING:
    from typing import Any, BinaryIO

    from corral.cli.http import Json

EMPTY = "no resources (upload one with: corral resource up FILE)"


def register(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``resource`` and its sub-commands."""
    res = add_parser(subparsers, "resource", "upload and manage files placed in run dirs",
                     "Store files by content (the id is their sha256). A process lists\n"
                     "resources: [{id: ID, file: NAME}] and finds each one, read-only, in\n"
                     "its fresh working directory before its before script runs.",
                     """
  ID=$(corral resource up bundle.tar.gz)
  corral resource ls
  corral resource down "$ID" copy.tar.gz
  corral resource rm "$ID\"""", parents)
    verbs = res.add_subparsers(dest="resource_verb", metavar="SUBCOMMAND", required=True)

    p = add_parser(verbs, "ls", "list resources",
                   "Every resource: id, original name, size, upload time, and the processes\n"
                   "that list it.", "\n  corral resource ls\n  corral resource ls --json",
                   parents)
    p.add_argument("--json", action="store_true",
                   help="print [{id, name, size, created, used_by}, ...]")
    p.set_defaults(handler=cmd_ls)

    p = add_parser(verbs, "up", "upload a file; prints its id",
                   "Stream FILE (- for stdin) to the store and print its id (the sha256 of\n"
                   "its bytes). Uploading the same bytes again gives the same id and stores\n"
                   "nothing new.",
                   """
  corral resource up bundle.tar.gz
  ID=$(corral resource up build/app.tar.gz --name app-1.4.tar.gz)
  tar -cz app/ | corral resource up - --name app.tar.gz""", parents)
    p.add_argument("file", metavar="FILE", help="the file to upload, or - for stdin")
    p.add_argument("--name", metavar="N",
                   help="name to record (default: FILE's base name; 'stdin' for -)")
    p.add_argument("--json", action="store_true",
                   help="print {id, name, size, created, used_by} instead of the id")
    p.set_defaults(handler=cmd_up)

    p = add_parser(verbs, "down", "download a resource",
                   "Write resource ID to OUT (a file, a directory to write it under its\n"
                   "original name, or - for stdout). The bytes are checked against the id;\n"
                   "a file is written beside OUT and renamed only once complete and checked.",
                   """
  corral resource down 3fa9...c1 bundle.tar.gz
  corral resource down 3fa9...c1 .
  corral resource down 3fa9...c1 - | tar -tz""", parents)
    p.add_argument("id", metavar="ID", help="resource id (64 hex digits, see: resource ls)")
    p.add_argument("out", metavar="OUT", help="file or directory to write, or - for stdout")
    p.set_defaults(handler=cmd_down)

    p = add_parser(verbs, "rm", "remove resources",
                   "Remove every ID. All or nothing: an unknown id, or one a process still\n"
                   "lists (the error names them), removes none. Files already placed in\n"
                   "working directories stay.",
                   "\n  corral resource rm 3fa9...c1\n  corral resource rm ID1 ID2", parents)
    p.add_argument("ids", metavar="ID", nargs="+", help="resource id")
    p.set_defaults(handler=cmd_rm)


def human_size(n: Json) -> str:
    """``532B``, ``12.0K``, ``1.5M``, ``2.0G`` (binary units); ``-`` when unknown."""
    if not isinstance(n, int):
        return "-"
    size = float(n)
    for unit in ("B", "K", "M", "G"):
        if size < 1024 or unit == "T":
            return f"{size:.0f}{unit}" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1024
    return f"{size:.1f}T"


def cmd_ls(args: argparse.Namespace, ctx: CommandContext) -> int:
    """``GET /v1/resources``."""
    _, answer = ctx.client().request("GET", "/v1/resources")
    resources: list[Json] = answer.get("resources", [])
    if args.json:
        ctx.out(json.dumps(resources, indent=2))
    elif not resources:
        ctx.out(EMPTY)
    else:
        rows = [[str(r.get("id")), str(r.get("name")), human_size(r.get("size")),
                 str(r.get("created", "-"))[:19].replace("T", " "),
                 ", ".join(r.get("used_by") or []) or "-"] for r in resources]
        for line in table(["ID", "NAME", "SIZE", "CREATED (UTC)", "USED BY"], rows,
                          ctx.colour):
            ctx.out(line)
    return EXIT_OK


class _Progress:
    """``name  42%  430.1M / 1.0G`` rewritten in place on a terminal's stderr."""

    def __init__(self, ctx: CommandContext, name: str, total: int | None) -> None:
        isatty = getattr(ctx.stderr, "isatty", None)
        self.on = bool(isatty and isatty())
        self.ctx, self.name, self.total = ctx, name, total
        self.shown = -1

    def __call__(self, sent: int) -> None:
        if not self.on:
            return
        step = sent * 100 // self.total if self.total else sent >> 24  # every 16 MiB
        if step == self.shown:
            return
        self.shown = step
        of = f"{step}%  {human_size(sent)} / {human_size(self.total)}" if self.total \
            else human_size(sent)
        self.ctx.stderr.write(f"\r{self.name}  {of}\033[K")
        self.ctx.stderr.flush()

    def done(self) -> None:
        if self.on and self.shown >= 0:
            self.ctx.stderr.write("\r\033[K")
            self.ctx.stderr.flush()


def cmd_up(args: argparse.Namespace, ctx: CommandContext) -> int:
    """``POST /v1/resources?name=N`` with the file as the body; prints the id."""
    from corral.cli.transfer import upload

    if args.file == "-":
        name = args.name or "stdin"
        source: BinaryIO = sys.stdin.buffer
        size = None
    else:
        name = args.name or os.path.basename(os.path.normpath(args.file))
        try:
            source = open(args.file, "rb")  # noqa: SIM115 (closed below, after the upload)
            st = os.fstat(source.fileno())
        except OSError as exc:
            raise CliError(f"cannot read {args.file}: {exc.strerror or exc}") from None
        # A FIFO or a device has no length to announce: it is sent chunked.
        size = st.st_size if _is_regular(st.st_mode) else None
    if not name:
        raise UsageError("give the resource a name with --name")
    progress = _Progress(ctx, name, size)
    client = ctx.client()
    try:
        answer = upload(client, f"/v1/resources?name={quote_segment(name)}", source, size,
                        progress)
    except OSError as exc:
        raise CliError(f"cannot read {args.file}: {exc.strerror or exc}") from None
    finally:
        progress.done()
        if source is not sys.stdin.buffer:
            source.close()
    ctx.out(json.dumps(answer, indent=2) if args.json else str(answer.get("id")))
    return EXIT_OK


def _is_regular(mode: int) -> bool:
    import stat

    return stat.S_ISREG(mode)


def _disposition_name(header: str) -> str | None:
    """The file name of a ``Content-Disposition`` header (``filename*=utf-8''...`` first)."""
    from urllib.parse import unquote

    name = None
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key.lower() == "filename*" and value.lower().startswith("utf-8''"):
            return unquote(value[7:])
        if key.lower() == "filename":
            name = value.strip('"')
    return name


def cmd_down(args: argparse.Namespace, ctx: CommandContext) -> int:
    """``GET /v1/resources/{id}`` streamed to OUT (atomically) or stdout, sha256-checked."""
    import hashlib

    from corral.cli.transfer import Download

    hasher = hashlib.sha256()
    with Download(ctx.client(), f"/v1/resources/{quote_segment(args.id)}", timeout=None) as d:
        if args.out == "-":
            ctx.stdout.flush()
            out = sys.stdout.buffer
            for piece in d.pieces():
                hasher.update(piece)
                out.write(piece)
            out.flush()
            _check(hasher.hexdigest(), args.id)
            return EXIT_OK
        target = args.out
        if os.path.isdir(target):
            name = _disposition_name(d.headers.get("content-disposition", ""))
            name = os.path.basename(name or "") or args.id
            target = os.path.join(target, name if name not in (".", "..") else args.id)
        _write_atomically(target, d.pieces(), hasher, args.id)
    return EXIT_OK


def _check(digest: str, expected: str) -> None:
    if digest != expected:
        raise CliError(f"the downloaded bytes do not match id {expected} (their sha256 is "
                       f"{digest}); the store's copy may be damaged")


def _write_atomically(target: str, pieces: Any, hasher: Any, expected: str) -> None:
    """Write ``pieces`` to a temp file beside ``target``; rename it there once checked."""
    try:
        with atomic.replacing(target, 0o644, make_dirs=False) as f:
            for piece in pieces:
                hasher.update(piece)
                f.write(piece)
            _check(hasher.hexdigest(), expected)
    except OSError as exc:
        raise CliError(f"cannot write {target}: {exc.strerror or exc}") from None


def cmd_rm(args: argparse.Namespace, ctx: CommandContext) -> int:
    """``POST /v1/resources/delete`` (all or nothing)."""
    ids = list(dict.fromkeys(args.ids))
    _, answer = ctx.client().request("POST", "/v1/resources/delete", {"ids": ids},
                                     timeout=None)
    ctx.out(f"removed {', '.join(answer.get('removed', ids))}")
    return EXIT_OK
