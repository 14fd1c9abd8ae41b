"""Message types, error codes and process contracts of the launcher protocol.  STDLIB ONLY.

Requests (supervisor -> launcher) carry an ``id`` that the reply echoes, so requests
may be pipelined.  Unasked messages (launcher -> supervisor) carry no ``id``::

    Hello{version}                         -> HelloOk{version, launcher_pid, started_at,
                                                      notify?, corral_version?}
                                              | Error{Incompatible}
    Spawn{name, argv, env, cwd, user?, group?, umask?, rlimits?, memory_max?, cgroup?,
          listen_fds?, stop?{signal, timeout}, log{path, format, max_bytes, keep,
          stdout?}, on_exit?(see standing orders) | null}
                                           -> Spawned{pid, started_at, cgroup, memory_max,
                                                      spawns}
                                              | Error{code, message}
    Signal{pid, signal, group?}            -> Ok | Error{NoSuchProcess}
    Terminate{pid, signal, timeout}        -> Terminated{exit_code?, signal?, method,
                                                         oom_killed?, strays?}
    List{}                                 -> Children{children: [{name, pid, started_at,
                                                                   argv, spawns, cgroup}],
                                                       listeners: [{name, host, port}],
                                                       respawns?: [{name, old_pid,
                                                                    due_in_ms, exited?}]}
    Listen{name, host, port}               -> Listening{name, host, port}
                                              | Error{ListenFailed | BadRequest, message}
    Unlisten{name}                         -> Ok{existed}
    Notify{ready?, status?}                -> Ok   (passed on to systemd; see below)
    Upgrade{}                              -> Upgrading{version, corral_version} (later)
                                              | Error{Incompatible | UpgradeFailed}
    Order{pid, on_exit | null}             -> Ok | Error{NoSuchProcess}   (1.2)
    Exited{name, pid, exit_code?, signal?, at, oom_killed?, spawns, strays?,
           respawn_after_ms?, cooled?}                (unasked; queued while no supervisor
                                                       is connected)
    Respawned{name, old_pid, pid, started_at, spawns, cgroup?, error?{code, message}}
                                                      (unasked, 1.2; queued like Exited)
    Shutdown{}                                          (unasked; stop everything, exit 84)
    OutputDropped{sink, bytes, records, error, total_bytes, total_records, path?, dropping?,
                  since?, until?, gone?, replay?}        (unasked; see below)

cgroups (optional fields, version 1 peers may ignore them): where cgroup v2 is
writable, a child whose Spawn has ``cgroup: true`` or a ``memory_max`` starts in a cgroup
of its own (``cgroup: false`` refuses one; the launcher's ``CORRAL_CGROUP=all`` gives one
to every child, ``=off`` to none), named in ``Spawned.cgroup`` and ``Children[].cgroup``
(null: process group only).  Not every child by default: a cgroup makes each of its
restarts slower (see ``corral.launcher.cgroup``).  ``Spawn.memory_max`` (bytes; the process's
``limits.memory``) is written to its ``memory.max`` where the memory controller is
available; ``Spawned.memory_max`` is the limit applied, or null.  ``oom_killed`` in
``Exited``/``Terminated`` says whether the kernel's OOM killer struck in that cgroup
during the run; it is absent where that cannot be known.  On a stop, and when the main
process exits, the whole cgroup is killed (``cgroup.kill``), daemons that left the
process group included.

``spawns`` in ``Spawned`` and ``Exited`` (optional: an older launcher leaves it out) is the
name's Spawn count since the launcher started, as in ``Children``: a supervisor that starts
after an exit it did not see still counts that run.

Socket mode (systemd's socket-activation convention): ``Listen`` binds ``host:port``
once (SO_REUSEADDR, backlog 4096) and the launcher holds the socket under ``name``, so
it outlives supervisor restarts; it is idempotent (the same name and address again is
``Listening`` with the socket already held; port 0 picks a free port, and the reply says
which).  ``ListenFailed`` says why a bind failed: in use, not a local address, no
permission.  ``Spawn.listen_fds`` names held sockets to hand to the child as fds 3, 4, ...
with ``LISTEN_FDS=<count>``, ``LISTEN_PID=<the child's own pid>`` and
``LISTEN_FDNAMES=<names joined by ':'>``; an unknown name is ``BadRequest``.
``Unlisten`` closes the launcher's copy (children keep theirs).  ``List`` reports the
held sockets, so a new supervisor knows them.

Output the launcher could not write (optional; a peer may ignore it): ``OutputDropped``
with ``sink: "log"`` names the log file (``path``) and is sent when the file stops taking
output (``dropping: true``, with the ``error``) and when it takes it again (``dropping:
false``; ``bytes`` and ``records`` dropped between ``since`` and ``until``; the file itself
holds one record saying so).  ``sink: "stdout"`` or ``"stderr"`` is the launcher's own
descriptor (``sup run --log-stdout``): records dropped because nobody read them fast enough
(``bytes``, ``records`` since the last report; sent at once, then at most every 10 s while
drops go on; ``gone: true`` once its reader is gone for good: EPIPE, or EIO from a closed
terminal).  ``total_bytes`` and ``total_records`` count since the launcher started.
After ``Hello`` the launcher repeats the current figures of every sink that ever dropped
anything, with ``replay: true``.  ``Spawn.log.stdout`` (true/false; absent or null: the
launcher's ``--log-stdout`` setting) copies that child's records to the launcher's stdout.

systemd (optional; version 1 peers may ignore it): ``HelloOk.notify`` is true when the
launcher runs under a service manager that asked for notifications (``NOTIFY_SOCKET``).
The supervisor then sends ``Notify{ready: true, status}`` once it answers and the
target's services were started, and ``Notify{status}`` when its one-line summary
changes; the launcher sends ``READY=1`` (once in its life) and ``STATUS=``, and itself
``STOPPING=1`` on shutdown and ``WATCHDOG=1`` as ``WATCHDOG_USEC`` asks, whether or not a
supervisor is connected.  Without a notify socket, ``Notify`` is simply ``Ok``.
Leftovers (optional fields): every spawn's environment gets
``CORRAL_INSTANCE_ID=<name>@<launcher pid>.<launcher start>.<n>``; without a cgroup, the
processes that carry it and left the process group are signalled with the instance, and
``strays`` in ``Exited``/``Terminated`` lists their pids.  ``Spawn.stop`` (default
``{signal: TERM, timeout: 8}``) is how the next launcher stops the child if this one dies
(see ``corral.launcher.record``).

Standing orders (1.2, optional fields): ``Spawn.on_exit``, and ``Order`` at any time
after, hand the launcher the decision for the child's next exit: ``{respawn_after_ms: N}``
(start it again with the same Spawn request, at once for 0, else after N ms) or null
(wait for the supervisor, the default).  An order is for one exit: the child it starts has
none until the supervisor gives it one.  The launcher carries it out whether or not a
supervisor is connected (never while it shuts down); the ``Exited`` of that exit says
``respawn_after_ms``, and the new child is reported by an unasked ``Respawned{name,
old_pid, pid, started_at, spawns}`` (``error{code, message}`` and no ``pid`` when the spawn
failed), numbered and acknowledged like ``Exited`` and replayed after ``Hello``.  Until a
delayed respawn fires, ``Order{pid: <old pid>}`` changes it (null cancels it).  A
``Terminate`` cancels the order of its pid (and a pending respawn) before it signals.
``Order`` for a pid that neither runs nor waits for a respawn is ``Error{NoSuchProcess}``.
``Children[].on_exit`` is each child's order; ``Children.respawns`` (1.3) the respawns
waiting for their delay, so that a new supervisor can wait for them rather than start a
second process.

Sequences (1.3): ``on_exit`` may also be ``{respawn_after_ms: N | null, then: [...],
cooldown_ms: C, fresh: [...]}``, the restart policy's next answers drawn in advance, so
that a crash loop keeps its backoff and restart limit while no supervisor runs: an exit
after C ms restarts at once (the ``Exited`` says ``cooled: true``) and the process it
starts gets ``fresh`` as its sequence; an earlier exit waits ``respawn_after_ms`` (null:
no respawn) and the process it starts gets ``then``; the last entry of a sequence repeats,
null stops.  See :mod:`corral.protocol.standing`.

Versions: ``Hello.version`` and ``HelloOk.version`` are ``"MAJOR.MINOR"``
(:data:`PROTOCOL_VERSION`).  The launcher answers a ``Hello`` of another major version with
``Error{Incompatible}`` naming both, keeps its children, and starts no further supervisor
until SIGHUP; the supervisor says so in one line and exits :data:`EXIT_INCOMPATIBLE`.  A
supervisor that has not said ``Hello`` within :data:`HELLO_TIMEOUT` is killed and started
again.  ``HelloOk.corral_version`` is the corral release the launcher was started from.

Upgrade in place (optional; a 1.1 launcher answers ``BadRequest``): ``Upgrade`` has the
launcher check the installed code (``python -m corral.launcher --check-upgrade``) and
answers once that is done: ``Error{UpgradeFailed}`` with the check's last line when it
fails, ``Error{Incompatible}`` when the installed code speaks another major version (or
cannot read the launcher's hand-over state), else ``Upgrading`` with the installed code's
protocol version and release.  The supervisor that asked then exits (as for a restart);
once it has, the launcher re-executes itself with the installed code, keeping its pid,
children, pipes, log files, held sockets and queued exits (see
:mod:`corral.launcher.upgrade`), and starts a supervisor of the installed code.

Times (``started_at``, ``at``) are Unix epoch seconds as floats.  Signals are names
without the ``SIG`` prefix (``"TERM"``).

Each message's fields are spelled out as a ``TypedDict`` below (:class:`Spawn`,
:class:`Spawned`, ...): for type checking only, a message on the wire is the plain JSON object.
"""

