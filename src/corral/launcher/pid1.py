"""The launcher: owns every service process, (re)starts the supervisor, may be PID 1.

STDLIB ONLY (it imports :mod:`corral.protocol` and nothing else of corral), so that it
stays small, starts fast, and never has to change when the supervisor is upgraded.

The launcher never decides anything.  It spawns, signals and reaps on the supervisor's
behalf, writes service output to log files, and reports exits.  :class:`Launcher` is the
composition root of its parts:

- :mod:`.reactor` -- the loop: one selector over the supervisor's socket, every service
  pipe and a self-pipe that signal handlers write to; handlers only record the signal,
  the loop dispatches; timers;
- :mod:`.keeper` -- the supervisor process: started, restarted with backoff, killed when
  it does not say Hello in time; the link to it;
- :mod:`.dispatch` -- each protocol request turned into an action and a reply;
- :mod:`.children` -- the child table: running children, spawn counts, queued exits.
- :mod:`.upgrade` -- ``Upgrade{}``: check the installed code, hand the whole state over
  across ``execve`` (same pid), and take it over in the new code (:meth:`Launcher.run`
  with ``resume``).

What stays here: reaping, stopping what an instance left behind, the children record,
reports of dropped output, and shutdown.  Exits are found by reaping on SIGCHLD, never by
polling.  Reaping looks at each exit (``waitid(WNOWAIT)``) until nothing is left, so orphaned
grandchildren (the launcher is a child subreaper, or PID 1) are reaped too, and the status
of a managed child is looked up by pid and never lost to the orphan reaper.

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
import dataclasses
import itertools
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import corral
from corral.protocol import messages as m
from corral.protocol import paths

from . import procs, record, sched, startup
from .cgroup import Cgroups
from .children import Child, ChildTable, Respawn
from .console import LOG_NAME, Console
from .dispatch import Dispatcher
from .drops import DropReports
from .keeper import SupervisorKeeper
from .listeners import Listeners
from .logfile import LogFile
from .pipes import SparePipes
from .reactor import Reactor, guard
from .sdnotify import Notifier
from .settings import LauncherSettings
from .strays import Strays
from .upgrade import Upgrader, restore, unblock_signals

# Fallback stop when no supervisor can do it: TERM, then KILL after this long.
FALLBACK_STOP_TIMEOUT = 10.0
# Removing a killed cgroup waits for its processes to die: retried from this delay,
# doubling, for as long as the last bound (then left for the next launcher's clean-up).
CGROUP_RMDIR_FIRST = 0.002
CGROUP_RMDIR_LAST = 10.0
# An exited instance's cgroup is kept this long first: a restart reuses it, which saves a
# mkdir and an rmdir (0.05-0.1 ms) on the restart path.
CGROUP_LINGER = 1.0
#: The children record, under ``<state>/run/`` (see :mod:`.record`).
RECORD_NAME = "launcher-children.jsonl"


class Launcher:
    """Runs until told to stop; :meth:`run` returns the launcher's exit code.

    Args:
        log_stdout: copy every service's records to the launcher's stdout (a Spawn's
            ``log.stdout`` overrides it for that process).
        console: the launcher's stdout, stderr and own log (made here if not given).
        settings: its checked ``CORRAL_*`` environment (the defaults if not given).
    """

    def __init__(self, state_dir: Path, sup_args: list[str],
                 first_sup_args: list[str] | None = None, log_stdout: bool = False,
                 console: Console | None = None,
                 settings: LauncherSettings | None = None) -> None:
        self.state_dir = state_dir
        self.settings = settings if settings is not None else LauncherSettings()
        self.log_stdout = log_stdout
        self.console = console if console is not None else Console()
        self.reactor = Reactor()
        self.children = ChildTable()
        self.keeper = SupervisorKeeper(self, sup_args, first_sup_args)
        self.dispatcher = Dispatcher(self)
        self.logs: dict[str, LogFile] = {}
        self.stopping = False
        self.exit_code: int | None = None
        self.started_at = time.time()
        self.devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        self.cgroups: Cgroups | None = None
        self.listeners = Listeners()
        self.drops = DropReports(self)
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
        self.strays = Strays(self)
        self.spare_pipes = SparePipes()  # the next spawn's output pipes, made in advance
        self.upgrader = Upgrader(self)
        self.lock_fd: int | None = None  # <state>/LOCK, held for life (kept by an upgrade)

    # ----------------------------------------------------------------- main loop
    def run(self, resume: dict[str, Any] | None = None) -> int:
        """Start the supervisor and serve until shutdown; return the exit code.

        ``resume``: the state of the launcher this one replaced in place (see
        :mod:`.upgrade`): its children, pipes, logs and sockets are taken over instead
        of starting afresh."""
        if resume is not None:
            resume = self._take_over(resume)
        self._setup_console()
        self.reactor.install_signals([signal.SIGCHLD, signal.SIGTERM, signal.SIGINT,
                                      signal.SIGHUP, signal.SIGQUIT])
        if resume is None:
            self._setup_notify()
        startup.close_inherited_on_exec()
        if os.getpid() != 1:
            startup.set_child_subreaper()
        if resume is None:
            self._stop_leftovers()
            self._open_record()
            self._setup_cgroups()
        else:
            self._after_take_over()
        if self.settings.batch:
            sched.lower_wakeups()  # before the supervisor starts: see :mod:`.sched`
        unblock_signals()  # held across an upgrade's exec; nothing is blocked otherwise
        self.keeper.start()
        while self.exit_code is None:
            self.reactor.turn(self._on_signal)
            if self._record_new:
                guard(self._write_record)
            if not self.stopping:
                self.spare_pipes.refill()  # nothing to do when it is full
        guard(self.strays.final_sweep)
        if self.cgroups is not None:
            self.cgroups.close()
        if self.record is not None:
            self.record.close()
        return self.exit_code

    def _take_over(self, state: dict[str, Any]) -> dict[str, Any] | None:
        """Restore the replaced launcher's state; None (start afresh) if that fails."""
        try:
            restore(self, state)
        except Exception as exc:
            print(f"corral-launcher: cannot take over from the launcher this one replaced "
                  f"({exc!r}); stopping what it ran and starting afresh", file=sys.stderr)
            self.reactor = Reactor()
            self.children = ChildTable()
            self.logs = {}
            self.listeners = Listeners()
            self.record = None
            self.console.log = None
            return None
        return state

    def _after_take_over(self) -> None:
        """After an upgrade in place: what the exec cut short (exits during it, timers)."""
        self.reap()
        self.drops.resume()
        if self.notifier is not None and self.notifier.watchdog is not None:
            self._ping_watchdog()
        if self.cgroups is not None:
            # Leaves released just before the exec were to be removed by its timers.
            busy = {child.cgroup for child in self.children.values()}
            for path in self.cgroups.stale():
                if path not in busy:
                    self._remove_cgroup(path, CGROUP_RMDIR_FIRST)
        self.strays.sweep_soon()

    def resumed(self, previous: dict[str, Any]) -> None:
        """Say that this launcher took over from ``previous`` (its release and protocol)."""
        print(f"corral-launcher: upgraded in place (pid {self.pid}) from corral "
              f"{previous.get('corral')} to {corral.__version__} (launcher protocol "
              f"{previous.get('protocol')} to {m.PROTOCOL_VERSION}); {len(self.children)} "
              f"service process{'es' if len(self.children) != 1 else ''} kept",
              file=sys.stderr)

    def _on_signal(self, signum: int) -> None:
        if signum == signal.SIGCHLD:
            self.reap()
        elif signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            self.begin_shutdown(force=self.stopping)
        elif signum == signal.SIGHUP:
            self.keeper.on_hangup()

    def next_mark(self, name: str) -> str:
        """A new instance mark for a process named ``name`` (see :mod:`.procs`)."""
        return procs.make_mark(name, self.ident, next(self._marks))

    def record_later(self, pid: int, entry: record.Entry) -> None:
        """Add the process ``pid`` just spawned to the children record at the end of this
        loop turn (see :meth:`_write_record`)."""
        self._record_new.append((pid, entry))

    def _setup_console(self) -> None:
        console = self.console
        console.install()
        if console.log is None:
            console.open_log(str(paths.logs_dir(self.state_dir) / LOG_NAME))
        assert console.log is not None
        console.log.on_drop = self.drops.log_dropping
        for echo in console.echoes():
            echo.on_drop = self.drops.echo_dropped
            echo.on_pending = self.drops.watch_echo

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
                sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
                for sig in self.reactor.signals))
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
        sup = self.keeper.sup
        lines = []
        for pid, draft in new:
            holder = self.children.get(pid) or (
                sup if sup is not None and sup.proc.pid == pid else None)
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
                self.record.compact([h.entry.encode() for h in (*self.children.values(), sup)
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
        self.reactor.call_later(delay, lambda: self._remove_cgroup(path, delay * 2))

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
        self.reactor.call_later(notifier.watchdog / 2, self._ping_watchdog)

    def tell(self, **fields: str) -> None:
        """Notify the service manager, when there is one."""
        if self.notifier is not None:
            self.notifier.send(**fields)

    # ------------------------------------------------------------ signalling
    def signal_all(self, child: Child, signum: int, strays: list[int]) -> None:
        """Signal the child's process group, its ``strays`` and, with a cgroup, every
        process in it (a daemon that left the group gets the stop signal too, as with
        systemd)."""
        procs.killpg(child.pid, signum)
        for pid in strays:
            procs.kill(pid, signum)
        if self.cgroups is not None and child.cgroup:
            for pid in self.cgroups.procs(child.cgroup):
                procs.kill(pid, signum)

    def kill_all(self, child: Child) -> None:
        """SIGKILL the running child's process group, its strays and its whole cgroup."""
        strays = self.strays.of(child)  # found first, while the tree is intact
        self.strays.note(child, strays)
        if self.cgroups is not None and child.cgroup:
            self.cgroups.kill(child.cgroup)
        procs.killpg(child.pid, signal.SIGKILL)
        for pid in strays:
            procs.kill(pid, signal.SIGKILL)

    def _kill_strays(self, child: Child) -> None:
        """SIGKILL what is left of the exited ``child``'s instance outside its process
        group (see :meth:`.Strays.of`); its main process is not reaped yet."""
        strays = self.strays.of(child, exiting=True)
        self.strays.note(child, strays)
        for pid in strays:
            procs.kill(pid, signal.SIGKILL)

    # ------------------------------------------------------------------- reaping
    def reap(self) -> None:
        """Reap every child that has exited: supervisor, services and orphans alike.

        Each exit is looked at before it is reaped (``WNOWAIT``): a service's restart
        starts first (see :meth:`_on_child_exit`), and the others are reaped at once."""
        while True:
            try:
                found = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if found is None:
                return
            pid = found.si_pid
            if pid in self.children:
                self._on_child_exit(self.children.remove(pid))
                continue
            reaped, status = os.waitpid(pid, os.WNOHANG)
            if reaped != pid:
                return  # not ours to reap after all (cannot happen): never spin on it
            if self.keeper.sup is not None and pid == self.keeper.sup.proc.pid:
                self.keeper.on_exit(status)
            elif pid == self.upgrader.checking:
                self.upgrader.on_check_exit(status)
            else:
                self.strays.reaped(pid)

    def _on_child_exit(self, child: Child) -> None:
        """A service process exited: carry out its standing order, reap it, report it.

        The restart path: the exited process is still a zombie while its restart starts,
        so that nothing but what the restart needs comes first (its strays, reaping, pipes
        and reports follow), and so that its pid and process group id cannot be reused by
        then.
        """
        # Leftovers of the process group (grandchildren) go with their leader, as with
        # systemd's control-group kill: a restarted service must find its ports free.
        # With a cgroup, that is every descendant, daemons that called setsid() included
        # (and before a restart may reuse the leaf).
        oom_killed: bool | None = None
        if self.cgroups is not None and child.cgroup:
            now = self.cgroups.oom_kills(child.cgroup)
            if now is not None and child.oom_base is not None:
                oom_killed = now > child.oom_base
            self.cgroups.kill(child.cgroup)
        procs.killpg(child.pid, signal.SIGKILL)
        checked = self.dispatcher.exited(child.pid)
        ran_ms = (time.time() - child.started_at) * 1000
        order, then, cooled = (None, None, False) if self.stopping else \
            self.children.take_order(child, ran_ms)
        if self.cgroups is not None and child.cgroup:
            self.cgroups.release(child.cgroup, child.pid)  # a restart may reuse the leaf
        spawns = self.children.spawns[child.name]
        report = self.dispatcher.respawn(child, then, checked) if order == 0 else None
        # Without a cgroup, what the instance left outside its group (a daemon that called
        # setsid()) is looked for among the launcher's orphans once the restart has started:
        # that look cost a restart ~0.05 ms before its spawn.  Its SIGKILL still comes
        # before the new process has finished its exec, and the new process is a known
        # child by then (never taken for an orphan: it carries a mark of its own).
        if not child.cgroup:
            self._kill_strays(child)
        # Then the old process is reaped, its pipes drained (its last lines still reach
        # the log before any of the new one's, which are read on a later turn), and the
        # reports made, in their order.
        _, status = os.waitpid(child.pid, 0)  # a zombie: it returns at once
        code = os.waitstatus_to_exitcode(status)
        for reader in child.readers:
            reader.drain()
        exited = self.children.exited(child, code, oom_killed, order, cooled, spawns)
        respawned = self.children.exits.add(report) if report is not None else None
        for rid in child.terminate_waiters:
            terminated: m.Terminated = {
                "type": m.TERMINATED, "id": rid,
                "method": m.KILLED if child.killed else m.GRACEFUL,
                "exit_code": exited["exit_code"], "signal": exited["signal"]}
            if oom_killed is not None:
                terminated["oom_killed"] = oom_killed
            if child.strays:
                terminated["strays"] = sorted(child.strays)
            self.keeper.send(terminated)
        if self.keeper.sup is not None and self.keeper.sup.link.greeted:
            self.keeper.send(exited)
            if respawned is not None:
                self.keeper.send(respawned)
        if self.cgroups is not None and child.cgroup:
            # Removed later still (unless a restart owns it again meanwhile).
            leaf = child.cgroup
            self.reactor.call_later(CGROUP_LINGER,
                                    lambda: self._remove_cgroup(leaf, CGROUP_RMDIR_FIRST))
        if order is not None and order > 0:
            self.respawn_later(Respawn(child, order, time.monotonic(), ran_ms, then))
        if self.stopping and not self.children and self.keeper.sup is None:
            self.exit_code = self.final_code

    # ---------------------------------------------------------- standing orders
    def respawn_later(self, waiting: Respawn) -> None:
        """Respawn ``waiting.child`` once its order's delay is over (unless the order
        changes meanwhile: see :meth:`.children.ChildTable.order`)."""
        self.children.respawns[waiting.child.pid] = waiting

        def due() -> None:
            if (self.children.respawns.get(waiting.child.pid) is waiting
                    and waiting.due_in(time.monotonic()) <= 0):
                del self.children.respawns[waiting.child.pid]
                self._respawn(waiting)
        self.reactor.call_later(max(0.0, waiting.due_in(time.monotonic())), due)

    def _respawn(self, waiting: Respawn) -> None:
        """Carry out a standing order now, and report it like an exit."""
        report = self.children.exits.add(self.dispatcher.respawn(waiting.child,
                                                                 waiting.then))
        if self.keeper.sup is not None and self.keeper.sup.link.greeted:
            self.keeper.send(report)

    # ------------------------------------------------------------------ shutdown
    final_code = 0

    def begin_shutdown(self, force: bool, final_code: int = 0) -> None:
        """Graceful: ask the supervisor to stop services; else stop them ourselves.

        A second TERM/INT (``force``) kills every process group at once.
        """
        if force:
            print("corral-launcher: forced shutdown: killing every service", file=sys.stderr)
            for child in self.children.values():
                self.kill_all(child)
            if self.keeper.sup is not None:
                procs.kill(self.keeper.sup.proc.pid, signal.SIGKILL)
            return
        if self.stopping:
            return
        self.stopping = True
        self.final_code = final_code
        self.tell(STOPPING="1", STATUS="stopping services")
        bound = self.settings.shutdown_timeout
        if self.keeper.sup is not None and not self.keeper.sup.link.closed:
            # Queued now even before Hello: the supervisor reads it once it is greeted.
            if self.keeper.sup.link.greeted:
                self.keeper.send({"type": m.SHUTDOWN})
            self.reactor.call_later(bound, self._shutdown_overdue)
        else:
            if self.keeper.sup is not None:
                procs.kill(self.keeper.sup.proc.pid, signal.SIGKILL)
            self.stop_remaining()

    def _shutdown_overdue(self) -> None:
        if self.keeper.sup is not None:
            print("corral-launcher: the supervisor did not finish stopping in time; "
                  "killing it", file=sys.stderr)
            procs.kill(self.keeper.sup.proc.pid, signal.SIGKILL)

    def stop_remaining(self) -> None:
        """Stop services the supervisor did not (reverse start order), then exit."""
        if not self.children:
            if self.keeper.sup is None:
                self.exit_code = self.final_code
            return
        for child in reversed(list(self.children.values())):
            strays = self.strays.of(child)
            self.strays.note(child, strays)
            self.signal_all(child, signal.SIGTERM, strays)
            self.signal_all(child, signal.SIGCONT, strays)

        def kill_rest() -> None:
            for child in self.children.values():
                self.kill_all(child)
        self.reactor.call_later(FALLBACK_STOP_TIMEOUT, kill_rest)
