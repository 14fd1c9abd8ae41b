"""Request dispatch: each protocol request from the supervisor, turned into the
launcher's action and its reply.  STDLIB ONLY.

:meth:`Dispatcher.handle_request` is the :class:`.server.Link`'s request handler.  It
returns the reply, or None when there is none now (``Ack``) or it comes later
(``Terminate``: once the process has exited).  Bad input is an ``Error{BadRequest}``
reply saying what is wrong, never an exception; the launcher's state is then untouched.
See :mod:`corral.protocol.messages` for the messages.
"""

from __future__ import annotations

import os
import selectors
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import corral
from corral.protocol import defaults
from corral.protocol import messages as m
from corral.protocol.standing import BadOrder, StandingOrder

from . import procs, record
from .children import Child
from .listeners import ListenError
from .logfile import LogFile
from .output import RECENT, PipeReader
from .server import Message
from .spawn import SpawnError, SpawnRequest, spawn

if TYPE_CHECKING:
    from .pid1 import Launcher


LogSettings = tuple[str, int, int, bool, bool | None]  # see log_settings()


@dataclass
class Checked:
    """A Spawn request as checked: kept with its child for a respawn of the same request,
    which then starts with no second check (a few tens of µs on the restart path)."""

    req: SpawnRequest
    log: LogSettings


