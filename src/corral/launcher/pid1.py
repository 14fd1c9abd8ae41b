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
"""

from __future__ import annotations

import contextlib
import ctypes
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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corral.protocol import messages as m
from corral.protocol import paths

from .cgroup import Cgroups
from .console import LOG_NAME, Console
from .listeners import ListenError, Listeners
from .output import RECENT, DropReport, Echo, LogFile, PipeReader, rfc3339
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


@dataclass
class SupervisorProc:
    """The current supervisor process and its link."""

    proc: subprocess.Popen[bytes]
    link: Link
    started_at: float
    greeted_at: float | None = None
    output: PipeReader | None = None  # its stdout and stderr, relayed by the launcher


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
        self.recent_exits: dict[int, Message] = {}
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

    # ----------------------------------------------------------------- main loop
    def run(self) -> int:
        """Start the supervisor and serve until shutdown; return the exit code."""
        self._setup_console()
        self._install_signals()
        _close_inherited_on_exec()
        if os.getpid() != 1:
            _set_child_subreaper()
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
        if self.cgroups is not None:
            self.cgroups.close()
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
        self.sel.register(link.fileno(), selectors.EVENT_READ, self._on_link)
        self._relay_supervisor_output(out_r, proc.pid)

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

    def send(self, message: Message) -> None:
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
        if code in (m.EXIT_DONE, m.EXIT_FATAL):
            why = "is done" if code == m.EXIT_DONE else "hit a fatal error"
            print(f"corral-launcher: the supervisor {why} (exit {code}); stopping services",
                  file=sys.stderr)
            self.begin_shutdown(force=False, final_code=0 if code == m.EXIT_DONE else code)
            return
        if code != 0:
            print(f"corral-launcher: the supervisor died ({_describe(code)}); restarting it",
                  file=sys.stderr)
        self._schedule_supervisor(young=code != 0 and young)

    def _schedule_supervisor(self, young: bool) -> None:
        if young:
            self.sup_backoff = min(SUP_BACKOFF_MAX, max(SUP_BACKOFF_MIN, self.sup_backoff * 2))
        else:
            self.sup_backoff = 0.0
        self.call_later(self.sup_backoff, self.start_supervisor)

    # ------------------------------------------------------------------ requests
    def handle_request(self, msg: Message) -> Message | None:
        """Answer one request from the supervisor (see :mod:`corral.protocol.messages`)."""
        kind, rid = msg.get("type"), msg.get("id")
        if kind == m.HELLO:
            assert self.sup is not None
            self.sup.link.greeted = True
            self.sup.greeted_at = time.monotonic()
            # It started well: only supervisors that keep failing before Hello back off.
            self.sup_backoff = 0.0
            self.call_later(0, self._replay_exits)
            self.call_later(0, self._replay_drops)
            if self.stopping:
                self.call_later(0, lambda: self.send({"type": m.SHUTDOWN}))
            return {"type": m.HELLO_OK, "id": rid, "version": m.PROTOCOL_VERSION,
                    "launcher_pid": os.getpid(), "started_at": self.started_at}
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
        return m.error(rid, m.E_BAD_REQUEST, f"unknown message type {kind!r}")

    def _listen(self, msg: Message) -> Message:
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

    def _replay_exits(self) -> None:
        for message in self.exits.pending():
            self.send(message)

    def _spawn(self, msg: Message) -> Message:
        rid = msg.get("id")
        if self.stopping:
            return m.error(rid, m.E_BAD_REQUEST, "the launcher is shutting down")
        log = msg.get("log")
        try:
            req = SpawnRequest.parse(msg)
            path, max_bytes, keep, stamped, to_stdout = _log_settings(log)
        except SpawnError as exc:
            return m.error(rid, exc.code, exc.message)
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
                      readers=readers, cgroup=leaf)
        self.children[pid] = child
        self.spawns[req.name] += 1
        reply = {"type": m.SPAWNED, "id": rid, "pid": pid, "started_at": child.started_at,
                 "cgroup": leaf, "memory_max": None}
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

    def _signal(self, msg: Message) -> Message:
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

    def _terminate(self, msg: Message) -> Message | None:
        rid, pid, timeout = msg.get("id"), msg.get("pid"), msg.get("timeout", 8.0)
        try:
            signum = m.signal_number(msg.get("signal", "TERM"))
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
        self._signal_all(child, signum)
        if signum not in (signal.SIGKILL, signal.SIGCONT):
            self._signal_all(child, signal.SIGCONT)  # a stopped process must see the signal

        def escalate() -> None:
            if self.children.get(child.pid) is child:
                child.killed = True
                self._kill_all(child)
        self.call_later(float(timeout), escalate)
        return None

    def _signal_all(self, child: Child, signum: int) -> None:
        """Signal the child's process group and, with a cgroup, every process in it (a
        daemon that left the group gets the stop signal too, as with systemd)."""
        _killpg(child.pid, signum)
        if self.cgroups is not None and child.cgroup:
            for pid in self.cgroups.procs(child.cgroup):
                _kill(pid, signum)

    def _kill_all(self, child: Child) -> None:
        """SIGKILL the child's process group and its whole cgroup."""
        if self.cgroups is not None and child.cgroup:
            self.cgroups.kill(child.cgroup)
        _killpg(child.pid, signal.SIGKILL)

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
            # anything else is an orphan that was re-parented to us: reaped, nothing to tell

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
        exited: Message = {
            "type": m.EXITED, "name": child.name, "pid": child.pid, "at": time.time(),
            "exit_code": code if code >= 0 else None,
            "signal": m.signal_name(-code) if code < 0 else None,
            "last_lines": [line[:1000].decode(errors="replace")
                           for line in child.readers[0].recent if line],
        }
        if oom_killed is not None:
            exited["oom_killed"] = oom_killed
        self.recent_exits[child.pid] = exited
        if len(self.recent_exits) > 1000:
            self.recent_exits.pop(next(iter(self.recent_exits)))
        for rid in child.terminate_waiters:
            terminated: Message = {"type": m.TERMINATED, "id": rid,
                                   "method": m.KILLED if child.killed else m.GRACEFUL,
                                   "exit_code": exited["exit_code"], "signal": exited["signal"]}
            if oom_killed is not None:
                terminated["oom_killed"] = oom_killed
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
            self._signal_all(child, signal.SIGTERM)
            self._signal_all(child, signal.SIGCONT)

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


def _log_settings(log: Any) -> tuple[str, int, int, bool, bool | None]:
    """Check a Spawn's ``log`` object: (path, max_bytes, keep, stamped, stdout)."""
    if not isinstance(log, dict) or not isinstance(log.get("path"), str) or not log["path"]:
        raise SpawnError(m.E_BAD_REQUEST, "Spawn needs 'log': {'path': ...}")
    max_bytes = log.get("max_bytes", 10 * 1024 * 1024)
    keep = log.get("keep", 5)
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
