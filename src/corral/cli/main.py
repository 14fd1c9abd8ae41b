"""``corral``: the argparse tree, dispatch, and the one place where errors become exit codes.

Exit codes: 0 ok; 1 the request was refused or failed (API 4xx/5xx), or "not running";
100 usage error; 111 no supervisor answers on ``api.sock``; 130 interrupted.  Every failure
prints one line ``corral: <message>`` to stderr (then, for a spec with several problems, one
line per problem); no traceback reaches the user unless ``CORRAL_DEBUG=1``.

Each verb lives in its own module ``corral.cli.<verb>`` exposing
``register(subparsers, parents)``, which adds its parser and sets ``handler`` (a function
``(args, ctx) -> int``) with ``set_defaults``.  Adding a verb is one line in :data:`VERBS`.

Start-up cost matters (``corral svc status`` should take < 50 ms): this module and the verb
modules import only ``argparse``, ``json``, ``socket``, ``os``, ``sys`` and stdlib-only corral
leaves at import time.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from corral.cli.common import CommandContext, Parser, common_options
from corral.cli.errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    UsageError,
)
from corral.errors import CorralError

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing slows every command's start
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import TextIO

#: Verb modules under ``corral.cli`` and their one-line help, in ``corral --help`` order.
#: Adding a verb is one line here plus its module (which repeats the help in its own parser).
VERBS = {
    "sup": "run and control the supervisor",
    "svc": "load, control and inspect services",
    "logs": "show or follow a service's output",
    "events": "show or follow state changes",
    "target": "get, plan and set the whole desired state",
    "print-auth": "print a client auth file for remote access",
    "secret": "store secrets used as ${NAME} in specs",
    "resource": "upload and manage files placed in run dirs",
    "export": "print the target as another tool's files",
    "census": "show the members of every service group",
    "config": "apply and show service groups' config",
}
_GLOBAL_OPTIONS_WITH_VALUE = ("--state-dir", "--override-name", "--remote")

DESCRIPTION = """\
corral keeps a host's processes running: a launcher owns the processes, a supervisor decides
what runs, and this command talks to the supervisor's API on <state-dir>/api.sock."""

EXAMPLES = """\
Examples:
  corral sup run                         run a launcher + supervisor in the foreground
  corral svc load web -- python -m http.server 8000
  corral svc status                      a table of every service
  corral logs web -f                     follow a service's output
  corral events -f                       follow state changes
  corral --remote web1 svc status        the same, on another host (see: corral print-auth)

Exit codes: 0 ok, 1 refused/failed/not running, 100 usage error, 111 no supervisor answers."""


def build_parser(only: str | None = None) -> Parser:
    """The argparse tree: every verb in full when ``only`` is None, else just that one.

    The other verbs get a placeholder parser (so ``corral --help`` and "invalid choice" errors
    still list them) without importing their modules: building every sub-command costs a few
    ms of argparse and gettext work that ``corral svc status`` does not need.
    """
    common = common_options()
    parser = Parser(prog="corral", description=DESCRIPTION, epilog=EXAMPLES, parents=[common])
    from corral import __version__

    parser.add_argument("--version", action="version", version=f"corral {__version__}")
    subparsers = parser.add_subparsers(dest="verb", metavar="COMMAND", required=True,
                                       parser_class=Parser)
    for name, help_ in VERBS.items():
        if only is None or name == only:
            module = name.replace("-", "_")  # print-auth lives in corral.cli.print_auth
            importlib.import_module(f"corral.cli.{module}").register(subparsers, [common])
        else:
            subparsers.add_parser(name, help=help_, add_help=False)
    return parser


def _find_verb(argv: Sequence[str]) -> str | None:
    """The verb a command line names (skipping global options' values), or None."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in _GLOBAL_OPTIONS_WITH_VALUE:
            skip = True
        elif not arg.startswith("-"):
            return arg if arg in VERBS else None
    return None


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """Parse a command line; a command after a standalone ``--`` lands in ``args.argv_tail``.

    Raises :class:`UsageError` for anything argparse rejects, and for ``--`` given to a
    command that takes no trailing command.
    """
    argv = list(argv)
    tail: list[str] | None = None
    if "--" in argv:
        cut = argv.index("--")
        argv, tail = argv[:cut], argv[cut + 1:]
    try:
        args = build_parser(_find_verb(argv) or "").parse_args(argv)
    except UsageError:
        args = None  # let the full tree give the authoritative message (or succeed)
    if args is None or not hasattr(args, "handler"):
        args = build_parser().parse_args(argv)
    if tail is not None and not getattr(args, "takes_tail", False):
        raise UsageError(f"unexpected arguments after --: {' '.join(tail)}")
    args.argv_tail = tail
    return args


def run(argv: Sequence[str], stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """Run one command line and return its exit code; never raises unless ``CORRAL_DEBUG`` is set.

    ``stdout``/``stderr`` default to the process's streams; tests pass ``StringIO``.
    """
    err = stderr if stderr is not None else sys.stderr
    try:
        args = parse(argv)
        ctx = CommandContext(args, stdout, stderr)
        code: int = args.handler(args, ctx)
        ctx.stdout.flush()
        return code
    except SystemExit as exc:  # --help and --version
        return exc.code if isinstance(exc.code, int) else EXIT_OK if exc.code is None else EXIT_USAGE
    except CliError as exc:
        _report(err, exc.message, exc.problems)
        return exc.exit_code
    except CorralError as exc:
        _report(err, exc.message, getattr(exc, "problems", []))
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _silence_stdout(stdout)
        return EXIT_OK
    except Exception as exc:
        if os.environ.get("CORRAL_DEBUG"):
            raise
        _report(err, f"internal error: {type(exc).__name__}: {exc} "
                     "(run with CORRAL_DEBUG=1 for details)", [])
        return EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point: ``corral = corral.cli.main:main``."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")
    return run(sys.argv[1:] if argv is None else argv)


def _report(err: TextIO, message: str, problems: Sequence[str]) -> None:
    """Print ``corral: <message>`` and then each problem that adds something, indented.

    A message that already lists the problems ("2 problems in t.yaml:" and one line each)
    is cut to its first line, so that each problem is printed once.
    """
    lines = message.splitlines()
    if len(lines) > 1 and problems and lines[1:] == list(problems):
        message = lines[0]
    try:
        err.write(f"corral: {message}\n")
        for problem in problems:
            if problem != message:
                err.write(f"  {problem}\n")
        err.flush()
    except OSError:
        pass


def _silence_stdout(stdout: TextIO | None) -> None:
    """After EPIPE, point fd 1 at /dev/null so the interpreter's final flush stays quiet."""
    if stdout is not None:
        return
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
