"""The launcher: owns every service process, (re)starts the supervisor, may be PID 1.

STDLIB ONLY (it imports :mod:`corral.protocol` and nothing else of corral), so that it
stays small, starts fast, and never has to change when the supervisor is upgraded.

The launcher never decides anything.  It spawns, signals and reaps on the supervisor's
behalf, writes service output to log files, and reports exits.  Its loop waits on one
``selectors`` selector: the supervisor's socket, every service pipe, and a self-pipe
that signal handlers write to (``signal.set_wakeup_fd``).  Handlers only record the
signal; the loop dispatches.  Exits are found by reaping on SIGCHLD, never by polling.

Reaping uses ``waitpid(-1, WNOHANG)`` until nothing is left, so orphaned grandchildren
(the launcher is a child subreaper, or PID 1) are reaped too, and the status of a managed
child is looked up by pid and never lost to the orphan reaper.

Nothing a launcher started outlives it, and nothing runs twice:

- a re-parented orphan is recognised by the instance mark in its environment
  (:mod:`.procs`) and stopped with the instance it came from, on a stop and when the
  instance's main process exits ("strays": what a cgroup would hold, for services that
  have none);
- the launcher records its children (:mod:`.record`); a launcher killed with SIGKILL
  leaves that record, and the next one on the state directory stops what it names before
  it starts anything.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import fcntl
import heapq
import itertools
import os
import selectors
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import corral
from corral.protocol import defaults, paths
from corral.protocol import messages as m

from . import procs, record
from .cgroup import Cgroups
from .console import LOG_NAME, Console
from .listeners import ListenError, Listeners
from .output import RECENT, DropReport, Echo, LogFile, PipeReader, rfc3339
from .sdnotify import Notifier
from .server import ExitQueue, Link, Message
from .spawn import SpawnError, SpawnRequest, spawn

_PR_SET_CHILD_SUBREAPER = 36
# Fallback stop when no supervisor can do it: TERM, then KILL after this long.
FALLBACK_STOP_TIMEOUT = 10.0
# A supervisor "died young" if it never said Hello (the backoff doubles from 0.1 s to 5 s
# while that goes on), or died within this long after it (restarted after 0.1 s).  One that got going and was killed later (an admin's kill -9,
# the OOM killer) is restarted at once: that is the path the services' API waits on.
SUP_YOUNG = 1.0
SUP_BACKOFF_MIN = 0.1
SUP_BACKOFF_MAX = 5.0
#: Send buffer of the supervisor's end of the link (see start_supervisor).
SUP_LINK_SNDBUF = 4 * 1024 * 1024
# Removing a killed cgroup waits for its processes to die: retried from this delay,
# doubling, for as long as the last bound (then left for the next launcher's clean-up).
CGROUP_RMDIR_FIRST = 0.002
CGROUP_RMDIR_LAST = 10.0
# An exited instance's cgroup is kept this long first: a restart reuses it, which saves a
# mkdir and an rmdir (0.05-0.1 ms) on the restart path.
CGROUP_LINGER = 1.0
# Records dropped on the launcher's stdout or stderr are reported at once, then at most
# this often while the drops go on (a slow reader would otherwise fill the log with it).
ECHO_REPORT_INTERVAL = 10.0
# A log file that stopped taking output is tried again this often even when no output
# comes, so that its record of what was dropped is written soon after there is room.
LOG_RETRY_INTERVAL = 1.0
#: The children record, under ``<state>/run/`` (see :mod:`.record`).
RECORD_NAME = "launcher-children.jsonl"
# Orphans re-parented a moment after their instance's exit was handled are looked for
# this long after an orphan is reaped (its children come to the launcher then).
SWEEP_DELAY = 0.05
# At exit, how long the launcher waits for the strays it killed to be reaped.
FINAL_WAIT = 2.0
#: The supervisor's name in the record and in its instance mark.
SUPERVISOR_NAME = ".supervisor"


@dataclass
class Child:
    """A service process the launcher started."""

    name: str
    pid: int
    argv: list[str]
    started_at: float
    readers: list[PipeReader]
    terminate_waiters: list[Any] = field(default_factory=list)
    killed: bool = False
    cgroup: str | None = None
    oom_base: int | None = None  # memory.events oom_kill when it started
    mark: str = ""  # its CORRAL_INSTANCE_ID
    entry: record.Entry | None = None  # for the children record, once it is written
    strays: set[int] = field(default_factory=set)  # left-behind processes signalled


@dataclass
class SupervisorProc:
    """The current supervisor process and its link."""

    proc: subprocess.Popen[bytes]
    link: Link
    started_at: float
    greeted_at: float | None = None
    output: PipeReader | None = None  # its stdout and stderr, relayed by the launcher
    entry: record.Entry | None = None  # for the children record, once it is written


class Launcher:
    """Runs until told to stop; :meth:`run` returns the launcher's exit code.

    Args:
        log_stdout: copy every service's records to the launcher's stdout (a Spawn's
            ``log.stdout`` overrides it for that process).
        console: the launcher's stdout, stderr and own log (made here if not given).
    """

    def __init__(self, state_dir: Path, sup_args: list[str],
                 first_sup_args: list[str] | None = None, log_stdout: bool = False,
                 console: Console | None = None) -> None:
        self.state_dir = state_dir
        self.sup_args = sup_args
        self.log_stdout = log_stdout
        self.console = console if console is not None else Console()
        # Given to the first supervisor only (``--target``): later ones, after a crash or
        # an upgrade, must rebuild from the state directory, not re-apply the file.
        self.first_sup_args = first_sup_args or []
        self.sel = selectors.DefaultSelector()
        self.children: dict[int, Child] = {}
        self.spawns: Counter[str] = Counter()
        self.logs: dict[str, LogFile] = {}
        self.exits = ExitQueue()
        self.recent_exits: dict[int, m.Exited] = {}
        self.sup: SupervisorProc | None = None
        self.sup_backoff = 0.0
        self.timers: list[tuple[float, int, Callable[[], None]]] = []
        self._timer_ids = itertools.count()
        self.signals: list[int] = []
        self.stopping = False
        self.stop_deadline = 0.0
        self.exit_code: int | None = None
        self.started_at = time.time()
        self.devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        self.cgroups: Cgroups | None = None
        self.listeners = Listeners()
        self._watched: set[int] = set()  # echo fds waited on for writability
        self.notifier: Notifier | None = None  # systemd's NOTIFY_SOCKET, taken in run()
        self.pid = os.getpid()
        # "<pid>.<start time>": names this launcher in instance marks and in the record.
        self.ident = f"{self.pid}.{procs.start_time(self.pid) or 0}"
        self.boot_id = procs.boot_id()
        self._marks = itertools.count(1)
        self.record_path = str(paths.run_dir(state_dir) / RECORD_NAME)
        self.record: record.Writer | None = None
        # Spawned this loop turn, recorded at its end: (pid, what to record).
        self._record_new: list[tuple[int, record.Entry]] = []
        self._record_failed: int | None = None  # errno of the last failed write (said once)
        self._orphan_marks: dict[int, str | None] = {}  # re-parented pid -> its mark
        self._sweep_pending = False
        # Set when a supervisor could not work with this launcher (protocol versions): the
        # line said, and no supervisor is started again until SIGHUP.
        self.sup_refused: str | None = None
        self.sup_held = False

    # ----------------------------------------------------------------- main loop
    def run(self) -> int:
        """Start the supervisor and serve until shutdown; return the exit code."""
        self._setup_console()
        self._install_signals()
        self._setup_notify()
        _close_inherited_on_exec()
        if os.getpid() != 1:
            _set_child_subreaper()
        self._stop_leftovers()
        self._open_record()
        self._setup_cgroups()
        self.start_supervisor()
        while self.exit_code is None:
            timeout = None
            if self.timers:
                timeout = max(0.0, self.timers[0][0] - time.monotonic())
            for key, mask in self.sel.select(timeout):
                self._guard(key.data, mask)
            self._run_timers()
            self._dispatch_signals()
            if self._record_new:
                self._guard(self._write_record)
        self._guard(self._final_sweep)
        if self.cgroups is not None:
            self.cgroups.close()
        if self.record is not None:
            self.record.close()
        return self.exit_code

    def _setup_console(self) -> None:
        console = self.console
        console.install()
        if console.log is None:
            console.open_log(str(paths.logs_dir(self.state_dir) / LOG_NAME))
        assert console.log is not None
        console.log.on_drop = self._log_dropping
        for echo in console.echoes():
            echo.on_drop = self._echo_dropped
            echo.on_pending = self._watch_echo

    # ------------------------------------------------------ the children record
    def _stop_leftovers(self) -> None:
        """Stop what a launcher that died on this state directory left running (see
        :mod:`.record`), and wait until it is gone: nothing may run twice."""
        try:
            os.makedirs(os.path.dirname(self.record_path), mode=0o750, exist_ok=True)
            found = record.load(self.record_path)
        except (OSError, record.RecordError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else exc
            print(f"corral-launcher: ignoring {self.record_path}: {why}", file=sys.stderr)
            found = None
        if found is None or found.boot_id != self.boot_id:
            return  # none, or from before a reboot: nothing it names still runs
        table = procs.all_stats()
        spare = {self.pid}
        stat = table.get(self.pid)
        while stat is not None and stat.ppid > 0 and stat.ppid not in spare:
            spare.add(stat.ppid)  # our own ancestors (a shell a service once started)
            stat = table.get(stat.ppid)
        groups = record.plan(found, table, procs.mark_of, record.cgroup_procs, spare)
        if groups:
            count = sum(len(group.pids) for group in groups)
            names = ", ".join(f"{g.entry.name} ({len(g.pids)})" for g in groups)
            dead = found.launcher.split(".")[0]
            print(f"corral-launcher: the previous launcher (pid {dead}) died and left {count} "
                  f"process{'es' if count != 1 else ''} running: {names}; stopping them "
                  "before anything starts", file=sys.stderr)
            # TERM, INT or QUIT meanwhile: KILL the rest now (the launcher then stops).
            outcome = record.stop(groups, table, hurry=lambda: any(
                sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT) for sig in self.signals))
            line = (f"corral-launcher: stopped what the previous launcher left: "
                    f"{outcome.graceful} on their stop signal, {outcome.killed} killed")
            if outcome.left:
                line += (f"; still there after KILL: pids "
                         f"{', '.join(map(str, outcome.left))}")
            print(line, file=sys.stderr)
        with contextlib.suppress(OSError):
            os.unlink(self.record_path)

    def _open_record(self) -> None:
        try:
            self.record = record.Writer(self.record_path, self.boot_id, self.ident)
        except OSError as exc:
            print(f"corral-launcher: cannot write {self.record_path} ({exc.strerror}): if "
                  "this launcher is killed, the next one cannot stop its services",
                  file=sys.stderr)

    def _write_record(self) -> None:
        """Append the children spawned this loop turn (one write however many there were,
        after the replies went out), and compact the file when dead lines have piled up."""
        new, self._record_new = self._record_new, []
        lines = []
        for pid, draft in new:
            holder = self.children.get(pid) or (
                self.sup if self.sup is not None and self.sup.proc.pid == pid else None)
            if holder is None:
                continue  # reaped this very turn: its pid may not be its own any more
            # Its start time makes the entry name this process only, never a reused pid.
            holder.entry = dataclasses.replace(draft, start=procs.start_time(pid) or 0)
            lines.append(holder.entry.encode())
        if self.record is None or not lines:
            return
        try:
            self.record.append(lines)
            if self.record.crowded(len(self.children) + 1):
                self.record.compact([h.entry.encode() for h in (*self.children.values(), self.sup)
                                     if h is not None and h.entry is not None])
        except OSError as exc:
            self._record_broken(exc)
        else:
            self._record_failed = None

    def _record_broken(self, exc: OSError) -> None:
        if self._record_failed != exc.errno:
            print(f"corral-launcher: cannot write {self.record_path} ({exc.strerror}): if "
                  "this launcher is killed, the next one finds the services started from "
                  "now on by their instance marks only", file=sys.stderr)
        self._record_failed = exc.errno

    def _setup_cgroups(self) -> None:
        self.cgroups, why = Cgroups.setup(self.state_dir)
        if self.cgroups is None:
            print(f"corral-launcher: services run in process groups, not cgroups: {why}",
                  file=sys.stderr)
            return
        for path in self.cgroups.stale():
            # Services of a launcher that died: no one can supervise them any more.
            print(f"corral-launcher: killing the leftovers in {path}", file=sys.stderr)
            self.cgroups.kill(path)
            self._remove_cgroup(path, CGROUP_RMDIR_FIRST)

    def _remove_cgroup(self, path: str, delay: float) -> None:
        """Remove a killed leaf once its processes are gone (retried with backoff)."""
        cgroups = self.cgroups
        if cgroups is None or cgroups.remove(path):
            return
        if delay > CGROUP_RMDIR_LAST:
            print(f"corral-launcher: {path} still has processes; left in place",
                  file=sys.stderr)
            return
        self.call_later(delay, lambda: self._remove_cgroup(path, delay * 2))

    def _setup_notify(self) -> None:
        """Take systemd's notify socket out of the environment (no supervisor or service
        inherits it) and start the watchdog pings it asks for."""
        self.notifier = Notifier.from_environ()
        if self.notifier is not None:
            self.notifier.send(STATUS="starting the supervisor")
            if self.notifier.watchdog is not None:
                self._ping_watchdog()

    def _ping_watchdog(self) -> None:
        """``WATCHDOG=1`` at half the manager's deadline, from this loop: the pings stop
        only if the launcher itself stops turning, not while a supervisor restarts."""
        notifier = self.notifier
        if notifier is None or notifier.watchdog is None:
            return
        notifier.send(WATCHDOG="1")
        self.call_later(notifier.watchdog / 2, self._ping_watchdog)

    def _tell(self, **fields: str) -> None:
        """Notify the service manager, when there is one."""
        if self.notifier is not None:
            self.notifier.send(**fields)

    @staticmethod
    def _guard(callback: Callable[..., None], *args: Any) -> None:
        """Run a loop callback; a bug in one must never take the launcher down."""
        try:
            callback(*args)
        except Exception as exc:
            import traceback
            print(f"corral-launcher: internal error (please report): {exc!r}", file=sys.stderr)
            traceback.print_exc()

    def call_later(self, delay: float, callback: Callable[[], None]) -> None:
        heapq.heappush(self.timers, (time.monotonic() + delay, next(self._timer_ids), callback))

    def _run_timers(self) -> None:
        now = time.monotonic()
        while self.timers and self.timers[0][0] <= now:
            _, _, callback = heapq.heappop(self.timers)
            self._guard(callback)

    # ------------------------------------------------------------ dropped output
    def _log_dropping(self, log: LogFile, report: DropReport) -> None:
        """A log file stopped taking output, or takes it again (its own record says so)."""
        if report.dropping:
            print(f"corral-launcher: cannot write {log.path}: {report.error}; dropping output "
                  "until it works again", file=sys.stderr)
            self.call_later(LOG_RETRY_INTERVAL, lambda: self._retry_log(log))
        else:
            print(f"corral-launcher: writing {log.path} again; dropped {report.bytes} bytes "
                  f"({report.records} records) of output from {rfc3339(report.since).decode()} "
                  f"to {rfc3339(report.until).decode()}: {report.error}", file=sys.stderr)
        self.send(_log_drop_message(log, report))

    def _retry_log(self, log: LogFile) -> None:
        if not log.retry():
            self.call_later(LOG_RETRY_INTERVAL, lambda: self._retry_log(log))

    def _echo_dropped(self, echo: Echo) -> None:
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
        self.call_later(ECHO_REPORT_INTERVAL, lambda: self._report_echo(echo))
        message = _echo_drop_message(echo, records, size)
        if echo.gone and echo.reported_gone:
            self.send(message)  # the totals only: its end was said once
            return
        echo.reported_gone = echo.gone
        why = echo.error or "its reader does not keep up"
        then = ("; it is gone: services' records go to their log files only from now on"
                if echo.gone else "")
        # Never said on the descriptor it is about: that would be one more drop.
        self.console.say(f"corral-launcher: dropped {records} records ({size} bytes) of "
                         f"output on the launcher's {echo.label} ({why}){then}; "
                         f"{echo.dropped_records} records in all",
                         to_stderr=echo is not self.console.stderr)
        self.send(message)

    def _watch_echo(self, echo: Echo) -> None:
        """Records wait in the echo's buffer: send them once the descriptor takes them."""
        if echo.pollable and echo.fd not in self._watched:
            self._watched.add(echo.fd)
            self.sel.register(echo.fd, selectors.EVENT_WRITE,
                              lambda mask: self._echo_writable(echo))

    def _echo_writable(self, echo: Echo) -> None:
        echo.flush()
        if not echo.buffer and echo.fd in self._watched:
            self._watched.discard(echo.fd)
            self.sel.unregister(echo.fd)

    def _replay_drops(self) -> None:
        """Tell a new supervisor what was dropped so far (its totals start from these)."""
        for log in self._all_logs():
            if log.dropped_bytes_total or log.drop_since is not None:
                report = DropReport(log.drop_since is not None, log.dropped_bytes,
                                    log.dropped_records, log.drop_since or log.drop_last,
                                    log.drop_last, log.drop_error)
                self.send({**_log_drop_message(log, report), "replay": True})
        for echo in self.console.echoes():
            if echo.dropped_records or echo.dropped_bytes:
                self.send({**_echo_drop_message(echo, 0, 0), "replay": True})

    def _all_logs(self) -> list[LogFile]:
        console = self.console.log
        return [*self.logs.values(), *([console] if console is not None else [])]

    # ------------------------------------------------------------------- signals
    def _install_signals(self) -> None:
        rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._wake_r = rfd
        signal.set_wakeup_fd(wfd, warn_on_full_buffer=False)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP,
                    signal.SIGQUIT):
            signal.signal(sig, self._record_signal)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        self.sel.register(rfd, selectors.EVENT_READ, self._drain_wakeup)

    def _record_signal(self, signum: int, frame: object) -> None:
        self.signals.append(signum)  # only record: the loop dispatches

    def _drain_wakeup(self, mask: int) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _dispatch_signals(self) -> None:
        while self.signals:
            signum = self.signals.pop(0)
            self._guard(self._on_signal, signum)

    def _on_signal(self, signum: int) -> None:
        if signum == signal.SIGCHLD:
            self.reap()
        elif signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            self.begin_shutdown(force=self.stopping)
        elif signum == signal.SIGHUP and self.sup is not None:
            _kill(self.sup.proc.pid, signal.SIGHUP)
        elif signum == signal.SIGHUP and self.sup_held:
            # A compatible supervisor may have been installed meanwhile: try again.
            self.sup_held = False
            self.sup_refused = None
            self.start_supervisor()

    # ---------------------------------------------------------------- supervisor
    def supervisor_argv(self) -> list[str]:
        """``CORRAL_SUP_BINARY`` (a path or a command line), else this Python's supervisor."""
        override = os.environ.get(m.ENV_SUP_BINARY)
        base = shlex.split(override) if override else [sys.executable, "-m", "corral.supervisor"]
        first, self.first_sup_args = self.first_sup_args, []
        return [*base, "--state-dir", str(self.state_dir), *self.sup_args, *first]

    def start_supervisor(self) -> None:
        if self.stopping or self.sup is not None:
            return
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        # Room for a cold start's whole burst of Spawns (about 2 KB each, mostly the
        # environment): requests that do not fit wait in the supervisor's own buffer,
        # which only its event loop flushes, and its loop is busy importing the API
        # stack right after it sent them.  The kernel caps this at net.core.wmem_max.
        with contextlib.suppress(OSError):
            theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SUP_LINK_SNDBUF)
        env = dict(os.environ)
        env[m.ENV_LAUNCHER_FD] = str(theirs.fileno())
        # Its stdout and stderr come to the launcher, which writes them to its own log
        # and stderr: a stderr nobody reads (or that is gone) must not hurt it either.
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        mark = procs.make_mark(SUPERVISOR_NAME, self.ident, next(self._marks))
        env[procs.ENV_INSTANCE_ID] = mark  # its hooks and checks inherit it
        try:
            proc = subprocess.Popen(self.supervisor_argv(), stdin=self.devnull, env=env,
                                    stdout=out_w, stderr=out_w,
                                    pass_fds=(theirs.fileno(),), start_new_session=True)
        except (OSError, subprocess.SubprocessError) as exc:
            print(f"corral-launcher: cannot start the supervisor: {exc}", file=sys.stderr)
            ours.close()
            theirs.close()
            os.close(out_r)
            os.close(out_w)
            self._schedule_supervisor(young=True)
            return
        theirs.close()
        os.close(out_w)
        link = Link(ours, self.handle_request)
        self.sup = SupervisorProc(proc=proc, link=link, started_at=time.monotonic())
        # Recorded to be killed at once: a supervisor whose launcher died has nothing to
        # stop gracefully (its state writes are atomic).
        self._record_new.append((proc.pid, record.Entry(
            name=SUPERVISOR_NAME, pid=proc.pid, pgid=proc.pid, start=0, mark=mark,
            stop_signal="KILL", stop_timeout=0.0)))
        self.sel.register(link.fileno(), selectors.EVENT_READ, self._on_link)
        self._relay_supervisor_output(out_r, proc.pid)
        sup = self.sup
        self.call_later(_hello_timeout(), lambda: self._hello_overdue(sup))

    def _relay_supervisor_output(self, fd: int, pid: int) -> None:
        os.set_blocking(fd, False)
        log = self.console.log
        assert log is not None
        reader = PipeReader(fd, pid, b"E", log, stamped=True, echo=self.console.stderr)
        assert self.sup is not None
        self.sup.output = reader

        def on_readable(mask: int) -> None:
            if not reader.read():
                self.sel.unregister(reader.fd)
                os.close(reader.fd)
                reader.fd = -1
        self.sel.register(fd, selectors.EVENT_READ, on_readable)

    def _hello_overdue(self, sup: SupervisorProc) -> None:
        """Kill a supervisor that has not said ``Hello`` in time (it is hung, or not a
        corral supervisor): it is then started again like one that died young."""
        if self.sup is sup and sup.greeted_at is None and sup.proc.returncode is None:
            if self.sup_refused is None:
                print(f"corral-launcher: the supervisor (pid {sup.proc.pid}) did not say "
                      f"Hello within {_hello_timeout():g} s; killing it", file=sys.stderr)
            _kill(sup.proc.pid, signal.SIGKILL)

    def _on_link(self, mask: int) -> None:
        sup = self.sup
        if sup is None:
            return
        if mask & selectors.EVENT_READ:
            sup.link.on_readable()
        if mask & selectors.EVENT_WRITE:
            sup.link.flush()
        self._update_link_interest()

    def _update_link_interest(self) -> None:
        sup = self.sup
        if sup is None:
            return
        if sup.link.closed:
            self._forget_link(sup.link)
            return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if sup.link.wants_write else 0)
        if self.sel.get_key(sup.link.fileno()).events != events:  # an epoll_ctl per send
            self.sel.modify(sup.link.fileno(), events, self._on_link)

    def _forget_link(self, link: Link) -> None:
        try:
            self.sel.unregister(link.fd)
        except (KeyError, ValueError):
            pass

    def send(self, message: Mapping[str, Any]) -> None:
        if self.sup is not None and not self.sup.link.closed:
            self.sup.link.send(message)
            self.sup.link.flush()
            self._update_link_interest()

    def _on_supervisor_exit(self, status: int) -> None:
        sup = self.sup
        assert sup is not None
        sup.proc.returncode = os.waitstatus_to_exitcode(status)
        code = sup.proc.returncode
        greeted = sup.greeted_at
        young = greeted is None or time.monotonic() - greeted < SUP_YOUNG
        if sup.output is not None:
            sup.output.drain()  # its last words before ours
        self._forget_link(sup.link)
        sup.link.close()
        self.sup = None
        if self.stopping:
            self._stop_remaining()
            return
        if self.sup_refused is not None or code == m.EXIT_INCOMPATIBLE:
            if self.sup_refused is None:  # it found out itself (this launcher is older)
                print(f"corral-launcher: the supervisor cannot work with this launcher or "
                      f"its state directory (launcher protocol {m.PROTOCOL_VERSION}, corral "
                      f"{corral.__version__}); services keep running, and no supervisor is "
                      "started until the launcher gets SIGHUP", file=sys.stderr)
            self.sup_held = True
            self._tell(STATUS="no supervisor: it cannot work with this launcher or its "
                              "state directory; services keep running")
            return
        if code in (m.EXIT_DONE, m.EXIT_FATAL):
            why = "is done" if code == m.EXIT_DONE else "hit a fatal error"
            print(f"corral-launcher: the supervisor {why} (exit {code}); stopping services",
                  file=sys.stderr)
            self.begin_shutdown(force=False, final_code=0 if code == m.EXIT_DONE else code)
            return
        if code != 0:
            print(f"corral-launcher: the supervisor died ({_describe(code)}); restarting it",
                  file=sys.stderr)
            self._tell(STATUS=f"the supervisor died ({_describe(code)}); restarting it")
        self._schedule_supervisor(young=code != 0 and young)

    def _schedule_supervisor(self, young: bool) -> None:
        if young:
            self.sup_backoff = min(SUP_BACKOFF_MAX, max(SUP_BACKOFF_MIN, self.sup_backoff * 2))
        else:
            self.sup_backoff = 0.0
        self.call_later(self.sup_backoff, self.start_supervisor)

    # ------------------------------------------------------------------ requests
    def handle_request(self, msg: Message) -> m.Reply | None:
        """Answer one request from the supervisor (see :mod:`corral.protocol.messages`)."""
        kind, rid = msg.get("type"), msg.get("id")
        if kind == m.HELLO:
            assert self.sup is not None
            theirs = msg.get("version")
            if not m.compatible(m.PROTOCOL_VERSION, theirs):
                return self._refuse(rid, theirs)
            self.sup.link.greeted = True
            self.sup.greeted_at = time.monotonic()
            # It started well: only supervisors that keep failing before Hello back off.
            self.sup_backoff = 0.0
            self.call_later(0, self._replay_exits)
            self.call_later(0, self._replay_drops)
            if self.stopping:
                self.call_later(0, lambda: self.send({"type": m.SHUTDOWN}))
            return {"type": m.HELLO_OK, "id": rid, "version": m.PROTOCOL_VERSION,
                    "launcher_pid": os.getpid(), "started_at": self.started_at,
                    "notify": self.notifier is not None,
                    "corral_version": corral.__version__}
        if kind == m.SPAWN:
            return self._spawn(msg)
        if kind == m.SIGNAL:
            return self._signal(msg)
        if kind == m.TERMINATE:
            return self._terminate(msg)
        if kind == m.LIST:
            return {"type": m.CHILDREN, "id": rid, "children": [
                {"name": c.name, "pid": c.pid, "started_at": c.started_at, "argv": c.argv,
                 "spawns": self.spawns[c.name], "cgroup": c.cgroup}
                for c in self.children.values()], "listeners": self.listeners.describe()}
        if kind == m.LISTEN:
            return self._listen(msg)
        if kind == m.UNLISTEN:
            name = msg.get("name")
            if not isinstance(name, str):
                return m.error(rid, m.E_BAD_REQUEST, "Unlisten needs a 'name'")
            return {"type": m.OK, "id": rid, "existed": self.listeners.unlisten(name)}
        if kind == m.ACK:
            self.exits.ack(msg.get("seq"))
            return None
        if kind == m.NOTIFY:
            return self._notify(msg)
        return m.error(rid, m.E_BAD_REQUEST, f"unknown message type {kind!r}")

    def _refuse(self, rid: Any, theirs: Any) -> m.Error:
        """Refuse a supervisor of another protocol major version: say so in one line,
        keep every service, and start no new supervisor until SIGHUP."""
        line = (f"the supervisor speaks launcher protocol {theirs!r} and this launcher "
                f"{m.PROTOCOL_VERSION!r} (corral {corral.__version__}): incompatible")
        self.sup_refused = line
        print(f"corral-launcher: {line}; services keep running, and no supervisor is "
              "started until a compatible corral is installed and the launcher gets SIGHUP",
              file=sys.stderr)
        return m.error(rid, m.E_INCOMPATIBLE, line)

    def _listen(self, msg: Message) -> m.Listening | m.Error:
        rid, name, host, port = msg.get("id"), msg.get("name"), msg.get("host"), msg.get("port")
        if (not isinstance(name, str) or not isinstance(host, str)
                or not isinstance(port, int) or isinstance(port, bool)):
            return m.error(rid, m.E_BAD_REQUEST,
                           "Listen needs 'name' and 'host' (strings) and 'port' (an integer)")
        try:
            listener = self.listeners.listen(name, host, port)
        except ListenError as exc:
            return m.error(rid, m.E_LISTEN_FAILED, str(exc))
        return {"type": m.LISTENING, "id": rid, **listener.describe()}

    def _notify(self, msg: Message) -> m.Ok | m.Error:
        """``Notify{ready?, status?}``: pass it on to the service manager.  ``READY=1``
        goes out once in the launcher's life (a restarted supervisor says it again)."""
        rid, ready, status = msg.get("id"), msg.get("ready", False), msg.get("status")
        if not isinstance(ready, bool) or not (status is None or isinstance(status, str)):
            return m.error(rid, m.E_BAD_REQUEST,
                           "Notify takes 'ready' (a boolean) and 'status' (a string)")
        fields: dict[str, str] = {}
        notifier = self.notifier
        if notifier is not None and ready and not notifier.ready_sent and not self.stopping:
            fields["READY"] = "1"
        if status is not None and not self.stopping:
            fields["STATUS"] = status
        if fields:
            self._tell(**fields)
        return {"type": m.OK, "id": rid}

    def _replay_exits(self) -> None:
        for message in self.exits.pending():
            self.send(message)

    def _spawn(self, msg: Message) -> m.Spawned | m.Error:
        rid = msg.get("id")
        if self.stopping:
            return m.error(rid, m.E_BAD_REQUEST, "the launcher is shutting down")
        log = msg.get("log")
        try:
            req = SpawnRequest.parse(msg)
            path, max_bytes, keep, stamped, to_stdout = _log_settings(log)
        except SpawnError as exc:
            return m.error(rid, exc.code, exc.message)
        mark = procs.make_mark(req.name, self.ident, next(self._marks))
        req.env[procs.ENV_INSTANCE_ID] = mark  # what ties its descendants to it
        try:
            sockets = self.listeners.fds(req.listen_fds)
        except KeyError as exc:
            return m.error(rid, m.E_BAD_REQUEST,
                           f"no listening socket named {exc.args[0]!r}; send Listen first")
        cgroups = self.cgroups
        leaf = None
        if cgroups is not None and (req.cgroup if req.cgroup is not None
                                    else cgroups.everyone or req.memory_max is not None):
            leaf = cgroups.create(req.name)
        try:
            started = spawn(req, self.devnull,
                            cgroups.inside(leaf) if cgroups is not None and leaf else None,
                            sockets)
        except SpawnError as exc:
            if cgroups is not None and leaf:
                cgroups.remove(leaf)
            return m.error(rid, exc.code, exc.message)
        if cgroups is not None and leaf and not cgroups.entered:
            cgroups.remove(leaf)  # the child started outside it: process group only
            leaf = None
        logfile = self.logs.get(path)
        if logfile is None:
            logfile = self.logs[path] = LogFile(path, max_bytes, keep)
            logfile.on_drop = self._log_dropping
        logfile.max_bytes, logfile.keep = max_bytes, keep
        pid = started.pid
        recent: deque[bytes] = deque(maxlen=RECENT)
        echo = self.console.stdout if (self.log_stdout if to_stdout is None else to_stdout) \
            else None
        label = echo_label(req.name)
        readers = [PipeReader(started.stdout, pid, b"O", logfile, stamped, recent, echo,
                              label + b" O "),
                   PipeReader(started.stderr, pid, b"E", logfile, stamped, recent, echo,
                              label + b" E ")]
        for reader in readers:
            logfile.users += 1
            self.sel.register(reader.fd, selectors.EVENT_READ, self._pipe_callback(reader))
        child = Child(name=req.name, pid=pid, argv=req.argv, started_at=time.time(),
                      readers=readers, cgroup=leaf, mark=mark)
        self.children[pid] = child
        self._record_new.append((pid, record.Entry(
            name=req.name, pid=pid, pgid=pid, start=0, mark=mark, stop_signal=req.stop_signal,
            stop_timeout=req.stop_timeout, cgroup=leaf)))
        self.spawns[req.name] += 1
        reply: m.Spawned = {"type": m.SPAWNED, "id": rid, "pid": pid, "started_at": child.started_at,
                 "cgroup": leaf, "memory_max": None, "spawns": self.spawns[req.name]}
        if cgroups is not None and leaf:
            cgroups.adopt(leaf, pid)
            # Written after the exec: the launcher was in the leaf until then.
            reply["memory_max"] = cgroups.set_memory_max(leaf, req.memory_max, req.name)
            child.oom_base = cgroups.oom_kills(leaf)
        return reply

    def _pipe_callback(self, reader: PipeReader) -> Callable[[int], None]:
        def on_readable(mask: int) -> None:
            if not reader.read():
                self.sel.unregister(reader.fd)
                os.close(reader.fd)
                reader.fd = -1  # closed: drain() must not read a reused fd number
                reader.log.users -= 1
                if reader.log.users <= 0:
                    reader.log.close()
        return on_readable

    def _signal(self, msg: Message) -> m.Ok | m.Error:
        rid, pid = msg.get("id"), msg.get("pid")
        try:
            signum = m.signal_number(msg.get("signal", "TERM"))
        except ValueError as exc:
            return m.error(rid, m.E_BAD_REQUEST, str(exc))
        if not isinstance(pid, int) or pid not in self.children:
            return m.error(rid, m.E_NO_SUCH_PROCESS, f"no service process with pid {pid}")
        if msg.get("group"):
            _killpg(pid, signum)
        else:
            _kill(pid, signum)
        return {"type": m.OK, "id": rid}

    def _terminate(self, msg: Message) -> m.Terminated | m.Error | None:
        rid, pid = msg.get("id"), msg.get("pid")
        timeout = msg.get("timeout", defaults.STOP_TIMEOUT)
        try:
            signum = m.signal_number(msg.get("signal", defaults.STOP_SIGNAL))
        except ValueError as exc:
            return m.error(rid, m.E_BAD_REQUEST, str(exc))
        if not isinstance(timeout, (int, float)) or timeout < 0:
            return m.error(rid, m.E_BAD_REQUEST, "'timeout' must be a number >= 0")
        child = self.children.get(pid) if isinstance(pid, int) else None
        if child is None:
            done = self.recent_exits.get(pid) if isinstance(pid, int) else None
            return {"type": m.TERMINATED, "id": rid, "method": m.ALREADY_EXITED,
                    "exit_code": done.get("exit_code") if done else None,
                    "signal": done.get("signal") if done else None}
        child.terminate_waiters.append(rid)
        strays = self._strays(child)
        self._note_strays(child, strays)
        self._signal_all(child, signum, strays)
        if signum not in (signal.SIGKILL, signal.SIGCONT):
            # A stopped process must see the signal.
            self._signal_all(child, signal.SIGCONT, strays)

        def escalate() -> None:
            if self.children.get(child.pid) is child:
                child.killed = True
                self._kill_all(child)
        self.call_later(float(timeout), escalate)
        return None

    def _signal_all(self, child: Child, signum: int, strays: list[int]) -> None:
        """Signal the child's process group, its ``strays`` and, with a cgroup, every
        process in it (a daemon that left the group gets the stop signal too, as with
        systemd)."""
        _killpg(child.pid, signum)
        for pid in strays:
            _kill(pid, signum)
        if self.cgroups is not None and child.cgroup:
            for pid in self.cgroups.procs(child.cgroup):
                _kill(pid, signum)

    def _kill_all(self, child: Child) -> None:
        """SIGKILL the child's process group, its strays and its whole cgroup."""
        strays = self._strays(child)  # found first, while the process tree is intact
        self._note_strays(child, strays)
        if self.cgroups is not None and child.cgroup:
            self.cgroups.kill(child.cgroup)
        _killpg(child.pid, signal.SIGKILL)
        for pid in strays:
            _kill(pid, signal.SIGKILL)

    # -------------------------------------------------------------------- strays
    def _strays(self, child: Child) -> list[int]:
        """Processes of ``child``'s instance that a signal to its process group misses:
        descendants of its main process that left the group (while it runs), and
        processes re-parented to the launcher that carry its mark, with their
        descendants.  None with a cgroup: the cgroup holds them all."""
        if child.cgroup:
            return []
        roots = [pid for pid in self._orphans() if self._mark(pid) == child.mark]
        if self.children.get(child.pid) is child:  # not reaped: its pid is still its own
            roots.extend(procs.children(child.pid))
        else:
            # It exited: what it forked in its group came to us and dies with the group;
            # a daemon one of those forked comes to us when it dies, and the sweep its
            # reaping starts kills it (a service with many workers pays no walk per exit).
            roots = [pid for pid in roots if _group(pid) != child.pid]
        if not roots:
            return []
        return [pid for pid in procs.subtree(roots) if _group(pid) not in (child.pid, None)]

    def _orphans(self) -> list[int]:
        """The launcher's children that it did not start: processes re-parented to it."""
        listed = procs.children_text(self.pid)
        if listed.count(b" ") <= len(self.children) + (self.sup is not None):
            return []  # the common case, with no pid parsed (1,000 services: ~100 us less)
        sup = self.sup.proc.pid if self.sup is not None else None
        return [pid for pid in map(int, listed.split())
                if pid not in self.children and pid != sup]

    def _mark(self, orphan: int) -> str | None:
        """An orphan's instance mark (cached: the pid stays the orphan's until we reap it)."""
        if orphan not in self._orphan_marks:
            self._orphan_marks[orphan] = procs.mark_of(orphan)
        return self._orphan_marks[orphan]

    def _note_strays(self, child: Child, strays: list[int]) -> None:
        """Say (once per process) that ``child`` left processes behind; they are reported
        with its exit."""
        new = [pid for pid in strays if pid not in child.strays]
        if new:
            child.strays.update(new)
            print(f"corral-launcher: {_left_behind(child.name, new)}; stopping "
                  f"{_them(new)} with the instance", file=sys.stderr)

    def _sweep_soon(self) -> None:
        if not self._sweep_pending:
            self._sweep_pending = True
            self.call_later(SWEEP_DELAY, self._sweep)

    def _sweep(self) -> None:
        """Kill orphans whose instance has already ended (re-parented after its exit was
        handled).  The supervisor's own (a hook, a check) are left to finish."""
        self._sweep_pending = False
        live = {child.mark for child in self.children.values()}
        ended: dict[str, list[int]] = {}
        for pid in self._orphans():
            mark = self._mark(pid)
            parsed = procs.parse_mark(mark) if mark else None
            if (mark and parsed and parsed[1] == self.ident and mark not in live
                    and parsed[0] != SUPERVISOR_NAME):
                ended.setdefault(mark, []).append(pid)
        for mark, roots in ended.items():
            pids = procs.subtree(roots)
            line = _left_behind(mark.rpartition("@")[0], pids)
            for pid in pids:
                _kill(pid, signal.SIGKILL)
            print(f"corral-launcher: {line} after it ended; killed {_them(pids)}",
                  file=sys.stderr)

    def _final_sweep(self) -> None:
        """At exit: kill whatever is still in the launcher's process tree (every service
        has stopped: what is left was left behind), say whose it was, and reap it."""
        pids = procs.subtree(procs.children(self.pid))
        if not pids:
            return
        owners: dict[str, list[int]] = {}
        for pid in pids:
            mark = procs.mark_of(pid)
            owners.setdefault(mark.rpartition("@")[0] if mark else "", []).append(pid)
        lines = [f"{_left_behind(name or 'a process without an instance mark', left)}; "
                 f"killed {_them(left)}" for name, left in owners.items()]
        for pid in pids:
            _kill(pid, signal.SIGKILL)
        for line in lines:
            print(f"corral-launcher: at exit, {line}", file=sys.stderr)
        deadline = time.monotonic() + FINAL_WAIT
        while procs.children(self.pid) and time.monotonic() < deadline:
            self.reap()
            time.sleep(0.005)  # exiting: nothing else to wait on

    # ------------------------------------------------------------------- reaping
    def reap(self) -> None:
        """Reap every child that has exited: supervisor, services and orphans alike."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if self.sup is not None and pid == self.sup.proc.pid:
                self._on_supervisor_exit(status)
            elif pid in self.children:
                self._on_child_exit(self.children.pop(pid), status)
            else:
                # An orphan that was re-parented to us: nothing to tell, but its own
                # children are ours now, and may belong to an instance that has ended.
                self._orphan_marks.pop(pid, None)
                if not self.stopping:
                    self._sweep_soon()

    def _on_child_exit(self, child: Child, status: int) -> None:
        code = os.waitstatus_to_exitcode(status)
        # Leftovers of the process group (grandchildren) go with their leader, as with
        # systemd's control-group kill: a restarted service must find its ports free.
        # With a cgroup, that is every descendant, daemons that called setsid() included.
        oom_killed: bool | None = None
        if self.cgroups is not None and child.cgroup:
            now = self.cgroups.oom_kills(child.cgroup)
            if now is not None and child.oom_base is not None:
                oom_killed = now > child.oom_base
        self._kill_all(child)
        for reader in child.readers:
            reader.drain()
        exited: m.Exited = {
            "type": m.EXITED, "name": child.name, "pid": child.pid, "at": time.time(),
            "exit_code": code if code >= 0 else None,
            "signal": m.signal_name(-code) if code < 0 else None,
            "last_lines": [line[:1000].decode(errors="replace")
                           for line in child.readers[0].recent if line],
            "spawns": self.spawns[child.name],
        }
        if oom_killed is not None:
            exited["oom_killed"] = oom_killed
        if child.strays:
            exited["strays"] = sorted(child.strays)
        self.recent_exits[child.pid] = exited
        if len(self.recent_exits) > 1000:
            self.recent_exits.pop(next(iter(self.recent_exits)))
        for rid in child.terminate_waiters:
            terminated: m.Terminated = {"type": m.TERMINATED, "id": rid,
                                   "method": m.KILLED if child.killed else m.GRACEFUL,
                                   "exit_code": exited["exit_code"], "signal": exited["signal"]}
            if oom_killed is not None:
                terminated["oom_killed"] = oom_killed
            if child.strays:
                terminated["strays"] = sorted(child.strays)
            self.send(terminated)
        self.exits.add(exited)
        if self.sup is not None and self.sup.link.greeted:
            self.send(exited)
        if self.cgroups is not None and child.cgroup:
            # After the report, and later still, so a restart can reuse the leaf.
            self.cgroups.release(child.cgroup, child.pid)
            leaf = child.cgroup
            self.call_later(CGROUP_LINGER,
                            lambda: self._remove_cgroup(leaf, CGROUP_RMDIR_FIRST))
        if self.stopping and not self.children and self.sup is None:
            self.exit_code = self.final_code

    # ------------------------------------------------------------------ shutdown
    final_code = 0

    def begin_shutdown(self, force: bool, final_code: int = 0) -> None:
        """Graceful: ask the supervisor to stop services; else stop them ourselves.

        A second TERM/INT (``force``) kills every process group at once.
        """
        if force:
            print("corral-launcher: forced shutdown: killing every service", file=sys.stderr)
            for child in self.children.values():
                self._kill_all(child)
            if self.sup is not None:
                _kill(self.sup.proc.pid, signal.SIGKILL)
            return
        if self.stopping:
            return
        self.stopping = True
        self.final_code = final_code
        self._tell(STOPPING="1", STATUS="stopping services")
        bound = float(os.environ.get("CORRAL_SHUTDOWN_TIMEOUT", "90"))
        if self.sup is not None and not self.sup.link.closed:
            # Queued now even before Hello: the supervisor reads it once it is greeted.
            if self.sup.link.greeted:
                self.send({"type": m.SHUTDOWN})
            self.call_later(bound, self._shutdown_overdue)
        else:
            if self.sup is not None:
                _kill(self.sup.proc.pid, signal.SIGKILL)
            self._stop_remaining()

    def _shutdown_overdue(self) -> None:
        if self.sup is not None:
            print("corral-launcher: the supervisor did not finish stopping in time; "
                  "killing it", file=sys.stderr)
            _kill(self.sup.proc.pid, signal.SIGKILL)

    def _stop_remaining(self) -> None:
        """Stop services the supervisor did not (reverse start order), then exit."""
        if not self.children:
            if self.sup is None:
                self.exit_code = self.final_code
            return
        for child in reversed(list(self.children.values())):
            strays = self._strays(child)
            self._note_strays(child, strays)
            self._signal_all(child, signal.SIGTERM, strays)
            self._signal_all(child, signal.SIGCONT, strays)

        def kill_rest() -> None:
            for child in self.children.values():
                self._kill_all(child)
        self.call_later(FALLBACK_STOP_TIMEOUT, kill_rest)


def echo_label(name: str) -> bytes:
    """How a child's records start on the launcher's stdout: ``web[0]`` for ``web/0``
    and ``web/0@3`` (the generation is corral's own business), the name itself otherwise."""
    service, _, instance = name.partition("/")
    instance = instance.partition("@")[0]
    return (f"{service}[{instance}]" if instance else service).encode(errors="replace")


def _log_drop_message(log: LogFile, report: DropReport) -> Message:
    return {"type": m.OUTPUT_DROPPED, "sink": "log", "path": log.path,
            "dropping": report.dropping, "bytes": report.bytes, "records": report.records,
            "since": report.since, "until": report.until, "error": report.error,
            "total_bytes": log.dropped_bytes_total, "total_records": log.dropped_records_total}


def _echo_drop_message(echo: Echo, records: int, size: int) -> Message:
    return {"type": m.OUTPUT_DROPPED, "sink": echo.label, "bytes": size, "records": records,
            "error": echo.error, "gone": echo.gone, "total_bytes": echo.dropped_bytes,
            "total_records": echo.dropped_records}


def _hello_timeout() -> float:
    """How long a new supervisor has to say ``Hello`` (``CORRAL_HELLO_TIMEOUT``)."""
    try:
        value = float(os.environ.get(m.ENV_HELLO_TIMEOUT, ""))
    except ValueError:
        return m.HELLO_TIMEOUT
    return value if value > 0 else m.HELLO_TIMEOUT


def _log_settings(log: Any) -> tuple[str, int, int, bool, bool | None]:
    """Check a Spawn's ``log`` object: (path, max_bytes, keep, stamped, stdout)."""
    if not isinstance(log, dict) or not isinstance(log.get("path"), str) or not log["path"]:
        raise SpawnError(m.E_BAD_REQUEST, "Spawn needs 'log': {'path': ...}")
    max_bytes = log.get("max_bytes", defaults.LOG_MAX_BYTES)
    keep = log.get("keep", defaults.LOG_KEEP)
    fmt = log.get("format", "stamped")
    if not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes < 4096:
        raise SpawnError(m.E_BAD_REQUEST, "'log.max_bytes' must be an integer >= 4096")
    if not isinstance(keep, int) or isinstance(keep, bool) or not 0 <= keep <= 1000:
        raise SpawnError(m.E_BAD_REQUEST, "'log.keep' must be an integer 0..1000")
    if fmt not in ("stamped", "raw"):
        raise SpawnError(m.E_BAD_REQUEST, "'log.format' must be 'stamped' or 'raw'")
    stdout = log.get("stdout")
    if stdout is not None and not isinstance(stdout, bool):
        raise SpawnError(m.E_BAD_REQUEST, "'log.stdout' must be true, false or null")
    return log["path"], max_bytes, keep, fmt == "stamped", stdout


def _kill(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _killpg(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _left_behind(name: str, pids: list[int]) -> str:
    """``web/0 left 2 processes behind (pid 7 sleep, pid 9 sh)``."""
    listed = ", ".join(f"pid {pid} {procs.command(pid)}" for pid in pids)
    return f"{name} left {len(pids)} process{'es' if len(pids) != 1 else ''} behind ({listed})"


def _them(pids: list[int]) -> str:
    return "it" if len(pids) == 1 else "them"


def _group(pid: int) -> int | None:
    """The process group of a live process; None when it is gone or a zombie."""
    stat = procs.read_stat(pid)
    return stat.pgrp if stat is not None and stat.alive else None


def _describe(code: int) -> str:
    return f"exit code {code}" if code >= 0 else f"killed by SIG{m.signal_name(-code)}"


def _close_inherited_on_exec() -> None:
    """Mark every fd above stdio close-on-exec.

    Services are started with ``posix_spawn``, which passes on whatever is inheritable;
    an fd the launcher itself inherited (from a shell, an init system, a test harness)
    must not reach them, as ``close_fds`` guaranteed with ``subprocess``.
    """
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2:
            with contextlib.suppress(OSError):  # the listing's own fd, closed by now
                os.set_inheritable(fd, False)


def _set_child_subreaper() -> None:
    """Become the reaper of orphaned descendants (what PID 1 does for everyone)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        print("corral-launcher: cannot become a child subreaper; orphaned grandchildren "
              "will be reaped by init", file=sys.stderr)


def take_lock(state_dir: Path) -> int:
    """Hold ``<state>/LOCK`` for the launcher's lifetime; one launcher per directory.

    Error handling: if another launcher holds it, print one line and exit 1.
    """
    fd = os.open(paths.lock_file(state_dir), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise
        other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        print(f"corral: another launcher (pid {other}) is already running on {state_dir}; "
              "stop it first with: corral sup stop --state-dir " + str(state_dir),
              file=sys.stderr)
        raise SystemExit(1) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
