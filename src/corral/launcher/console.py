"""The launcher's own output: its messages, the supervisor's, and its stdout.  STDLIB ONLY.

Everything the launcher says goes to ``<state>/logs/.launcher.log`` (stamped records with
the launcher's pid; the supervisor's own stdout and stderr, which the launcher relays,
with the supervisor's pid) and to the launcher's stderr.  Nothing is ever written to the
launcher's stdout or stderr with a blocking write, and a write there that fails is
dropped, never raised: a closed terminal or a pipe whose reader exited (``sup run | head``)
must not take the launcher, and every service with it, down.  How much was dropped is
written to ``.launcher.log`` (see :class:`corral.launcher.pid1.Launcher`).

``sys.stdout`` and ``sys.stderr`` are replaced by streams that end here, so a ``print``,
a traceback, or Python's own last words all take the same path.
"""

from __future__ import annotations

import io
import os
import sys

from .echo import Echo
from .logfile import LogFile, timestamp

#: The launcher's own log, beside the services' (a name no service can take).
LOG_NAME = ".launcher.log"
LOG_MAX_BYTES = 10 * 1024 * 1024
LOG_KEEP = 2


class Console:
    """The launcher's stdout and stderr (:class:`Echo` each; one when both are the same
    pipe, file or terminal, so their lines never mix) and its log file."""

    def __init__(self) -> None:
        for fd in (1, 2):
            _ensure_open(fd)
        self.stdout = Echo(1, "stdout")
        self.stderr = self.stdout if _same_file(1, 2) else Echo(2, "stderr")
        self.log: LogFile | None = None
        self._prefix = b" %d E " % os.getpid()

    def echoes(self) -> list[Echo]:
        """The distinct descriptors (one or two)."""
        return [self.stdout] if self.stderr is self.stdout else [self.stdout, self.stderr]

    def open_log(self, path: str) -> LogFile:
        """Also write every message to ``path`` (rotated at 10 MiB, 2 files kept)."""
        self.log = LogFile(path, LOG_MAX_BYTES, LOG_KEEP)
        return self.log

    def say(self, text: str, *, to_stderr: bool = True) -> None:
        """One message (one record per line): to the log file, and to stderr unless
        ``to_stderr`` is False (a message about stderr itself)."""
        data = text.encode(errors="replace").rstrip(b"\n")
        if self.log is not None:
            prefix = timestamp() + self._prefix
            self.log.write([prefix, data.replace(b"\n", b"\n" + prefix), b"\n"])
        if to_stderr:
            self.stderr.write([data, b"\n"], lambda: data.count(b"\n") + 1)

    def install(self) -> None:
        """Route ``sys.stdout`` and ``sys.stderr`` here (once)."""
        if not isinstance(sys.stderr, _Stream):
            sys.stdout = sys.stderr = _Stream(self)


class _Stream(io.TextIOBase):
    """A text stream whose whole lines become :meth:`Console.say` messages."""

    def __init__(self, console: Console) -> None:
        super().__init__()
        self._console = console
        self._buffer = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._buffer += text
        if "\n" in self._buffer:
            lines, _, self._buffer = self._buffer.rpartition("\n")
            try:
                self._console.say(lines)
            except Exception:  # nothing is left to report it on
                pass
        return len(text)

    def flush(self) -> None:
        pass


def _ensure_open(fd: int) -> None:
    """Put /dev/null on ``fd`` if it is closed, so no file the launcher opens later lands
    there and gets service output."""
    try:
        os.fstat(fd)
    except OSError:
        null = os.open(os.devnull, os.O_WRONLY)
        if null != fd:
            os.dup2(null, fd, inheritable=False)
            os.close(null)


def _same_file(a: int, b: int) -> bool:
    try:
        sa, sb = os.fstat(a), os.fstat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)
