"""Output the launcher could not write: log files that stopped taking records, and the
launcher's own stdout and stderr when their reader does not keep up.  STDLIB ONLY.

Each is reported to the supervisor (``OutputDropped``) and said once on the launcher's
other stream; a log file is retried on a timer so that its note of what was dropped is
written soon after there is room, even when no more output comes.  A new supervisor is
told the totals so far (:meth:`DropReports.replay`).
"""

from __future__ import annotations

import selectors
import sys
from typing import TYPE_CHECKING

from corral.protocol import messages as m

from .echo import Echo
from .logfile import DropReport, LogFile, rfc3339
from .server import Message

if TYPE_CHECKING:
    from .pid1 import Launcher

# Records dropped on the launcher's stdout or stderr are reported at once, then at most
# this often while the drops go on (a slow reader would otherwise fill the log with it).
ECHO_REPORT_INTERVAL = 10.0
# A log file that stopped taking output is tried again this often even when no output
# comes, so that its record of what was dropped is written soon after there is room.
LOG_RETRY_INTERVAL = 1.0


class DropReports:
    """Reports and retries of dropped output, for one launcher."""

    def __init__(self, launcher: Launcher) -> None:
        self._launcher = launcher
        self._watched: set[int] = set()  # echo fds waited on for writability

    def resume(self) -> None:
        """After an upgrade in place: wait on echoes with records queued, and retry the
        log files that were dropping (their timers did not survive the exec)."""
        for echo in self._launcher.console.echoes():
            if echo.buffer:
                self.watch_echo(echo)
        for log in self._all_logs():
            if log.drop_since is not None:
                self.log_dropping(log, DropReport(True, log.dropped_bytes, log.dropped_records,
                                                  log.drop_since, log.drop_last, log.drop_error))
    def log_dropping(self, log: LogFile, report: DropReport) -> None:
        """A log file stopped taking output, or takes it again (its own record says so)."""
        if report.dropping:
            print(f"corral-launcher: cannot write {log.path}: {report.error}; dropping output "
                  "until it works again", file=sys.stderr)
            self._launcher.reactor.call_later(LOG_RETRY_INTERVAL, lambda: self._retry_log(log))
        else:
            print(f"corral-launcher: writing {log.path} again; dropped {report.bytes} bytes "
                  f"({report.records} records) of output from {rfc3339(report.since).decode()} "
                  f"to {rfc3339(report.until).decode()}: {report.error}", file=sys.stderr)
        self._launcher.keeper.send(_log_drop_message(log, report))

    def _retry_log(self, log: LogFile) -> None:
        if not log.retry():
            self._launcher.reactor.call_later(LOG_RETRY_INTERVAL, lambda: self._retry_log(log))

    def echo_dropped(self, echo: Echo) -> None:
        """Records were dropped on stdout or stderr: report it now, then at most every
        ECHO_REPORT_INTERVAL while drops go on."""
        if not echo.reporting:
            echo.reporting = True
            self._report_echo(echo)

    def _report_echo(self, echo: Echo) -> None:
        records = echo.dropped_records - echo.reported_records
        size = echo.dropped_bytes - echo.reported_bytes
        if records == 0 and size == 0:
            echo.reporting = False
            return
        echo.reported_records, echo.reported_bytes = echo.dropped_records, echo.dropped_bytes
        self._launcher.reactor.call_later(ECHO_REPORT_INTERVAL, lambda: self._report_echo(echo))
        message = _echo_drop_message(echo, records, size)
        if echo.gone and echo.reported_gone:
            self._launcher.keeper.send(message)  # the totals only: its end was said once
            return
        echo.reported_gone = echo.gone
        why = echo.error or "its reader does not keep up"
        then = ("; it is gone: services' records go to their log files only from now on"
                if echo.gone else "")
        # Never said on the descriptor it is about: that would be one more drop.
        self._launcher.console.say(f"corral-launcher: dropped {records} records ({size} bytes) of "
                         f"output on the launcher's {echo.label} ({why}){then}; "
                         f"{echo.dropped_records} records in all",
                         to_stderr=echo is not self._launcher.console.stderr)
        self._launcher.keeper.send(message)

    def watch_echo(self, echo: Echo) -> None:
        """Records wait in the echo's buffer: send them once the descriptor takes them."""
        if echo.pollable and echo.fd not in self._watched:
            self._watched.add(echo.fd)
            self._launcher.reactor.sel.register(echo.fd, selectors.EVENT_WRITE,
                                      lambda mask: self._echo_writable(echo))

    def _echo_writable(self, echo: Echo) -> None:
        echo.flush()
        if not echo.buffer and echo.fd in self._watched:
            self._watched.discard(echo.fd)
            self._launcher.reactor.sel.unregister(echo.fd)

    def replay(self) -> None:
        """Tell a new supervisor what was dropped so far (its totals start from these)."""
        for log in self._all_logs():
            if log.dropped_bytes_total or log.drop_since is not None:
                report = DropReport(log.drop_since is not None, log.dropped_bytes,
                                    log.dropped_records, log.drop_since or log.drop_last,
                                    log.drop_last, log.drop_error)
                self._launcher.keeper.send({**_log_drop_message(log, report), "replay": True})
        for echo in self._launcher.console.echoes():
            if echo.dropped_records or echo.dropped_bytes:
                self._launcher.keeper.send({**_echo_drop_message(echo, 0, 0), "replay": True})

    def _all_logs(self) -> list[LogFile]:
        console = self._launcher.console.log
        return [*self._launcher.logs.values(), *([console] if console is not None else [])]


def _log_drop_message(log: LogFile, report: DropReport) -> Message:
    return {"type": m.OUTPUT_DROPPED, "sink": "log", "path": log.path,
            "dropping": report.dropping, "bytes": report.bytes, "records": report.records,
            "since": report.since, "until": report.until, "error": report.error,
            "total_bytes": log.dropped_bytes_total, "total_records": log.dropped_records_total}


def _echo_drop_message(echo: Echo, records: int, size: int) -> Message:
    return {"type": m.OUTPUT_DROPPED, "sink": echo.label, "bytes": size, "records": records,
            "error": echo.error, "gone": echo.gone, "total_bytes": echo.dropped_bytes,
            "total_records": echo.dropped_records}