from __future__ import annotations

import signal as _signal
from typing import Any, NotRequired, TypedDict

#: ``"MAJOR.MINOR"``.  Peers of one major version work together: a minor version only
#: adds optional fields.  A launcher refuses a ``Hello`` of another major version with
#: ``Error{Incompatible}`` (and keeps its children); a version 1 peer may send the bare
#: integer ``1``, read as ``"1.0"``.
PROTOCOL_VERSION = "1.3"

# Request types.
HELLO = "Hello"
SPAWN = "Spawn"
SIGNAL = "Signal"
TERMINATE = "Terminate"
LIST = "List"
ACK = "Ack"
LISTEN = "Listen"
UNLISTEN = "Unlisten"
NOTIFY = "Notify"
UPGRADE = "Upgrade"
ORDER = "Order"
# Reply types.
HELLO_OK = "HelloOk"
SPAWNED = "Spawned"
OK = "Ok"
TERMINATED = "Terminated"
CHILDREN = "Children"
LISTENING = "Listening"
UPGRADING = "Upgrading"
ERROR = "Error"
# Unasked, launcher -> supervisor.
EXITED = "Exited"
SHUTDOWN = "Shutdown"
OUTPUT_DROPPED = "OutputDropped"
RESPAWNED = "Respawned"

REQUEST_TYPES = frozenset({HELLO, SPAWN, SIGNAL, TERMINATE, LIST, ACK, LISTEN, UNLISTEN,
                           NOTIFY, UPGRADE, ORDER})

