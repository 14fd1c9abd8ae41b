"""The supervisor keeper: starts the supervisor, keeps one running, and holds the link
to it.  STDLIB ONLY.

The launcher contract, as far as the supervisor process goes:

- the command is ``CORRAL_SUP_BINARY`` (a path or a command line), else this Python's
  ``-m corral.supervisor``; ``--target`` and other first-start options go to the first
  supervisor only;
- its end of the link is inherited as fd ``CORRAL_LAUNCHER_FD``; its stdout and stderr
  come to the launcher's own log and stderr;
- it must say ``Hello`` within ``CORRAL_HELLO_TIMEOUT`` (default 10 s) or it is killed;
- when it exits: 84 stops every service and the launcher exits 0, 86 the same with exit
  86, ``EXIT_INCOMPATIBLE`` (or a refused ``Hello``) holds every service and starts no
  supervisor until SIGHUP; anything else starts a new one, after a backoff from 0.1 s
  doubling to 5 s while supervisors keep dying young.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import corral
from corral.protocol import messages as m

from . import procs, record, sched
from .output import PipeReader
from .server import Link

if TYPE_CHECKING:
    from .pid1 import Launcher

# A supervisor "died young" if it never said Hello (the backoff doubles from 0.1 s to 5 s
# while that goes on), or died within this long after it (restarted after 0.1 s).  One
# that got going and was killed later (an admin's kill -9, the OOM killer) is restarted
# at once: that is the path the services' API waits on.
SUP_YOUNG = 1.0
SUP_BACKOFF_MIN = 0.1
SUP_BACKOFF_MAX = 5.0
#: Send buffer of the supervisor's end of the link (see SupervisorKeeper.start).
SUP_LINK_SNDBUF = 4 * 1024 * 1024
#: The supervisor's name in the record and in its instance mark.
SUPERVISOR_NAME = ".supervisor"


@dataclass
class SupervisorProc:
    """The current supervisor process and its link."""

    proc: subprocess.Popen[bytes]
    link: Link
    started_at: float
    greeted_at: float | None = None
    output: PipeReader | None = None  # its stdout and stderr, relayed by the launcher
    entry: record.Entry | None = None  # for the children record, once it is written
    hangup: bool = False  # the launcher got SIGHUP while it ran (passed on to it)


class SupervisorKeeper:
    """Keeps a supervisor running for ``launcher`` (see the module's contract).

    ``sup`` is the current supervisor, None between one and the next.  :meth:`send`
    sends it a message (nothing when there is none, or its link is closed).
    """

    def __init__(self, launcher: Launcher, sup_args: list[str],
                 first_sup_args: list[str] | None = None) -> None:
        self.launcher = launcher
        self.sup_args = sup_args
        # Given to the first supervisor only (``--target``): later ones, after a crash or
        # an upgrade, must rebuild from the state directory, not re-apply the file.
        self.first_sup_args = first_sup_args or []
        self.sup: SupervisorProc | None = None
        self.backoff = 0.0
        # Set when a supervisor could not work with this launcher (protocol versions): the
        # line said, and no supervisor is started again until SIGHUP.
        self.refused: str | None = None
        self.held = False

    def supervisor_argv(self) -> list[str]:
        """``CORRAL_SUP_BINARY`` (a path or a command line), else this Python's supervisor."""
        base = self.launcher.settings.supervisor_base()
        first, self.first_sup_args = self.first_sup_args, []
        return [*base, "--state-dir", str(self.launcher.state_dir), *self.sup_args, *first]

    def start(self) -> None:
        launcher = self.launcher
        if launcher.stopping or self.sup is not None:
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
        mark = launcher.next_mark(SUPERVISOR_NAME)
        env[procs.ENV_INSTANCE_ID] = mark  # its hooks and checks inherit it
        try:
            proc = subprocess.Popen(self.supervisor_argv(), stdin=launcher.devnull, env=env,
                                    stdout=out_w, stderr=out_w,
                                    pass_fds=(theirs.fileno(),), start_new_session=True)
        except (OSError, subprocess.SubprocessError) as exc:
            print(f"corral-launcher: cannot start the supervisor: {exc}", file=sys.stderr)
            ours.close()
            theirs.close()
            os.close(out_r)
            os.close(out_w)
            self._schedule(young=True)
            return
        sched.reset(proc.pid)
        theirs.close()
        os.close(out_w)
        link = Link(ours, launcher.dispatcher.handle_request)
        self.sup = SupervisorProc(proc=proc, link=link, started_at=time.monotonic())
        # Recorded to be killed at once: a supervisor whose launcher died has nothing to
        # stop gracefully (its state writes are atomic).
        launcher.record_later(proc.pid, record.Entry(
            name=SUPERVISOR_NAME, pid=proc.pid, pgid=proc.pid, start=0, mark=mark,
            stop_signal="KILL", stop_timeout=0.0))
        launcher.reactor.sel.register(link.fileno(), selectors.EVENT_READ, self._on_link)
        self._relay_output(out_r, proc.pid)
        sup = self.sup
        launcher.reactor.call_later(launcher.settings.hello_timeout, lambda: self._hello_overdue(sup))

    def _relay_output(self, fd: int, pid: int) -> None:
        os.set_blocking(fd, False)
        log = self.launcher.console.log
        assert log is not None
        reader = PipeReader(fd, pid, b"E", log, stamped=True,
                            echo=self.launcher.console.stderr)
        assert self.sup is not None
        self.sup.output = reader
        sel = self.launcher.reactor.sel

        def on_readable(mask: int) -> None:
            if not reader.read():
                sel.unregister(reader.fd)
                os.close(reader.fd)
                reader.fd = -1
        sel.register(fd, selectors.EVENT_READ, on_readable)

    def _hello_overdue(self, sup: SupervisorProc) -> None:
        """Kill a supervisor that has not said ``Hello`` in time (it is hung, or not a
        corral supervisor): it is then started again like one that died young."""
        if self.sup is sup and sup.greeted_at is None and sup.proc.returncode is None:
            if self.refused is None:
                print(f"corral-launcher: the supervisor (pid {sup.proc.pid}) did not say "
                      f"Hello within {self.launcher.settings.hello_timeout:g} s; killing it", file=sys.stderr)
            procs.kill(sup.proc.pid, signal.SIGKILL)

    def greeted(self) -> None:
        """The supervisor said ``Hello`` in a version this launcher speaks."""
        assert self.sup is not None
        self.sup.link.greeted = True
        self.sup.greeted_at = time.monotonic()
        # It started well: only supervisors that keep failing before Hello back off.
        self.backoff = 0.0

    def refuse(self, rid: Any, theirs: Any) -> m.Error:
        """Refuse a supervisor of another protocol major version: say so in one line,
        keep every service, and start no new supervisor until SIGHUP."""
        line = (f"the supervisor speaks launcher protocol {theirs!r} and this launcher "
                f"{m.PROTOCOL_VERSION!r} (corral {corral.__version__}): incompatible")
        self.refused = line
        print(f"corral-launcher: {line}; services keep running, and no supervisor is "
              "started until a compatible corral is installed and the launcher gets SIGHUP",
              file=sys.stderr)
        return m.error(rid, m.E_INCOMPATIBLE, line)

    def on_hangup(self) -> None:
        """SIGHUP: pass it on to the supervisor, or try again to start a held one (also when
        the supervisor it was passed to then exits as one this launcher must hold)."""
        if self.sup is not None:
            procs.kill(self.sup.proc.pid, signal.SIGHUP)
            self.sup.hangup = True
        elif self.held:
            # A compatible supervisor may have been installed meanwhile: try again.
            self.held = False
            self.refused = None
            self.start()

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
        sel = self.launcher.reactor.sel
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if sup.link.wants_write else 0)
        if sel.get_key(sup.link.fileno()).events != events:  # an epoll_ctl per send
            sel.modify(sup.link.fileno(), events, self._on_link)

    def _forget_link(self, link: Link) -> None:
        try:
            self.launcher.reactor.sel.unregister(link.fd)
        except (KeyError, ValueError):
            pass

    def send(self, message: Mapping[str, Any]) -> None:
        if self.sup is not None and not self.sup.link.closed:
            self.sup.link.send(message)
            self.sup.link.flush()
            self._update_link_interest()

    def on_exit(self, status: int) -> None:
        """The supervisor was reaped with wait ``status``: act on its exit code."""
        launcher = self.launcher
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
        if launcher.stopping:
            launcher.stop_remaining()
            return
        if launcher.upgrader.on_supervisor_exit():
            return  # it made way for the upgrade, which starts the next one
        if self.refused is not None or code == m.EXIT_INCOMPATIBLE:
            if sup.hangup:
                # The cue to try again came while this one was on its way out (it had said
                # why, and closed its API, before it exited): take it now.
                self.refused = None
                self.start()
                return
            if self.refused is None:  # it found out itself (this launcher is older)
                print(f"corral-launcher: the supervisor cannot work with this launcher or "
                      f"its state directory (launcher protocol {m.PROTOCOL_VERSION}, corral "
                      f"{corral.__version__}); services keep running, and no supervisor is "
                      "started until the launcher gets SIGHUP", file=sys.stderr)
            self.held = True
            launcher.tell(STATUS="no supervisor: it cannot work with this launcher or its "
                                 "state directory; services keep running")
            return
        if code in (m.EXIT_DONE, m.EXIT_FATAL):
            why = "is done" if code == m.EXIT_DONE else "hit a fatal error"
            print(f"corral-launcher: the supervisor {why} (exit {code}); stopping services",
                  file=sys.stderr)
            launcher.begin_shutdown(force=False, final_code=0 if code == m.EXIT_DONE else code)
            return
        if code != 0:
            print(f"corral-launcher: the supervisor died ({describe(code)}); restarting it",
                  file=sys.stderr)
            launcher.tell(STATUS=f"the supervisor died ({describe(code)}); restarting it")
        self._schedule(young=code != 0 and young)

    def _schedule(self, young: bool) -> None:
        if young:
            self.backoff = min(SUP_BACKOFF_MAX, max(SUP_BACKOFF_MIN, self.backoff * 2))
        else:
            self.backoff = 0.0
        self.launcher.reactor.call_later(self.backoff, self.start)


def describe(code: int) -> str:
    """An exit code as said in a line: ``exit code 3``, ``killed by SIGKILL``."""
    return f"exit code {code}" if code >= 0 else f"killed by SIG{m.signal_name(-code)}"
