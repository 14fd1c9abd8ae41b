"""Starting a service process.  STDLIB ONLY.

Every service is started in a session of its own (so it leads its own process group and
has no controlling terminal), with stdin on ``/dev/null`` and stdout/stderr on pipes the
launcher keeps.  Both ways used below report an exec failure synchronously (a missing
binary is an error reply, not a child that exits 127) and start the child with ``vfork``:

- the common spawn (no user, group, rlimits or sockets to hand over) goes through
  ``os.posix_spawn``: glibc's ``clone(CLONE_VFORK)`` with the file actions done in C.  It
  has no working-directory or umask attribute in Python 3.11, so the launcher, which is
  single-threaded, steps into ``cwd`` and sets the umask around the call and steps back.
  It is the cheaper of the two, and a spawn is a sizeable part of a restart's latency
  (figures in docs/benchmarks.md, "Figures behind the code");
- anything else goes through ``subprocess.Popen``, which can change the user and group and
  run the rlimit and socket hand-over code between fork and exec.

The launcher reaps every child itself (``waitpid(-1)``), so nothing here waits.
"""

from __future__ import annotations

import grp
import os
import pwd
import resource
import shutil
import signal
import subprocess
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from corral.protocol import defaults
from corral.protocol import messages as m

from . import sched
from .listeners import exec_with_sockets
from .pipes import SparePipes

RLIMITS = {
    "nofile": resource.RLIMIT_NOFILE,
    "nproc": resource.RLIMIT_NPROC,
    "core": resource.RLIMIT_CORE,
    "as": resource.RLIMIT_AS,
    "fsize": resource.RLIMIT_FSIZE,
    "stack": resource.RLIMIT_STACK,
    "memlock": resource.RLIMIT_MEMLOCK,
    "cpu": resource.RLIMIT_CPU,
}


