"""What every verb module shares: the argument parser, the per-run context, and small helpers.

Contract: importing this module costs only ``argparse``, ``os``, ``sys`` and the leaf
modules :mod:`corral.cli.errors` and ``corral.protocol.paths`` (which are stdlib-only).  Verb
modules raise :class:`~corral.cli.errors.CliError` subclasses; :func:`corral.cli.main.main`
is the only place that turns them into ``corral: <message>`` on stderr and an exit code.
:meth:`CommandContext.client` imports the HTTP client only when a command talks to a
supervisor.
"""

from __future__ import annotations

import argparse
import os
import sys

from corral.cli.errors import EXIT_OK, UsageError
from corral.protocol import binding
from corral.protocol.paths import api_socket, resolve_state_dir

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing slows every command's start
if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path
    from typing import Any, NoReturn, TextIO

    from corral.cli.client import Client


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and epilogs laid out verbatim; sized without importing ``shutil``.

    argparse's default formatter imports ``shutil`` (and with it ``bz2``, ``lzma``...) for
    every ``add_argument``, which every command would pay at start; ``os.get_terminal_size``
    gives the same answer.
    """

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        if width is None:
            width = _terminal_columns() - 2
        super().__init__(prog, indent_increment, max_help_position, width)


def _terminal_columns() -> int:
    """``$COLUMNS``, else the terminal's width, else 80 (what ``shutil`` would answer)."""
    try:
        return int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        pass
    try:
        return os.get_terminal_size(1).columns or 80
    except (ValueError, OSError):
        return 80


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors raise :class:`UsageError` instead of exiting 2."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", Formatter)
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        """Raise a one-line usage error that points at this (sub)command's help."""
        raise UsageError(f"{message} (see: {self.prog} --help)")


def add_parser(subparsers: Any, name: str, help_: str, description: str,
               examples: str, parents: list[argparse.ArgumentParser],
               usage: str | None = None) -> Parser:
    """Add a sub-command with a description and an ``Examples:`` epilog, laid out verbatim."""
    parser: Parser = subparsers.add_parser(
        name, help=help_, description=description, usage=usage,
        epilog="Examples:\n" + examples.strip("\n"), parents=parents)
    return parser


def common_options() -> Parser:
    """Options every command accepts at every level (before or after the verb).

    They default to ``SUPPRESS`` so that a value given at one level is not overwritten by the
    missing value of a deeper level; read them with :meth:`CommandContext.state_dir`.
    """
    common = Parser(add_help=False)
    group = common.add_argument_group("where the supervisor lives")
    group.add_argument("--state-dir", metavar="D", default=argparse.SUPPRESS,
                       help="state directory (default: $CORRAL_HOME, else "
                            "/var/lib/corral/NAME as root, ~/.local/state/corral/NAME otherwise)")
    group.add_argument("--override-name", metavar="N", default=argparse.SUPPRESS,
                       help="instance name used in the default state directory (default: default)")
    group.add_argument("--remote", metavar="NAME", default=argparse.SUPPRESS,
                       help="act on a remote supervisor over HTTPS, as described by "
                            "~/.config/corral/auth/NAME.yaml (from corral print-auth) or a "
                            "path to such a file (default: $CORRAL_REMOTE; '' for local)")
    return common


def non_negative_int(text: str) -> int:
    """argparse ``type=``: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative")
    return value


def split_host_port(text: str, what: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[V6]:PORT`` for IPv6); raise :class:`UsageError` naming ``what``."""
    try:
        return binding.split(text)
    except ValueError as exc:
        raise UsageError(f"{what} {text!r}: {exc}") from None


def quote_segment(text: str) -> str:
    """Percent-encode one URL path segment (or query value); unreserved characters pass."""
    safe = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~"
    return "".join(ch if ch in safe else "".join(f"%{b:02X}" for b in ch.encode())
                   for ch in text)


class CommandContext:
    """What a command handler gets besides its arguments: streams, state dir, a client.

    ``stdout``/``stderr`` are the streams to write to (tests pass ``StringIO``); ``colour``
    is true only when stdout is a terminal, ``NO_COLOR`` is unset or empty and ``TERM`` is
    not ``dumb``.
    """

    def __init__(self, args: argparse.Namespace, stdout: TextIO | None = None,
                 stderr: TextIO | None = None) -> None:
        self.args = args
        self.stdout = stdout if stdout is not None else sys.stdout
        self.stderr = stderr if stderr is not None else sys.stderr
        self._state_dir: Path | None = None
        isatty = getattr(self.stdout, "isatty", None)
        self.colour = bool(isatty and isatty() and not os.environ.get("NO_COLOR")
                           and os.environ.get("TERM") != "dumb")

    @property
    def state_dir(self) -> Path:
        """The resolved state directory (``--state-dir``, ``$CORRAL_HOME``, or the default)."""
        if self._state_dir is None:
            self._state_dir = resolve_state_dir(getattr(self.args, "state_dir", None),
                                                getattr(self.args, "override_name", None))
        return self._state_dir

    @property
    def remote(self) -> str | None:
        """The remote to act on: ``--remote``, else ``$CORRAL_REMOTE`` unless ``--state-dir``
        was given (an explicit local choice beats the environment); ``''`` means local.

        Raises :class:`UsageError` when both ``--remote`` and ``--state-dir`` are given.
        """
        name: str | None = getattr(self.args, "remote", None)
        if name is not None:
            if name and getattr(self.args, "state_dir", None):
                raise UsageError("--remote and --state-dir name different supervisors; "
                                 "give one of them")
            return name or None
        if getattr(self.args, "state_dir", None):
            return None
        return os.environ.get("CORRAL_REMOTE") or None

    def stopped(self) -> Callable[[], bool] | None:
        """For :meth:`Client.follow`: whether the local corral has stopped (no launcher
        holds its state directory); None for a remote, which cannot be seen from here."""
        if self.remote:
            return None
        from corral.cli import statelock

        state_dir = self.state_dir
        return lambda: statelock.held(state_dir) is False

    def stream_ended(self) -> int:
        """End a followed stream because corral stopped: say so, exit 0."""
        self.stdout.flush()
        self.stderr.write(f"corral on {self.state_dir} stopped; the stream ends here\n")
        return EXIT_OK

    def client(self) -> Client:
        """A client for the remote named by :attr:`remote`, else for ``api.sock``."""
        from corral.cli.client import Client

        remote = self.remote
        if remote:
            from corral.cli.remote import RemoteAuth

            return Client.over_tls(RemoteAuth.load(remote))
        return Client(str(api_socket(self.state_dir)))

    def out(self, line: str = "") -> None:
        """Write one line to stdout."""
        self.stdout.write(line + "\n")
