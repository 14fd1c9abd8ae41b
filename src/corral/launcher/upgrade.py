"""The launcher upgrades in place: same pid, same children, the installed code.  STDLIB ONLY.

``corral sup upgrade`` (after installing a new corral) sends the launcher ``Upgrade{}``.
The launcher then:

1. checks the installed code: ``python -m corral.launcher --check-upgrade`` (with the
   environment the new launcher will have) imports every part and prints its protocol
   version, its release and the hand-over state versions it reads.  A check that fails
   is ``Error{UpgradeFailed}`` with its last line of stderr; another protocol major
   version, or a state it cannot read, is ``Error{Incompatible}``.  Either way nothing
   changes.  The check runs beside the loop, never blocking it;
2. answers ``Upgrading``; the supervisor that asked exits (as for ``sup restart``), and
   once it is reaped (or killed after :data:`SUP_EXIT_WAIT`),
3. drains every service pipe (what the services write meanwhile waits in the pipes),
   writes its whole state as JSON to a memfd (:func:`capture`), clears close-on-exec on
   exactly the fds that must survive (the state, the pipes' read ends, open log files,
   held listening sockets, the children record, the state directory's lock), blocks its
   stop signals and ``SIGCHLD`` (the mask survives ``execve``; they are delivered once the
   new code has its handlers) and ``execve``s ``sys.executable -m corral.launcher`` with its
   own arguments and :data:`ENV_STATE_FD` naming the memfd;
4. the new code (:func:`restore`) takes over the same objects, marks every fd close-on-exec
   again, reaps what exited during the exec, and starts a supervisor of the new code, which
   reattaches to the services as after any supervisor restart.

The supervisor is restarted, not kept: ``sup upgrade`` upgrades it too, and a supervisor
that outlived its launcher's exec would run the old code against the new protocol.

Which code runs: whatever ``sys.executable -m corral.launcher`` finds in the launcher's
environment (the installed corral).  ``CORRAL_UPGRADE_PYTHONPATH``, read once when the
launcher starts, is the ``PYTHONPATH`` of the upgraded launcher (and so of its supervisor
and balancer): a build beside the installed one, as the tests use.  It is set by whoever
starts the launcher, never by an API request: an API that could name the code the
launcher execs would let its callers run anything as the launcher's user.

The children are handed over generically: every field of :class:`.children.Child` and
every attribute of :class:`.children.ChildTable` is written (bytes, sets, deques, maps
with non-string keys and dataclasses are tagged; see :func:`encode`), so a field added
there travels without changes here, as long as it holds data (not a callable).

If the ``execve`` itself fails, the launcher goes on with the code it runs and starts a
supervisor again.  If the installed code cannot be imported after all (it changed since
the check), the exec'd :data:`BOOTSTRAP` execs the code the launcher ran, from its own
environment, which takes the state over instead (``sup upgrade`` then says the launcher
went back).  If the new code cannot take the state over (a bug), it says so, stops every
process the children record names (nothing may run twice), and starts afresh.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import dataclasses
import itertools
import json
import os
import signal
import socket
import sys
import time
import types
import typing
from typing import TYPE_CHECKING, Any

import corral
from corral.protocol import messages as m
from corral.protocol.standing import StandingOrder

from . import record, sched
from .children import Child, ChildTable, Respawn
from .echo import Echo
from .logfile import LogFile
from .output import RECENT, PipeReader
from .sdnotify import Notifier

if TYPE_CHECKING:
    from .keeper import SupervisorProc
    from .pid1 import Launcher

#: The environment variable naming the inherited fd that holds the hand-over state.
ENV_STATE_FD = "CORRAL_UPGRADE_STATE_FD"
#: The ``PYTHONPATH`` of the upgraded launcher (read once, when the launcher starts).
ENV_PYTHONPATH = "CORRAL_UPGRADE_PYTHONPATH"
#: The old launcher's environment (JSON), for the bootstrap to go back to.
ENV_FALLBACK = "CORRAL_UPGRADE_FALLBACK"
#: What the exec runs (``python -c BOOTSTRAP -m corral.launcher ARGS``: ``ps`` still says
#: what it is): the installed launcher, or, when that cannot even be imported (changed
#: since its check), the code this launcher ran, from its own environment, once.
BOOTSTRAP = f"""\
import os, sys
del sys.argv[1:3]
try:
    from corral.launcher.__main__ import main
