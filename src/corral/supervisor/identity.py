"""Who a process runs as, checked against who corral is.

A corral that runs as root can start a process as any user and group and raise any limit;
one that does not can do none of that, and validation says so before anything starts
(:func:`identity_problems`), where a spawn would fail with "Operation not permitted" and
back off for good.  :func:`identity` drops a user or group that is corral's own (the
switch itself would need root), and :func:`give_workdir` hands an instance's directory to
its user.
"""

from __future__ import annotations

import grp
import os
import pwd
import resource
from pathlib import Path

from corral.spec import Problem, ProcessSpec


def _passwd(user: str) -> pwd.struct_passwd | None:
    """``user`` (a name or a uid) in the password database, or None."""
    try:
        return pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        return None


def _gid(group: str) -> int | None:
    """The id of ``group`` (a name or a gid), or None if the host has no such group."""
    try:
        return grp.getgrgid(int(group)).gr_gid if group.isdigit() else grp.getgrnam(group).gr_gid
    except KeyError:
        return None


def _me() -> str:
    """corral's own user, by name if it has one."""
    entry = _passwd(str(os.geteuid()))
    return entry.pw_name if entry is not None else f"uid {os.geteuid()}"


def identity(spec: ProcessSpec) -> tuple[str | None, str | None]:
    """The user and group to switch to for ``spec``: none where they are corral's own.

    A corral that is not root cannot switch even to itself (the switch drops
    supplementary groups, which needs root), and needs not: it already runs as that user.
    Validation (:func:`identity_problems`) refuses any other user or group there.
    """
    user, group = spec.user, spec.group
    if (user is None and group is None) or os.geteuid() == 0:
        return user, group
    if user is not None and (entry := _passwd(user)) is not None and \
            entry.pw_uid == os.geteuid():
        user = None
    if group is not None and _gid(group) in (os.getegid(), os.getgid()):
        group = None
    return user, group


def identity_problems(i: int, spec: ProcessSpec) -> list[Problem]:
    """``user``, ``group`` and ``rlimits`` that cannot work for the user corral runs as:
    unknown users and groups; without root, any user or group but corral's own, and a
    limit above its hard limit; ``nofile`` above the kernel's ``fs.nr_open`` for anyone."""
    problems: list[Problem] = []
    root = os.geteuid() == 0
    if spec.user is not None:
        entry = _passwd(spec.user)
        if entry is None:
            problems.append((("processes", i, "user"),
                             f"user {spec.user!r} does not exist on this host"))
        elif not root and entry.pw_uid != os.geteuid():
            problems.append((("processes", i, "user"),
                             f"corral runs as {_me()}, not root, so it cannot run a process "
                             f"as {spec.user!r}; leave user out (the process runs as "
                             f"{_me()}) or run corral as root"))
    if spec.group is not None:
        gid = _gid(spec.group)
        if gid is None:
            problems.append((("processes", i, "group"),
                             f"group {spec.group!r} does not exist on this host"))
        elif not root and gid not in (os.getegid(), os.getgid()):
            problems.append((("processes", i, "group"),
                             f"corral runs as {_me()}, not root, so it cannot run a process "
                             f"with group {spec.group!r}; leave group out or run corral as "
                             "root"))
    for key, value in spec.rlimits.items():
        hard = resource.getrlimit(_RLIMITS[key])[1]
        shown = "unlimited" if value < 0 else str(value)
        if not root and hard != resource.RLIM_INFINITY and (value < 0 or value > hard):
            problems.append((("processes", i, "rlimits", key),
                             f"{shown} is above the hard limit {hard} of corral's user "
                             f"({_me()}); only root can raise a hard limit"))
        elif key == "nofile" and (ceiling := _nr_open()) is not None and \
                (value < 0 or value > ceiling):
            problems.append((("processes", i, "rlimits", key),
                             f"{shown} is above the kernel's ceiling fs.nr_open = {ceiling}"))
    return problems


_RLIMITS = {"nofile": resource.RLIMIT_NOFILE, "nproc": resource.RLIMIT_NPROC,
            "core": resource.RLIMIT_CORE, "as": resource.RLIMIT_AS,
            "fsize": resource.RLIMIT_FSIZE, "stack": resource.RLIMIT_STACK,
            "memlock": resource.RLIMIT_MEMLOCK, "cpu": resource.RLIMIT_CPU}


def _nr_open() -> int | None:
    try:
        return int(Path("/proc/sys/fs/nr_open").read_text())
    except (OSError, ValueError):
        return None


def give_workdir(workdir: Path, spec: ProcessSpec) -> None:
    """Make a directory corral made for an instance belong to the process's user (and
    group), so that a service run as another user can write where it runs (unpack its
    bundle there).  Only root can give a directory away; what is placed in it (the
    resources: hard links to the store's read-only blobs) stays root's."""
    if (spec.user is None and spec.group is None) or os.geteuid() != 0:
        return
    uid = gid = -1
    if spec.user is not None:
        entry = _passwd(spec.user)
        if entry is None:
            return  # the spawn says the user does not exist
        uid, gid = entry.pw_uid, entry.pw_gid
    group = _gid(spec.group) if spec.group is not None else None
    os.chown(workdir, uid, gid if group is None else group)