class SpawnError(Exception):
    """The service could not be started; ``code`` is one of the protocol's error codes."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class SpawnRequest:
    """A validated ``Spawn`` request."""

    name: str
    argv: list[str]
    env: dict[str, str]
    cwd: str | None = None
    user: str | None = None
    group: str | None = None
    umask: int | None = None
    rlimits: dict[str, int] = field(default_factory=dict)
    memory_max: int | None = None
    cgroup: bool | None = None  # None: only with a memory limit (see .cgroup)
    listen_fds: list[str] = field(default_factory=list)
    # How to stop it if the launcher dies and the next one finds it (see .record).
    stop_signal: str = defaults.STOP_SIGNAL
    stop_timeout: float = defaults.STOP_TIMEOUT

    @classmethod
    def parse(cls, msg: Mapping[str, Any]) -> SpawnRequest:
        """Check a request's fields.  Raises :class:`SpawnError` (``BadRequest``)."""
        name, argv, env = msg.get("name"), msg.get("argv"), msg.get("env", {})
        if not isinstance(name, str) or not name:
            raise SpawnError(m.E_BAD_REQUEST, "Spawn needs a non-empty 'name'")
        if (not isinstance(argv, list) or not argv
                or not all(isinstance(a, str) for a in argv)):
            raise SpawnError(m.E_BAD_REQUEST, "Spawn needs 'argv', a non-empty list of strings")
        if not isinstance(env, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            raise SpawnError(m.E_BAD_REQUEST, "'env' must map strings to strings")
        cwd, user, group = msg.get("cwd"), msg.get("user"), msg.get("group")
        for key, value in (("cwd", cwd), ("user", user), ("group", group)):
            if value is not None and not isinstance(value, str):
                raise SpawnError(m.E_BAD_REQUEST, f"'{key}' must be a string")
        umask = msg.get("umask")
        if umask is not None and (not isinstance(umask, int) or not 0 <= umask <= 0o777):
            raise SpawnError(m.E_BAD_REQUEST, "'umask' must be an integer 0..0o777")
        rlimits = msg.get("rlimits") or {}
        if not isinstance(rlimits, dict) or not all(
                k in RLIMITS and isinstance(v, int) for k, v in rlimits.items()):
            raise SpawnError(m.E_BAD_REQUEST,
                             f"'rlimits' keys must be among {', '.join(sorted(RLIMITS))}")
        memory_max = msg.get("memory_max")
        if memory_max is not None and (not isinstance(memory_max, int)
                                       or isinstance(memory_max, bool) or memory_max <= 0):
            raise SpawnError(m.E_BAD_REQUEST, "'memory_max' must be a number of bytes > 0")
        cgroup = msg.get("cgroup")
        if cgroup is not None and not isinstance(cgroup, bool):
            raise SpawnError(m.E_BAD_REQUEST, "'cgroup' must be true or false")
        listen_fds = msg.get("listen_fds") or []
        if (not isinstance(listen_fds, list) or not all(isinstance(n, str) for n in listen_fds)
                or len(set(listen_fds)) != len(listen_fds)):
            raise SpawnError(m.E_BAD_REQUEST,
                             "'listen_fds' must be a list of distinct listener names")
        stop_signal, stop_timeout = _stop(msg.get("stop"))
        return cls(name=name, argv=list(argv), env=dict(env), cwd=cwd, user=user,
                   group=group, umask=umask, rlimits=dict(rlimits), memory_max=memory_max,
                   cgroup=cgroup, listen_fds=list(listen_fds), stop_signal=stop_signal,
                   stop_timeout=stop_timeout)


def _stop(stop: Any) -> tuple[str, float]:
    """Check a Spawn's optional ``stop: {signal, timeout}``: (signal name, seconds)."""
    if stop is None:
        return defaults.STOP_SIGNAL, defaults.STOP_TIMEOUT
    bad = SpawnError(m.E_BAD_REQUEST, "'stop' must be {'signal': a signal name, "
                                      "'timeout': seconds >= 0}")
    if not isinstance(stop, dict):
        raise bad
    timeout = stop.get("timeout", defaults.STOP_TIMEOUT)
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout < 0:
        raise bad
    try:
        number = m.signal_number(stop.get("signal", defaults.STOP_SIGNAL))
    except (ValueError, TypeError):
        raise bad from None
    return m.signal_name(number), float(timeout)


@dataclass
class Started:
    """A freshly spawned child and the read ends of its output pipes."""

    pid: int
    stdout: int
    stderr: int


def _rlimit_setter(limits: dict[str, int]) -> Callable[[], None]:
    def apply() -> None:  # runs in the child, between fork and exec
        for key, value in limits.items():
            resource.setrlimit(RLIMITS[key], (value, value))
    return apply


def _check_rlimits(limits: dict[str, int]) -> None:
    """Raise :class:`SpawnError` naming the first limit that cannot be set.

    Checked before the fork: ``setrlimit`` failing in the child can only be reported by
    subprocess as "Exception occurred in preexec_fn".  Without root, no limit may go above
    its hard limit; even root cannot give ``nofile`` more than ``fs.nr_open``.
    """
    root = os.geteuid() == 0
    for key, value in limits.items():
        infinite = value == resource.RLIM_INFINITY or value < 0
        hard = resource.getrlimit(RLIMITS[key])[1]
        shown = "unlimited" if infinite else str(value)
        if not root and hard != resource.RLIM_INFINITY and (infinite or value > hard):
            raise SpawnError(m.E_EXEC_FAILED, f"rlimit {key} {shown} is above the hard limit "
                             f"{hard} (only root can raise a hard limit)")
        if key == "nofile":
            ceiling = _nr_open()
            if ceiling is not None and (infinite or value > ceiling):
                raise SpawnError(m.E_EXEC_FAILED, f"rlimit nofile {shown} is above the "
                                 f"kernel's ceiling fs.nr_open = {ceiling}")


def _nr_open() -> int | None:
    try:
        with open("/proc/sys/fs/nr_open") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def _check_identity(req: SpawnRequest) -> None:
    if req.user is not None:
        try:
            pwd.getpwnam(req.user) if not req.user.isdigit() else pwd.getpwuid(int(req.user))
        except KeyError:
            raise SpawnError(m.E_USER_NOT_FOUND,
                             f"user {req.user!r} does not exist on this host") from None
    if req.group is not None:
        try:
            grp.getgrnam(req.group) if not req.group.isdigit() else grp.getgrgid(int(req.group))
        except KeyError:
            raise SpawnError(m.E_GROUP_NOT_FOUND,
                             f"group {req.group!r} does not exist on this host") from None


def _executable(req: SpawnRequest) -> str:
    """The program's path, found as ``execvpe`` would (PATH from the child's env).

    Needed where we exec ourselves (socket hand-over): a missing binary must still be an
    error reply, not a child that fails after the fork.
    """
    program = req.argv[0]
    if "/" in program:
        path = os.path.join(req.cwd, program) if req.cwd else program
        if not os.path.isfile(path):
            raise SpawnError(m.E_EXEC_FAILED, f"command not found: {program}")
    else:
        found = shutil.which(program, path=req.env.get("PATH", os.defpath))
        if found is None:
            raise SpawnError(m.E_EXEC_FAILED, f"command not found: {program}")
        path = found
    if not os.access(path, os.X_OK):
        raise SpawnError(m.E_EXEC_FAILED, f"permission denied starting {program}")
    return os.path.abspath(path)


def spawn(req: SpawnRequest, devnull: int,
          around: AbstractContextManager[None] | None = None,
          sockets: list[int] | None = None, spares: SparePipes | None = None) -> Started:
    """Start ``req`` and return the child's pid with its pipes (non-blocking read ends).

    ``around`` is entered just around the fork/exec (the launcher steps into the
    child's cgroup there, so the child starts inside it; see :mod:`.cgroup`).
    ``sockets`` are the listening fds for ``req.listen_fds``, handed over as 3.. with
    ``LISTEN_FDS``/``LISTEN_PID``/``LISTEN_FDNAMES`` (see :mod:`.listeners`).
    ``spares``: where the output pipes are taken from (made here without it).

    Error handling: an unknown user or group, a missing or non-executable binary, or a
    missing working directory raise :class:`SpawnError` before any child runs.
    """
    _check_identity(req)
    pipes = spares if spares is not None else SparePipes()
    try:
        out_r, out_w = pipes.take()
    except OSError as exc:
        raise _failure(req, exc) from None
    try:
        err_r, err_w = pipes.take()
    except OSError as exc:
        os.close(out_r)
        os.close(out_w)
        raise _failure(req, exc) from None
    try:
        with around if around is not None else nullcontext():
            if req.user is None and req.group is None and not req.rlimits and not sockets:
                pid = _posix_spawn(req, devnull, out_w, err_w)
            else:
                pid = _popen(req, devnull, out_w, err_w, sockets)
    except BaseException:
        os.close(out_r)
        os.close(err_r)
        raise
    finally:
        os.close(out_w)
        os.close(err_w)
    return Started(pid=pid, stdout=out_r, stderr=err_r)


# (program, PATH, cwd) -> absolute path: a restart storm must not stat every PATH
# directory per spawn.  The path found last time is used without a check (an access()
# costs ~10 µs on the restart path); if the spawn fails there, the program is looked up
# again and the spawn tried once more.
_found: dict[tuple[str, str, str | None], str] = {}
_HOME = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # where the launcher runs
# Python ignores these two; an exec keeps ignored signals ignored, so reset them as
# subprocess does (a service must die of a write to a closed pipe like anywhere else).
_DEFAULT_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)


