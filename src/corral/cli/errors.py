"""The CLI's exit codes and errors.  LEAF: the stdlib and :mod:`corral.errors` only.

Every failure a command reports is a :class:`CliError`; :func:`corral.cli.main.run` is the
only place that turns one into ``corral: <message>`` on stderr and its ``exit_code``::

    CliError                  exit  the request was refused or failed, or "not running"
    ├── UsageError             100  the command line is wrong
    ├── UnreachableError       111  nothing accepts connections on api.sock
    │   └── RemoteUnreachableError  nor at a remote's address (or TLS failed)
    ├── UntrustedServerError   111  a remote's certificate does not chain to the pinned CA
    ├── ApiError                 1  the API answered 4xx/5xx (its code, message, problems)
    └── ProtocolError            1  the answer is not HTTP/JSON, or the connection dropped
"""

from __future__ import annotations

import os

from corral.errors import CorralError

#: Exit codes (the contract scripts rely on).
EXIT_OK = 0
EXIT_FAILED = 1  # the request was refused or failed (API 4xx/5xx), or "not running"
EXIT_USAGE = 100  # bad command line
EXIT_UNREACHABLE = 111  # no supervisor answers on api.sock (or at the remote address)
EXIT_INTERRUPTED = 130  # Ctrl-C


class CliError(CorralError):
    """A failure the CLI reports as one line (plus ``problems``, one per line) and an exit code."""

    code = "cli_error"
    exit_code = EXIT_FAILED

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


class UsageError(CliError):
    """The command line is wrong (exit 100)."""

    code = "usage"
    exit_code = EXIT_USAGE


class UnreachableError(CliError):
    """No supervisor accepts connections on the socket (exit 111)."""

    code = "unreachable"
    exit_code = EXIT_UNREACHABLE

    def __init__(self, socket_path: str, reason: str) -> None:
        state_dir = os.path.dirname(socket_path) or "."
        shown = shell_quote(state_dir)
        super().__init__(f"cannot reach a supervisor at {state_dir} ({reason}); "
                         f"start one with: corral sup run --state-dir {shown}")
        self.socket_path = socket_path
        self.reason = reason


class RemoteUnreachableError(UnreachableError):
    """No supervisor accepts connections (or TLS) at a remote's address (exit 111).

    ``host`` is the address dialled, ``name`` and ``path`` the remote and its auth file.
    """

    def __init__(self, host: str, name: str, path: str, reason: str) -> None:
        CliError.__init__(self, f"cannot reach the supervisor at {host} ({reason}); "
                                f"remote {name!r} from {path}")
        self.socket_path = ""
        self.reason = reason


class UntrustedServerError(CliError):
    """The server's certificate does not chain to the pinned CA: refuse to talk (exit 111)."""

    code = "untrusted_server"
    exit_code = EXIT_UNREACHABLE


class ApiError(CliError):
    """The API answered 4xx/5xx; ``code``/``message``/``problems`` come from its error body."""

    def __init__(self, status: int, code: str, message: str,
                 problems: list[str] | None = None) -> None:
        super().__init__(message, problems)
        self.status = status
        self.code = code


class ProtocolError(CliError):
    """The answer was not the HTTP/JSON the CLI expects, or the connection dropped mid-way."""

    code = "protocol_error"


def shell_quote(text: str) -> str:
    """Quote a path for a shell command line only when it needs it."""
    if text and all(ch.isalnum() or ch in "/._-+:@%=," for ch in text):
        return text
    return "'" + text.replace("'", "'\"'\"'") + "'"
