"""Message types, error codes and process contracts of the launcher protocol.  STDLIB ONLY.

Requests (supervisor -> launcher) carry an ``id`` that the reply echoes, so requests
may be pipelined.  Unasked messages (launcher -> supervisor) carry no ``id``::

    Hello{version}                         -> HelloOk{version, launcher_pid}
    Spawn{name, argv, env, cwd, user?, group?, umask?, rlimits?, memory_max?, cgroup?,
          listen_fds?, log{path, format, max_bytes, keep, stdout?}}
                                           -> Spawned{pid, started_at, cgroup, memory_max}
                                              | Error{code, message}
    Signal{pid, signal, group?}            -> Ok | Error{NoSuchProcess}
    Terminate{pid, signal, timeout}        -> Terminated{exit_code?, signal?, method,
                                                         oom_killed?}
    List{}                                 -> Children{children: [{name, pid, started_at,
                                                                   argv, spawns, cgroup}],
                                                       listeners: [{name, host, port}]}
    Listen{name, host, port}               -> Listening{name, host, port}
                                              | Error{ListenFailed | BadRequest, message}
    Unlisten{name}                         -> Ok{existed}
    Exited{name, pid, exit_code?, signal?, at, oom_killed?}  (unasked; queued while no
                                                               supervisor is connected)
    Shutdown{}                                          (unasked; stop everything, exit 84)
    OutputDropped{sink, bytes, records, error, total_bytes, total_records, path?, dropping?,
                  since?, until?, gone?, replay?}        (unasked; see below)

cgroups (optional fields, version 1 peers may ignore them): where cgroup v2 is
writable, a child whose Spawn has ``cgroup: true`` or a ``memory_max`` starts in a cgroup
of its own (``cgroup: false`` refuses one; the launcher's ``CORRAL_CGROUP=all`` gives one
to every child, ``=off`` to none), named in ``Spawned.cgroup`` and ``Children[].cgroup``
(null: process group only).  Not every child by default: a cgroup costs its restarts
~10 ms (see ``corral.launcher.cgroup``).  ``Spawn.memory_max`` (bytes; the process's
``limits.memory``) is written to its ``memory.max`` where the memory controller is
available; ``Spawned.memory_max`` is the limit applied, or null.  ``oom_killed`` in
``Exited``/``Terminated`` says whether the kernel's OOM killer struck in that cgroup
during the run; it is absent where that cannot be known.  On a stop, and when the main
process exits, the whole cgroup is killed (``cgroup.kill``), daemons that left the
process group included.

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

Times (``started_at``, ``at``) are Unix epoch seconds as floats.  Signals are names
without the ``SIG`` prefix (``"TERM"``).
"""

from __future__ import annotations

import signal as _signal
from typing import Any

PROTOCOL_VERSION = 1

# Request types.
HELLO = "Hello"
SPAWN = "Spawn"
SIGNAL = "Signal"
TERMINATE = "Terminate"
LIST = "List"
ACK = "Ack"
LISTEN = "Listen"
UNLISTEN = "Unlisten"
# Reply types.
HELLO_OK = "HelloOk"
SPAWNED = "Spawned"
OK = "Ok"
TERMINATED = "Terminated"
CHILDREN = "Children"
LISTENING = "Listening"
ERROR = "Error"
# Unasked, launcher -> supervisor.
EXITED = "Exited"
SHUTDOWN = "Shutdown"
OUTPUT_DROPPED = "OutputDropped"

REQUEST_TYPES = frozenset({HELLO, SPAWN, SIGNAL, TERMINATE, LIST, ACK, LISTEN, UNLISTEN})

# Error codes a person (or the supervisor) can act on.
E_USER_NOT_FOUND = "UserNotFound"
E_GROUP_NOT_FOUND = "GroupNotFound"
E_EXEC_FAILED = "ExecFailed"
E_NO_SUCH_PROCESS = "NoSuchProcess"
E_BAD_REQUEST = "BadRequest"
E_LISTEN_FAILED = "ListenFailed"

# How Terminate ended.
ALREADY_EXITED = "already_exited"
GRACEFUL = "graceful"
KILLED = "killed"

# Supervisor exit codes (Habitat's contract).
EXIT_DONE = 84
"""The supervisor is done: stop all services; the launcher exits 0."""
EXIT_FATAL = 86
"""The supervisor hit a fatal error: stop all services; the launcher exits 86."""

# Environment shared between launcher and supervisor.
ENV_LAUNCHER_FD = "CORRAL_LAUNCHER_FD"
ENV_SUP_BINARY = "CORRAL_SUP_BINARY"


def error(request_id: Any, code: str, message: str) -> dict[str, Any]:
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