def _posix_spawn(req: SpawnRequest, devnull: int, out_w: int, err_w: int) -> int:
    key = (req.argv[0], req.env.get("PATH", os.defpath), req.cwd)
    options: dict[str, Any] = {
        "file_actions": [(os.POSIX_SPAWN_DUP2, devnull, 0), (os.POSIX_SPAWN_DUP2, out_w, 1),
                         (os.POSIX_SPAWN_DUP2, err_w, 2)],
        "setsid": True, "setsigdef": _DEFAULT_SIGNALS}
    policy = sched.for_children()
    if policy is not None:  # (os.posix_spawn refuses an explicit None)
        options["scheduler"] = policy
    old_umask = os.umask(req.umask) if req.umask is not None else None
    try:
        if req.cwd is not None:
            os.chdir(req.cwd)
        cached = _found.get(key)
        path = cached if cached is not None else _executable(req)
        # Every fd the launcher holds is close-on-exec (Python's default, and what it
        # inherited is marked so at start), so the child gets stdin, stdout and stderr.
        try:
            pid = os.posix_spawn(path, req.argv, req.env, **options)
        except OSError:
            if cached is None:
                raise
            # The program found last time is gone or changed: look for it again, once.
            del _found[key]
            path = _executable(req)
            pid = os.posix_spawn(path, req.argv, req.env, **options)
        _found[key] = path
        # The child is in the middle of its exec, and often on this CPU: let it finish
        # first (what follows a restart's spawn is bookkeeping that can wait ~0.1 ms;
        # run first, it delays the new process's exec by that much, or more).
        os.sched_yield()
        return pid
    except OSError as exc:
        raise _failure(req, exc) from None
    finally:
        if req.cwd is not None:
            os.fchdir(_HOME)
        if old_umask is not None:
            os.umask(old_umask)