# Error codes a person (or the supervisor) can act on.
E_USER_NOT_FOUND = "UserNotFound"
E_GROUP_NOT_FOUND = "GroupNotFound"
E_EXEC_FAILED = "ExecFailed"
E_NO_SUCH_PROCESS = "NoSuchProcess"
E_BAD_REQUEST = "BadRequest"
E_LISTEN_FAILED = "ListenFailed"
E_INCOMPATIBLE = "Incompatible"
E_UPGRADE_FAILED = "UpgradeFailed"

# How Terminate ended.
ALREADY_EXITED = "already_exited"
GRACEFUL = "graceful"
KILLED = "killed"

# Supervisor exit codes (Habitat's contract).
EXIT_DONE = 84
"""The supervisor is done: stop all services; the launcher exits 0."""
EXIT_FATAL = 86
"""The supervisor hit a fatal error: stop all services; the launcher exits 86."""
EXIT_INCOMPATIBLE = 85
"""The supervisor cannot work with this launcher (protocol versions) or with its state
directory (a newer format): the launcher keeps its services and starts no supervisor until
SIGHUP (after installing a compatible one)."""

#: Seconds a new supervisor has to say ``Hello`` before the launcher kills and restarts it
#: (``CORRAL_HELLO_TIMEOUT`` overrides).
HELLO_TIMEOUT = 10.0
ENV_HELLO_TIMEOUT = "CORRAL_HELLO_TIMEOUT"

