"""Starting a service process.  STDLIB ONLY.

Every service is started in a session of its own (so it leads its own process group and
has no controlling terminal), with stdin on ``/dev/null`` and stdout/stderr on pipes the
launcher keeps.  ``subprocess.Popen`` is used for the fork/exec because it reports exec
failures synchronously (a missing binary is an error reply, not a child that exits 127)
and uses ``vfork`` when it can; the launcher reaps the child itself and records the
status into the ``Popen`` object, so ``subprocess`` never waits on it behind our back.
"""

from __future__ import annotations

import grp
import os
import pwd
import resource
import shutil
import subprocess
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from corral.protocol import messages as m

from .listeners import exec_with_sockets
from .output import enlarge_pipe

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
    pass_fds: tuple[int, ...] = ()
    memory_max: int | None = None
    cgroup: bool | None = None  # None: only with a memory limit (see .cgroup)
    listen_fds: list[str] = field(default_factory=list)

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
        return cls(name=name, argv=list(argv), env=dict(env), cwd=cwd, user=user,
                   group=group, umask=umask, rlimits=dict(rlimits), memory_max=memory_max,
                   cgroup=cgroup, listen_fds=list(listen_fds))


@dataclass
class Started:
    """A freshly spawned child and the read ends of its output pipes."""

    proc: subprocess.Popen[bytes]
    stdout: int
    stderr: int


def _rlimit_setter(limits: dict[str, int]) -> Callable[[], None]:
    def apply() -> None:  # runs in the child, between fork and exec
        for key, value in limits.items():
            resource.setrlimit(RLIMITS[key], (value, value))
    return apply


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
          sockets: list[int] | None = None) -> Started:
    """Start ``req`` and return the child with its pipes (non-blocking read ends).

    ``around`` is entered just around the fork/exec (the launcher steps into the
    child's cgroup there, so the child starts inside it; see :mod:`.cgroup`).
    ``sockets`` are the listening fds for ``req.listen_fds``, handed over as 3.. with
    ``LISTEN_FDS``/``LISTEN_PID``/``LISTEN_FDNAMES`` (see :mod:`.listeners`).

    Error handling: an unknown user or group, a missing or non-executable binary, or a
    missing working directory raise :class:`SpawnError` before any child runs.
    """
    _check_identity(req)
    preexec = _rlimit_setter(req.rlimits) if req.rlimits else None
    if sockets:
        preexec = exec_with_sockets(_executable(req), req.argv, req.env, sockets,
                                    req.listen_fds, before=preexec)
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    try:
        enlarge_pipe(out_r)
        enlarge_pipe(err_r)
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
            with around if around is not None else nullcontext():
                proc = subprocess.Popen(
                    req.argv, stdin=devnull, stdout=out_w, stderr=err_w, env=req.env,
                    cwd=req.cwd, start_new_session=True, close_fds=True,
                    pass_fds=req.pass_fds, user=user, group=group,
                    extra_groups=[] if user is not None else None,
                    umask=req.umask if req.umask is not None else -1,
                    preexec_fn=preexec,
                )
        except FileNotFoundError as exc:
            missing = exc.filename if exc.filename else req.argv[0]
            what = "working directory" if req.cwd and missing == req.cwd else "command"
            raise SpawnError(m.E_EXEC_FAILED, f"{what} not found: {missing}") from None
        except PermissionError as exc:
            raise SpawnError(m.E_EXEC_FAILED,
                             f"permission denied starting {req.argv[0]}: {exc.strerror}") from None
        except (OSError, subprocess.SubprocessError, ValueError) as exc:
            raise SpawnError(m.E_EXEC_FAILED, f"cannot start {req.argv[0]}: {exc}") from None
    except BaseException:
        os.close(out_r)
        os.close(err_r)
        raise
    finally:
        os.close(out_w)
        os.close(err_w)
    os.set_blocking(out_r, False)
    os.set_blocking(err_r, False)
    return Started(proc=proc, stdout=out_r, stderr=err_r)