def _popen(req: SpawnRequest, devnull: int, out_w: int, err_w: int,
           sockets: list[int] | None) -> int:
    _check_rlimits(req.rlimits)
    preexec = _rlimit_setter(req.rlimits) if req.rlimits else None
    if sockets:
        preexec = exec_with_sockets(_executable(req), req.argv, req.env, sockets,
                                    req.listen_fds, before=preexec)
    user: str | int | None = req.user
    if req.user is not None and req.user.isdigit():
        user = int(req.user)
    group: str | int | None = req.group
    if req.group is not None and req.group.isdigit():
        group = int(req.group)
    if user is not None and group is None:
        # Drop to the user's primary group too, as su and systemd do.
        entry = pwd.getpwnam(user) if isinstance(user, str) else pwd.getpwuid(user)
        group = entry.pw_gid
    try:
        proc = subprocess.Popen(
            req.argv, stdin=devnull, stdout=out_w, stderr=err_w, env=req.env,
            cwd=req.cwd, start_new_session=True, close_fds=True, user=user, group=group,
            extra_groups=[] if user is not None else None,
            umask=req.umask if req.umask is not None else -1,
            preexec_fn=preexec,
        )
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        raise _failure(req, exc) from None
    # The launcher reaps with waitpid(-1); a Popen that looks unfinished when collected
    # would be queued for a waitpid of subprocess's own, which could take the exit first.
    proc.returncode = 0
    sched.reset(proc.pid)
    return proc.pid


def _failure(req: SpawnRequest, exc: Exception) -> SpawnError:
    """The one-line error for a spawn that failed on either path."""
    if isinstance(exc, FileNotFoundError):
        if req.cwd and exc.filename == req.cwd:
            return SpawnError(m.E_EXEC_FAILED, f"working directory not found: {req.cwd}")
        return SpawnError(m.E_EXEC_FAILED, f"command not found: {req.argv[0]}")
    if isinstance(exc, PermissionError):
        return SpawnError(m.E_EXEC_FAILED,
                          f"permission denied starting {req.argv[0]}: {exc.strerror}")
    if isinstance(exc, subprocess.SubprocessError) and req.rlimits and not req.listen_fds:
        limits = ", ".join(f"{k}={v}" for k, v in sorted(req.rlimits.items()))
        return SpawnError(m.E_EXEC_FAILED, f"cannot start {req.argv[0]}: its rlimits "
                          f"({limits}) could not be set")
    why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
    return SpawnError(m.E_EXEC_FAILED, f"cannot start {req.argv[0]}: {why}")