# Environment shared between launcher and supervisor.
ENV_LAUNCHER_FD = "CORRAL_LAUNCHER_FD"
ENV_SUP_BINARY = "CORRAL_SUP_BINARY"


def parse_version(value: Any) -> tuple[int, int] | None:
    """``"1.2"`` -> ``(1, 2)``; the bare integer ``1`` of version 1 peers -> ``(1, 0)``;
    None for anything else."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value, 0
    if isinstance(value, str):
        major, dot, minor = value.partition(".")
        if major.isdigit() and (minor.isdigit() if dot else True):
            return int(major), int(minor or 0)
    return None


def compatible(ours: str, theirs: Any) -> bool:
    """Whether a peer announcing ``theirs`` speaks our major version."""
    mine, other = parse_version(ours), parse_version(theirs)
    return mine is not None and other is not None and mine[0] == other[0]


def error(request_id: Any, code: str, message: str) -> Error:
    """Build an ``Error`` reply."""
    return {"type": ERROR, "id": request_id, "code": code, "message": message}


def signal_number(name: str | int) -> int:
    """Map ``"TERM"``, ``"SIGTERM"`` or ``15`` to a signal number.

    Raises:
        ValueError: not a signal this system knows.
    """
    if isinstance(name, int) and not isinstance(name, bool):
        return int(_signal.Signals(name))
    if isinstance(name, str):
        text = name.upper()
        if text.isdigit():
            return int(_signal.Signals(int(text)))
        if not text.startswith("SIG"):
            text = "SIG" + text
        try:
            return int(_signal.Signals[text])
        except KeyError:
            pass
    raise ValueError(f"unknown signal {name!r}")


def signal_name(number: int) -> str:
    """Map a signal number to its name without ``SIG`` (``15`` -> ``"TERM"``)."""
    try:
        return _signal.Signals(number).name.removeprefix("SIG")
    except ValueError:
        return str(number)


# --- message shapes ------------------------------------------------------------------------
# ``type`` is one of the names above; ``id`` is the request's, echoed by its reply (None on
# an Error for a frame that could not be read).  ``NotRequired`` fields may be left out.


class Hello(TypedDict):
    type: str
    id: int
    version: str | int  # "MAJOR.MINOR" (an integer from version 1.0 peers)


class HelloOk(TypedDict):
    type: str
    id: int | None
    version: str
    launcher_pid: int
    started_at: float
    notify: NotRequired[bool]
    corral_version: NotRequired[str]  # the corral release the launcher runs (1.1)


class SpawnLog(TypedDict):
    """A Spawn's ``log``: the file, its record format and rotation (defaults: see
    :mod:`corral.protocol.defaults`)."""

    path: str
    format: NotRequired[str]  # "stamped" or "raw"
    max_bytes: NotRequired[int]
    keep: NotRequired[int]
    stdout: NotRequired[bool | None]  # None or absent: the launcher's --log-stdout


class SpawnStop(TypedDict, total=False):
    """How the next launcher stops the child if this one dies."""

    signal: str
    timeout: float


class OnExit(TypedDict):
    """A standing order (see :mod:`corral.protocol.standing`): after the child's next
    exit, start it again after this long (null: wait); the 1.3 form adds the sequences."""

    respawn_after_ms: int | None
    then: NotRequired[list[int | None]]  # 1.3
    cooldown_ms: NotRequired[int]  # 1.3
    fresh: NotRequired[list[int | None]]  # 1.3


class Spawn(TypedDict):
    type: str
    id: int
    name: str
    argv: list[str]
    env: dict[str, str]
    log: SpawnLog
    cwd: NotRequired[str | None]
    user: NotRequired[str | None]
    group: NotRequired[str | None]
    umask: NotRequired[int | None]
    rlimits: NotRequired[dict[str, int]]
    memory_max: NotRequired[int | None]
    cgroup: NotRequired[bool | None]
    listen_fds: NotRequired[list[str]]
    stop: NotRequired[SpawnStop]
    on_exit: NotRequired[OnExit | None]  # 1.2


class Spawned(TypedDict):
    type: str
    id: int | None
    pid: int
    started_at: float
    cgroup: NotRequired[str | None]
    memory_max: NotRequired[int | None]
    spawns: NotRequired[int]


class Signal(TypedDict):
    type: str
    id: int
    pid: int
    signal: str
    group: NotRequired[bool]


class Terminate(TypedDict):
    type: str
    id: int
    pid: int
    signal: NotRequired[str]
    timeout: NotRequired[float]


class Terminated(TypedDict):
    type: str
    id: int | None
    method: str  # ALREADY_EXITED, GRACEFUL or KILLED
    exit_code: int | None
    signal: str | None
    oom_killed: NotRequired[bool]
    strays: NotRequired[list[int]]


class List(TypedDict):
    type: str
    id: int


class ChildInfo(TypedDict):
    """One running child, in ``Children``."""

    name: str
    pid: int
    started_at: float
    argv: list[str]
    spawns: NotRequired[int]
    cgroup: NotRequired[str | None]
    on_exit: NotRequired[OnExit | None]  # 1.2


class ListenerInfo(TypedDict):
    """One held listening socket, in ``Listening`` and ``Children``."""

    name: str
    host: str
    port: int


class Children(TypedDict):
    type: str
    id: int | None
    children: list[ChildInfo]
    listeners: NotRequired[list[ListenerInfo]]
    respawns: NotRequired[list[WaitingRespawn]]  # 1.3


class WaitingRespawn(TypedDict):
    """A respawn a standing order called for, waiting for its delay (1.3)."""

    name: str
    old_pid: int
    due_in_ms: int
    exited: NotRequired[Exited]  # the exit that led to it, while the launcher recalls it


class Listen(TypedDict):
    type: str
    id: int
    name: str
    host: str
    port: int


class Listening(TypedDict):
    type: str
    id: int | None
    name: str
    host: str
    port: int


class Unlisten(TypedDict):
    type: str
    id: int
    name: str


class Notify(TypedDict):
    type: str
    id: int
    ready: NotRequired[bool]
    status: NotRequired[str]


class Order(TypedDict):
    """Replace the standing order of a running child, or of one waiting to be respawned
    (1.2)."""

    type: str
    id: int
    pid: int
    on_exit: OnExit | None


class Ack(TypedDict):
    """The supervisor has handled every ``Exited`` up to ``seq``."""

    type: str
    seq: int


class Ok(TypedDict):
    type: str
    id: int | None
    existed: NotRequired[bool]  # Unlisten: whether the launcher held the socket


class Error(TypedDict):
    type: str
    id: int | None
    code: str  # one of the E_* codes
    message: str


class Exited(TypedDict):
    type: str
    name: str
    pid: int
    at: float
    exit_code: int | None
    signal: str | None
    last_lines: NotRequired[list[str]]
    spawns: NotRequired[int]
    oom_killed: NotRequired[bool]
    strays: NotRequired[list[int]]
    respawn_after_ms: NotRequired[int]  # 1.2: the launcher carries out a standing order
    cooled: NotRequired[bool]  # 1.3: the order's answer for a child past its cooldown
    seq: NotRequired[int]  # numbered by the launcher, acknowledged with Ack


class Upgrading(TypedDict):
    """The installed code passed its check: the launcher re-executes itself with it once
    the supervisor that asked has exited."""

    type: str
    id: int | None
    version: str  # the installed code's protocol version
    corral_version: str  # and its release


class RespawnError(TypedDict):
    code: str
    message: str


class Respawned(TypedDict):
    """The launcher carried out a standing order (1.2); ``pid`` is absent and ``error``
    says why when the spawn failed."""

    type: str
    name: str
    old_pid: int
    pid: NotRequired[int]
    started_at: NotRequired[float]
    spawns: NotRequired[int]
    cgroup: NotRequired[str | None]
    error: NotRequired[RespawnError]
    seq: NotRequired[int]  # numbered with the exits, acknowledged with Ack


class Shutdown(TypedDict):
    type: str


class OutputDropped(TypedDict):
    """Output the launcher could not write to a log file (``sink: "log"``) or to its own
    ``stdout``/``stderr`` (see the module docstring)."""

    type: str
    sink: str  # "log", "stdout" or "stderr"
    bytes: int
    records: int
    error: str
    total_bytes: int
    total_records: int
    path: NotRequired[str]
    dropping: NotRequired[bool]
    since: NotRequired[float]
    until: NotRequired[float]
    gone: NotRequired[bool]
    replay: NotRequired[bool]


#: What the launcher answers a request with.
Reply = HelloOk | Spawned | Ok | Terminated | Children | Listening | Upgrading | Error