class Dispatcher:
    """Answers the supervisor's requests on behalf of ``launcher``."""

    def __init__(self, launcher: Launcher) -> None:
        self.launcher = launcher
        self.escalations: dict[int, float] = {}  # pid -> when a Terminate escalates to KILL
        self.checked: dict[int, Checked] = {}  # pid -> its Spawn, checked

    def exited(self, pid: int) -> Checked | None:
        """The child ``pid`` was reaped: its Spawn as checked, for a respawn."""
        return self.checked.pop(pid, None)

    def handle_request(self, msg: Message) -> m.Reply | None:
        """Answer one request from the supervisor (see :mod:`corral.protocol.messages`)."""
        launcher = self.launcher
        kind, rid = msg.get("type"), msg.get("id")
        if kind == m.HELLO:
            return self._hello(rid, msg.get("version"))
        if kind == m.SPAWN:
            return self._spawn(msg)
        if kind == m.SIGNAL:
            return self._signal(msg)
        if kind == m.TERMINATE:
            return self._terminate(msg)
        if kind == m.LIST:
            return {"type": m.CHILDREN, "id": rid, "children": launcher.children.listing(),
                    "listeners": launcher.listeners.describe(),
                    "respawns": launcher.children.waiting(time.monotonic())}
        if kind == m.LISTEN:
            return self._listen(msg)
        if kind == m.UNLISTEN:
            name = msg.get("name")
            if not isinstance(name, str):
                return m.error(rid, m.E_BAD_REQUEST, "Unlisten needs a 'name'")
            return {"type": m.OK, "id": rid, "existed": launcher.listeners.unlisten(name)}
        if kind == m.ACK:
            launcher.children.exits.ack(msg.get("seq"))
            return None
        if kind == m.NOTIFY:
            return self._notify(msg)
        if kind == m.UPGRADE:
            return launcher.upgrader.request(rid)
        if kind == m.ORDER:
            return self._order(msg)
        return m.error(rid, m.E_BAD_REQUEST, f"unknown message type {kind!r}")

    def _hello(self, rid: Any, theirs: Any) -> m.HelloOk | m.Error:
        launcher = self.launcher
        keeper = launcher.keeper
        if not m.compatible(m.PROTOCOL_VERSION, theirs):
            return keeper.refuse(rid, theirs)
        keeper.greeted()
        call_later = launcher.reactor.call_later
        call_later(0, self._replay_exits)
        call_later(0, launcher.drops.replay)
        if launcher.stopping:
            call_later(0, lambda: keeper.send({"type": m.SHUTDOWN}))
        return {"type": m.HELLO_OK, "id": rid, "version": m.PROTOCOL_VERSION,
                "launcher_pid": os.getpid(), "started_at": launcher.started_at,
                "notify": launcher.notifier is not None,
                "corral_version": corral.__version__}

    def _listen(self, msg: Message) -> m.Listening | m.Error:
        rid, name, host, port = msg.get("id"), msg.get("name"), msg.get("host"), msg.get("port")
        if (not isinstance(name, str) or not isinstance(host, str)
                or not isinstance(port, int) or isinstance(port, bool)):
            return m.error(rid, m.E_BAD_REQUEST,
                           "Listen needs 'name' and 'host' (strings) and 'port' (an integer)")
        try:
            listener = self.launcher.listeners.listen(name, host, port)
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
        launcher = self.launcher
        fields: dict[str, str] = {}
        notifier = launcher.notifier
        if notifier is not None and ready and not notifier.ready_sent and not launcher.stopping:
            fields["READY"] = "1"
        if status is not None and not launcher.stopping:
            fields["STATUS"] = status
        if fields:
            launcher.tell(**fields)
        return {"type": m.OK, "id": rid}

    def _replay_exits(self) -> None:
        for message in self.launcher.children.exits.pending():
            self.launcher.keeper.send(message)

    def _spawn(self, msg: Message) -> m.Spawned | m.Error:
        rid = msg.get("id")
        if self.launcher.stopping:
            return m.error(rid, m.E_BAD_REQUEST, "the launcher is shutting down")
        try:
            checked = Checked(SpawnRequest.parse(msg), log_settings(msg.get("log")))
            on_exit = parse_on_exit(msg.get("on_exit"))
        except SpawnError as exc:
            return m.error(rid, exc.code, exc.message)
        return self._start(rid, msg, checked, on_exit)

    def _start(self, rid: Any, msg: Message, checked: Checked,
               on_exit: StandingOrder | None) -> m.Spawned | m.Error:
        """Start the checked Spawn ``msg``; its reply."""
        launcher = self.launcher
        req = checked.req
        path, max_bytes, keep, stamped, to_stdout = checked.log
        mark = launcher.next_mark(req.name)
        req.env[procs.ENV_INSTANCE_ID] = mark  # what ties its descendants to it
        try:
            sockets = launcher.listeners.fds(req.listen_fds)
        except KeyError as exc:
            return m.error(rid, m.E_BAD_REQUEST,
                           f"no listening socket named {exc.args[0]!r}; send Listen first")
        cgroups = launcher.cgroups
        leaf = None
        if cgroups is not None and (req.cgroup if req.cgroup is not None
                                    else cgroups.everyone or req.memory_max is not None):
            leaf = cgroups.create(req.name)
        try:
            started = spawn(req, launcher.devnull,
                            cgroups.inside(leaf) if cgroups is not None and leaf else None,
                            sockets, launcher.spare_pipes)
        except SpawnError as exc:
            if cgroups is not None and leaf:
                cgroups.remove(leaf)
            return m.error(rid, exc.code, exc.message)
        if cgroups is not None and leaf and not cgroups.entered:
            cgroups.remove(leaf)  # the child started outside it: process group only
            leaf = None
        logfile = launcher.logs.get(path)
        if logfile is None:
            logfile = launcher.logs[path] = LogFile(path, max_bytes, keep)
            logfile.on_drop = launcher.drops.log_dropping
        logfile.max_bytes, logfile.keep = max_bytes, keep
        pid = started.pid
        self.checked[pid] = checked
        recent: deque[bytes] = deque(maxlen=RECENT)
        console = launcher.console
        echo = console.stdout if (launcher.log_stdout if to_stdout is None else to_stdout) \
            else None
        label = echo_label(req.name)
        readers = [PipeReader(started.stdout, pid, b"O", logfile, stamped, recent, echo,
                              label + b" O "),
                   PipeReader(started.stderr, pid, b"E", logfile, stamped, recent, echo,
                              label + b" E ")]
        for reader in readers:
            logfile.users += 1
            self.watch(reader)
        child = Child(name=req.name, pid=pid, argv=req.argv, started_at=time.time(),
                      readers=readers, cgroup=leaf, mark=mark, request=msg, on_exit=on_exit)
        spawns = launcher.children.add(child)
        launcher.record_later(pid, record.Entry(
            name=req.name, pid=pid, pgid=pid, start=0, mark=mark, stop_signal=req.stop_signal,
            stop_timeout=req.stop_timeout, cgroup=leaf))
        reply: m.Spawned = {"type": m.SPAWNED, "id": rid, "pid": pid,
                            "started_at": child.started_at, "cgroup": leaf,
                            "memory_max": None, "spawns": spawns}
        if cgroups is not None and leaf:
            cgroups.adopt(leaf, pid)
            # Written after the exec: the launcher was in the leaf until then.
            reply["memory_max"] = cgroups.set_memory_max(leaf, req.memory_max, req.name)
            child.oom_base = cgroups.oom_kills(leaf)
        return reply

    def watch(self, reader: PipeReader) -> None:
        """Read the pipe whenever it has output, until its end."""
        self.launcher.reactor.sel.register(reader.fd, selectors.EVENT_READ,
                                           self._pipe_callback(reader))

    def respawn(self, old: Child, order: StandingOrder | None,
                checked: Checked | None = None) -> m.Respawned:
        """Carry out ``old``'s standing order: the same Spawn again, the new child with
        ``order`` (what ``old``'s order said for it; None: it waits for the supervisor's);
        the ``Respawned`` report of it.  ``checked``: ``old``'s Spawn as checked when it
        started (see :meth:`exited`); without it the request is checked again."""
        assert old.request is not None
        if checked is None or self.launcher.stopping:
            reply = self._spawn({**old.request, "on_exit": None})
            if reply["type"] == m.SPAWNED:
                self.launcher.children[cast(m.Spawned, reply)["pid"]].on_exit = order
        else:
            reply = self._start(None, old.request, checked, order)
        report: m.Respawned = {"type": m.RESPAWNED, "name": old.name, "old_pid": old.pid}
        if reply["type"] == m.ERROR:
            refused = cast(m.Error, reply)
            report["error"] = {"code": refused["code"], "message": refused["message"]}
        else:
            reply = cast(m.Spawned, reply)
            report["pid"], report["started_at"] = reply["pid"], reply["started_at"]
            report["spawns"] = reply.get("spawns", 0)
            report["cgroup"] = reply.get("cgroup")
        return report

    def _order(self, msg: Message) -> m.Ok | m.Error:
        """``Order{pid, on_exit}``: replace the standing order of a running child, or of
        one waiting for its respawn's delay."""
        rid, pid = msg.get("id"), msg.get("pid")
        try:
            on_exit = parse_on_exit(msg.get("on_exit"))
        except SpawnError as exc:
            return m.error(rid, exc.code, exc.message)
        if not isinstance(pid, int) or isinstance(pid, bool):
            return m.error(rid, m.E_BAD_REQUEST, "Order needs a 'pid' (an integer)")
        launcher = self.launcher
        waiting = launcher.children.respawns.get(pid)
        if not launcher.children.order(pid, on_exit):
            return m.error(rid, m.E_NO_SUCH_PROCESS,
                           f"no service process with pid {pid}, and no respawn of one waits")
        if waiting is not None and launcher.children.respawns.get(pid) is waiting:
            launcher.respawn_later(waiting)  # at its new time
        return {"type": m.OK, "id": rid}

    def _pipe_callback(self, reader: PipeReader) -> Callable[[int], None]:
        sel = self.launcher.reactor.sel

        def on_readable(mask: int) -> None:
            if not reader.read():
                sel.unregister(reader.fd)
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
        if not isinstance(pid, int) or pid not in self.launcher.children:
            return m.error(rid, m.E_NO_SUCH_PROCESS, f"no service process with pid {pid}")
        if msg.get("group"):
            procs.killpg(pid, signum)
        else:
            procs.kill(pid, signum)
        return {"type": m.OK, "id": rid}

    def _terminate(self, msg: Message) -> m.Terminated | m.Error | None:
        launcher = self.launcher
        rid, pid = msg.get("id"), msg.get("pid")
        timeout = msg.get("timeout", defaults.STOP_TIMEOUT)
        try:
            signum = m.signal_number(msg.get("signal", defaults.STOP_SIGNAL))
        except ValueError as exc:
            return m.error(rid, m.E_BAD_REQUEST, str(exc))
        if not isinstance(timeout, (int, float)) or timeout < 0:
            return m.error(rid, m.E_BAD_REQUEST, "'timeout' must be a number >= 0")
        if isinstance(pid, int):
            launcher.children.cancel_order(pid)  # a stop cancels the order first
        child = launcher.children.get(pid) if isinstance(pid, int) else None
        if child is None:
            done = launcher.children.recent_exits.get(pid) if isinstance(pid, int) else None
            return {"type": m.TERMINATED, "id": rid, "method": m.ALREADY_EXITED,
                    "exit_code": done.get("exit_code") if done else None,
                    "signal": done.get("signal") if done else None}
        child.terminate_waiters.append(rid)
        strays = launcher.strays.of(child)
        launcher.strays.note(child, strays)
        launcher.signal_all(child, signum, strays)
        if signum not in (signal.SIGKILL, signal.SIGCONT):
            # A stopped process must see the signal.
            launcher.signal_all(child, signal.SIGCONT, strays)
        self.escalate_later(child, float(timeout))
        return None

    def escalate_later(self, child: Child, delay: float) -> None:
        """KILL ``child`` (and all that is its) ``delay`` seconds from now if it still runs."""
        launcher = self.launcher
        deadline = self.escalations[child.pid] = time.time() + delay

        def escalate() -> None:
            if self.escalations.get(child.pid) == deadline:
                del self.escalations[child.pid]
            if launcher.children.get(child.pid) is child:
                child.killed = True
                launcher.kill_all(child)
        launcher.reactor.call_later(delay, escalate)


def echo_label(name: str) -> bytes:
    """How a child's records start on the launcher's stdout: ``web[0]`` for ``web/0``
    and ``web/0@3`` (the generation is corral's own business), the name itself otherwise."""
    service, _, instance = name.partition("/")
    instance = instance.partition("@")[0]
    return (f"{service}[{instance}]" if instance else service).encode(errors="replace")


def parse_on_exit(value: Any) -> StandingOrder | None:
    """Check a standing order (``Spawn.on_exit``, ``Order.on_exit``); None for null (wait
    for the supervisor)."""
    try:
        return StandingOrder.parse(value)
    except BadOrder as exc:
        raise SpawnError(m.E_BAD_REQUEST, str(exc)) from None


def log_settings(log: Any) -> tuple[str, int, int, bool, bool | None]:
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