except BaseException as exc:
    back = os.environ.get({ENV_FALLBACK!r})
    if not back:
        raise
    print(f"corral-launcher: the installed corral cannot start ({{exc!r}}); going back to "
          "the code this launcher ran", file=sys.stderr, flush=True)
    import json
    os.execve(sys.executable, [sys.executable, "-m", "corral.launcher", *sys.argv[1:]],
              json.loads(back))
sys.exit(main())
"""
#: The hand-over state's format; ``--check-upgrade`` says which ones the code reads.
STATE_VERSION = 1
#: How long the check of the installed code may take before it is killed (and refused).
CHECK_TIMEOUT = 60.0
#: How long the supervisor that asked has to exit before it is killed.
SUP_EXIT_WAIT = 15.0
#: Held across ``execve``, delivered to the new code once its handlers are in place.
HELD_SIGNALS = (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)


def check_report() -> dict[str, Any]:
    """What ``--check-upgrade`` prints: this code's protocol version, release and the
    hand-over state versions it reads."""
    return {"protocol": m.PROTOCOL_VERSION, "corral": corral.__version__,
            "states": [STATE_VERSION]}


class Upgrader:
    """The launcher's side of ``Upgrade``: check, wait for the supervisor, exec."""

    def __init__(self, launcher: Launcher) -> None:
        self.launcher = launcher
        self.pythonpath = os.environ.pop(ENV_PYTHONPATH, None)
        self.checking: int | None = None  # the check's pid
        self._check_files: tuple[int, int] = (-1, -1)
        self._asker: tuple[SupervisorProc, Any] | None = None  # who asked, and its id
        self.ready: dict[str, Any] | None = None  # the check passed: exec when the sup is gone

    def exec_env(self) -> dict[str, str]:
        """The environment of the check and of the new launcher."""
        env = dict(os.environ)
        if self.pythonpath is not None:
            env["PYTHONPATH"] = self.pythonpath
            env[ENV_PYTHONPATH] = self.pythonpath  # read again by the new launcher
        return env

    # ------------------------------------------------------------------ request
    def request(self, rid: Any) -> m.Error | None:
        """``Upgrade{}``: start the check; the answer comes when it is done."""
        launcher = self.launcher
        if launcher.stopping:
            return m.error(rid, m.E_BAD_REQUEST, "the launcher is shutting down")
        if self.checking is not None or self.ready is not None:
            return m.error(rid, m.E_BAD_REQUEST, "an upgrade is already under way")
        sup = launcher.keeper.sup
        if sup is None:
            return m.error(rid, m.E_BAD_REQUEST, "no supervisor asked")
        out = os.memfd_create("corral-check-out")
        err = os.memfd_create("corral-check-err")
        argv = [sys.executable, "-m", "corral.launcher", "--check-upgrade"]
        try:
            pid = os.posix_spawn(sys.executable, argv, self.exec_env(), file_actions=[
                (os.POSIX_SPAWN_DUP2, launcher.devnull, 0), (os.POSIX_SPAWN_DUP2, out, 1),
                (os.POSIX_SPAWN_DUP2, err, 2)], setsid=True)
        except OSError as exc:
            os.close(out)
            os.close(err)
            return m.error(rid, m.E_UPGRADE_FAILED,
                           f"cannot run {sys.executable}: {exc.strerror or exc}")
        self.checking, self._check_files, self._asker = pid, (out, err), (sup, rid)
        launcher.reactor.call_later(CHECK_TIMEOUT, lambda: self._check_overdue(pid))
        return None

    def _check_overdue(self, pid: int) -> None:
        if self.checking == pid:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)

    def on_check_exit(self, status: int) -> None:
        """The check was reaped: refuse, or answer ``Upgrading`` and wait for the supervisor."""
        launcher = self.launcher
        self.checking = None
        out_fd, err_fd = self._check_files
        out, err = _read_all(out_fd), _read_all(err_fd)
        os.close(out_fd)
        os.close(err_fd)
        asker, self._asker = self._asker, None
        assert asker is not None
        sup, rid = asker
        if launcher.keeper.sup is not sup or launcher.stopping:
            print("corral-launcher: upgrade abandoned: the supervisor that asked for it is "
                  "gone", file=sys.stderr)
            return
        code = os.waitstatus_to_exitcode(status)
        reply = self._verdict(rid, code, out, err)
        launcher.keeper.send(reply)
        if reply["type"] != m.UPGRADING:
            print(f"corral-launcher: upgrade refused: {reply.get('message')}", file=sys.stderr)
            return
        print(f"corral-launcher: upgrading to corral {reply.get('corral_version')} (launcher "
              f"protocol {reply.get('version')}) once the supervisor has exited",
              file=sys.stderr)
        self.ready = dict(reply)
        launcher.reactor.call_later(SUP_EXIT_WAIT, lambda: self._sup_overdue(sup))

    def _verdict(self, rid: Any, code: int, out: bytes, err: bytes) -> m.Upgrading | m.Error:
        what = f"{sys.executable} -m corral.launcher --check-upgrade"
        lines = [line for line in err.decode(errors="replace").splitlines() if line.strip()]
        if code != 0:
            why = lines[-1].strip() if lines else "no message"
            how = f"exit code {code}" if code >= 0 else f"killed by SIG{m.signal_name(-code)}"
            return m.error(rid, m.E_UPGRADE_FAILED,
                           f"the installed corral fails its check ({what}: {how}): {why}; "
                           "nothing was changed")
        try:
            report = json.loads(out)
            theirs, release, states = report["protocol"], report["corral"], report["states"]
        except (ValueError, KeyError, TypeError):
            return m.error(rid, m.E_UPGRADE_FAILED,
                           f"the installed corral's check ({what}) printed no version report; "
                           "nothing was changed")
        if not m.compatible(m.PROTOCOL_VERSION, theirs):
            return m.error(rid, m.E_INCOMPATIBLE,
                           f"the installed corral {release} speaks launcher protocol {theirs!r} "
                           f"and this launcher {m.PROTOCOL_VERSION!r} (corral "
                           f"{corral.__version__}): incompatible; nothing was changed")
        if not isinstance(states, list) or STATE_VERSION not in states:
            return m.error(rid, m.E_INCOMPATIBLE,
                           f"the installed corral {release} cannot take over this launcher's "
                           f"state (format {STATE_VERSION}; it reads {states!r}); nothing was "
                           "changed")
        return {"type": m.UPGRADING, "id": rid, "version": str(theirs),
                "corral_version": str(release)}

    def _sup_overdue(self, sup: SupervisorProc) -> None:
        if self.ready is not None and self.launcher.keeper.sup is sup:
            print(f"corral-launcher: the supervisor (pid {sup.proc.pid}) did not exit for the "
                  f"upgrade within {SUP_EXIT_WAIT:g} s; killing it", file=sys.stderr)
            with contextlib.suppress(OSError):
                os.kill(sup.proc.pid, signal.SIGKILL)

    def on_supervisor_exit(self) -> bool:
        """The supervisor is gone: True if that was for an upgrade (which now goes on)."""
        if self.ready is None:
            return False
        self.launcher.reactor.call_later(0, self.proceed)
        return True

    # --------------------------------------------------------------------- exec
    def proceed(self) -> None:
        """Hand everything over to the installed code; on return the exec failed and this
        launcher goes on (with a supervisor of its own code)."""
        launcher = self.launcher
        target, self.ready = self.ready, None
        if target is None or launcher.stopping or launcher.keeper.sup is not None:
            return
        for child in launcher.children.values():
            for reader in child.readers:
                reader.drain()
        for echo in launcher.console.echoes():
            echo.flush()
        try:
            state, kept = capture(launcher)
            data = json.dumps(state, separators=(",", ":")).encode()
        except (TypeError, ValueError) as exc:  # a field that cannot be handed over: a bug
            print(f"corral-launcher: cannot hand the launcher's state over ({exc}); carrying "
                  f"on with corral {corral.__version__}", file=sys.stderr)
            launcher.keeper.start()
            return
        fd = os.memfd_create("corral-upgrade-state", 0)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.lseek(fd, 0, os.SEEK_SET)
        kept.append(fd)
        for each in kept:
            os.set_inheritable(each, True)
        env = self.exec_env()
        env[ENV_STATE_FD] = str(fd)
        back = dict(os.environ)
        back[ENV_STATE_FD] = str(fd)
        if self.pythonpath is not None:
            back[ENV_PYTHONPATH] = self.pythonpath
        env[ENV_FALLBACK] = json.dumps(back)
        argv = [sys.executable, "-c", BOOTSTRAP, "-m", "corral.launcher", *sys.argv[1:]]
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, HELD_SIGNALS)
        lowered = sched.for_children() is not None
        sched.restore()  # the next build starts as a fresh launcher does
        try:
            os.execve(sys.executable, argv, env)
        except OSError as exc:
            if lowered:
                sched.lower_wakeups()
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            for each in kept:
                with contextlib.suppress(OSError):
                    os.set_inheritable(each, False)
            os.close(fd)
            print(f"corral-launcher: cannot execute {sys.executable} for the upgrade "
                  f"({exc.strerror or exc}); carrying on with corral {corral.__version__}",
                  file=sys.stderr)
            launcher.keeper.start()


def _read_all(fd: int) -> bytes:
    chunks = []
    offset = 0
    while chunk := os.pread(fd, 65536, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def read_state(fd: int) -> dict[str, Any]:
    """The hand-over state from the inherited ``fd`` (closed here).

    Raises:
        ValueError: it is not a state this code reads (one line says why).
    """
    try:
        data = _read_all(fd)
    finally:
        os.close(fd)
    state = json.loads(data)
    version = state.get("version") if isinstance(state, dict) else None
    if version != STATE_VERSION:
        raise ValueError(f"hand-over state of format {version!r}, this launcher reads "
                         f"{STATE_VERSION}")
    assert isinstance(state, dict)
    return state


# ------------------------------------------------------------------- encoding
def encode(value: Any) -> Any:
    """``value`` as JSON: bytes, sets, deques, tuples, maps with non-string keys and
    dataclasses are tagged (``{"$b": base64}``, ``{"$set": [...]}``, ``{"$map": [[k, v]]}``,
    ``{"$dc": {field: value}}``); see :func:`decode`."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$b": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, (set, frozenset)):
        return {"$set": [encode(v) for v in value]}
    if isinstance(value, (list, tuple, collections.deque)):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            return {k: encode(v) for k, v in value.items()}
        return {"$map": [[encode(k), encode(v)] for k, v in value.items()]}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"$dc": {f.name: encode(getattr(value, f.name))
                        for f in dataclasses.fields(value)}}
    raise TypeError(f"cannot hand over a {type(value).__name__}")


def decode(value: Any, hint: Any = None) -> Any:
    """The inverse of :func:`encode`; ``hint`` (a type annotation) rebuilds dataclasses and
    the container types that JSON has no word for (deque, Counter, OrderedDict)."""
    cls = _dataclass_in(hint)
    if isinstance(value, list):
        items = [decode(v) for v in value]
        return collections.deque(items) if _origin(hint) is collections.deque else items
    if not isinstance(value, dict):
        return value
    if "$b" in value:
        return base64.b64decode(value["$b"])
    if "$set" in value:
        return {decode(v) for v in value["$set"]}
    if "$dc" in value:
        fields = {k: decode(v) for k, v in value["$dc"].items()}
        if cls is None:
            return fields
        known = {f.name: f for f in dataclasses.fields(cls)}
        hints = typing.get_type_hints(cls)
        return cls(**{k: decode(value["$dc"][k], hints.get(k)) for k in fields if k in known})
    if "$map" in value:
        pairs = [(decode(k), decode(v)) for k, v in value["$map"]]
    else:
        pairs = [(k, decode(v)) for k, v in value.items()]
    origin = _origin(hint)
    if origin is collections.Counter:
        return collections.Counter(dict(pairs))
    if origin is collections.OrderedDict:
        return collections.OrderedDict(pairs)
    return dict(pairs)


def _origin(hint: Any) -> Any:
    return typing.get_origin(hint) or hint


def _dataclass_in(hint: Any) -> type | None:
    """The dataclass ``hint`` names, alone or in a union with None."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) or \
        typing.get_origin(hint) is typing.Union else (hint,)
    for option in options:
        if isinstance(option, type) and dataclasses.is_dataclass(option):
            return option
    return None


# ---------------------------------------------------------------- the state
_LOG_SKIP = frozenset({"on_drop"})


def _log_state(log: LogFile) -> dict[str, Any]:
    return {k: encode(v) for k, v in vars(log).items() if k not in _LOG_SKIP}


def _restore_log(state: dict[str, Any]) -> LogFile:
    log = LogFile(state["path"], state["max_bytes"], state["keep"])
    for key, value in state.items():
        if hasattr(log, key):
            setattr(log, key, decode(value))
    return log


def _reader_state(reader: PipeReader, console: Any) -> dict[str, Any]:
    state = {k: encode(v) for k, v in vars(reader).items()
             if k not in ("log", "echo", "recent")}
    state["log"] = reader.log.path
    state["echo"] = ("stdout" if reader.echo is console.stdout else
                     "stderr" if reader.echo is console.stderr else None)
    state["recent"] = encode(reader.recent)
    return state


def capture(launcher: Launcher) -> tuple[dict[str, Any], list[int]]:
    """The launcher's whole state, and the fds that must survive the exec."""
    kept: list[int] = []
    console = launcher.console
    table = launcher.children
    children = []
    for child in table.values():
        fields = {f.name: getattr(child, f.name) for f in dataclasses.fields(Child)}
        readers = fields.pop("readers")
        entry = {k: encode(v) for k, v in fields.items()}
        entry["readers"] = [_reader_state(r, console) for r in readers]
        kept += [r.fd for r in readers if r.fd >= 0]
        children.append(entry)
    extra = {k: encode(v) for k, v in vars(table).items()
             if k not in ("_by_pid", "exits", "respawns")}
    # Respawns waiting for their order's delay: the exited child's fields (its pipes are
    # done) and when it exited; CLOCK_MONOTONIC runs on across the exec, so the timer is
    # armed again for what is left of the delay.
    respawns = [{"child": {f.name: encode(getattr(waiting.child, f.name))
                           for f in dataclasses.fields(Child) if f.name != "readers"},
                 "after_ms": waiting.after_ms, "exited_at": waiting.exited_at,
                 "ran_ms": waiting.ran_ms, "then": encode(waiting.then)}
                for waiting in table.respawns.values()]
    for log in [*launcher.logs.values(), *([console.log] if console.log else [])]:
        if log._fd >= 0:
            kept.append(log._fd)
    listeners = []
    for listener in launcher.listeners.by_name.values():
        listeners.append({"name": listener.name, "host": listener.host,
                          "port": listener.port, "fd": listener.sock.fileno()})
        kept.append(listener.sock.fileno())
    rec = launcher.record
    if rec is not None:
        kept.append(rec.fd)
    if launcher.lock_fd is not None:
        kept.append(launcher.lock_fd)
    notifier = launcher.notifier
    now = time.time()
    state = {
        "version": STATE_VERSION, "from": {"corral": corral.__version__,
                                           "protocol": m.PROTOCOL_VERSION},
        "started_at": launcher.started_at, "next_mark": next(launcher._marks),
        "lock_fd": launcher.lock_fd,
        "record": None if rec is None else {"path": rec.path, "fd": rec.fd,
                                            "header": rec.header.decode(),
                                            "size": rec.size, "lines": rec.lines},
        "console_log": _log_state(console.log) if console.log is not None else None,
        "echoes": {echo.label: {"buffer": encode(echo.buffer),
                                **{k: getattr(echo, k) for k in _ECHO_COUNTS}}
                   for echo in console.echoes()},
        "logs": [_log_state(log) for log in launcher.logs.values()],
        "children": children,
        "table": extra,
        "respawns": respawns,
        "exits": {"seq": table.exits._seq, "pending": encode(table.exits.pending())},
        "listeners": listeners,
        "cgroups": encode(launcher.cgroups) if launcher.cgroups is not None else None,
        "notifier": None if notifier is None else {
            "address": notifier.address, "watchdog": notifier.watchdog,
            "ready_sent": notifier.ready_sent},
        "escalations": [[pid, deadline - now]
                        for pid, deadline in launcher.dispatcher.escalations.items()],
        "backoff": launcher.keeper.backoff,
    }
    return state, kept


_ECHO_COUNTS = ("dropped_records", "dropped_bytes", "reported_records", "reported_bytes",
                "reported_gone")


def restore(launcher: Launcher, state: dict[str, Any]) -> None:
    """Take over the state :func:`capture` wrote (before the loop first turns)."""
    from .cgroup import Cgroups
    from .listeners import Listener

    console = launcher.console
    launcher.started_at = float(state["started_at"])
    launcher._marks = itertools.count(int(state["next_mark"]))
    if state["console_log"] is not None:
        console.log = _restore_log(state["console_log"])
    for echo in console.echoes():
        saved = state["echoes"].get(echo.label)
        if saved is not None:
            _restore_echo(echo, saved)
    for saved in state["logs"]:
        log = _restore_log(saved)
        log.on_drop = launcher.drops.log_dropping
        launcher.logs[log.path] = log
    hints = typing.get_type_hints(Child)
    table = launcher.children
    for saved in state["children"]:
        recent: collections.deque[bytes] | None = None
        readers = []
        for raw in saved["readers"]:
            reader = _restore_reader(launcher, raw, recent)
            recent = reader.recent
            readers.append(reader)
        fields = {k: decode(v, hints.get(k)) for k, v in saved.items()
                  if k != "readers" and k in hints}
        child = Child(readers=readers, **fields)
        child.on_exit = StandingOrder.lift(child.on_exit)  # a bare delay before 1.3
        table._by_pid[child.pid] = child
        for reader in readers:
            if reader.fd >= 0:
                launcher.dispatcher.watch(reader)
    for key, value in state["table"].items():
        if hasattr(table, key):
            setattr(table, key, decode(value, _attr_hint(table, key)))
    for saved in state.get("respawns", []):
        fields = {k: decode(v, hints.get(k)) for k, v in saved["child"].items() if k in hints}
        launcher.respawn_later(Respawn(Child(readers=[], **fields), int(saved["after_ms"]),
                                       float(saved["exited_at"]),
                                       float(saved.get("ran_ms", 0.0)),
                                       decode(saved.get("then"), StandingOrder | None)))
    table.exits._seq = int(state["exits"]["seq"])
    for message in decode(state["exits"]["pending"]):
        table.exits._pending[int(message["seq"])] = message
    for saved in state["listeners"]:
        sock = socket.socket(fileno=int(saved["fd"]))
        launcher.listeners.by_name[saved["name"]] = Listener(saved["name"], saved["host"],
                                                             int(saved["port"]), sock)
    if state["cgroups"] is not None:
        launcher.cgroups = decode(state["cgroups"], Cgroups)
    if state["record"] is not None:
        saved = state["record"]
        launcher.record = record.Writer.resume(saved["path"], int(saved["fd"]),
                                               saved["header"].encode(), int(saved["size"]),
                                               int(saved["lines"]))
    if state["notifier"] is not None:
        saved = state["notifier"]
        launcher.notifier = Notifier(saved["address"], saved["watchdog"])
        launcher.notifier.ready_sent = bool(saved["ready_sent"])
    launcher.keeper.backoff = float(state["backoff"])
    for pid, delay in state["escalations"]:
        stopping = table.get(int(pid))
        if stopping is not None:
            launcher.dispatcher.escalate_later(stopping, max(0.0, float(delay)))
    launcher.resumed(state["from"])


def _attr_hint(table: ChildTable, key: str) -> Any:
    """A container type for a table attribute JSON cannot name (Counter, OrderedDict)."""
    current = getattr(table, key)
    return type(current) if isinstance(current, (collections.Counter,
                                                 collections.OrderedDict)) else None


def _restore_echo(echo: Echo, saved: dict[str, Any]) -> None:
    for key in _ECHO_COUNTS:
        setattr(echo, key, saved[key])
    echo.buffer += decode(saved["buffer"])  # sent once the loop runs


def _restore_reader(launcher: Launcher, raw: dict[str, Any],
                    recent: collections.deque[bytes] | None) -> PipeReader:
    console = launcher.console
    log = launcher.logs[raw["log"]]
    echo = {"stdout": console.stdout, "stderr": console.stderr}.get(raw["echo"] or "")
    if recent is None:
        recent = collections.deque(decode(raw["recent"]), maxlen=RECENT)
    reader = PipeReader(int(raw["fd"]), 0, b"O", log, bool(raw["stamped"]), recent, echo)
    for key, value in raw.items():
        if key not in ("log", "echo", "recent") and hasattr(reader, key):
            setattr(reader, key, decode(value))
    return reader


def unblock_signals() -> None:
    """Let the signals held across the exec in (after the handlers are installed)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD_SIGNALS)

