"""A cgroup v2 per service instance that asks for one, where the host lets us.  STDLIB ONLY.

Why: a process group does not hold a daemon that calls ``setsid()``; a cgroup holds
every descendant, whatever it does, and ``cgroup.kill`` (Linux 5.14) kills all of them
in one write.  Where the memory controller is available, ``memory.max`` also makes a
service's memory limit a hard one.

Layout (the choice, and why)::

    <v2 mount><the launcher's own cgroup>/corral-<12 hex of sha256(state dir)>/<name>

The tree hangs under the launcher's *own* cgroup, because that is the part of the
hierarchy a process may be given: under systemd with ``Delegate=yes`` it is the unit's
cgroup, in a container it is the container's, for a user session it is the user's
delegated ``user@.service`` subtree.  We never write outside it.  The per-state-dir
directory keeps two launchers (two state directories) apart, and one launcher owns it
(the state-dir lock).  ``<name>`` is the launcher name with ``/`` turned into ``.``
(``web/0`` -> ``web.0``), so ``systemd-cgls`` shows services by name.
``CORRAL_CGROUP_PARENT=/sys/fs/cgroup/...`` names another parent (for example the
unit's cgroup when the launcher was moved to a leaf with systemd's
``DelegateSubgroup=``).  Under systemd, give the unit ``Delegate=yes``: without it the
sub-tree is not the service's to manage, by systemd's rules.  The full recipe, with
``memory.max`` working::

    [Service]
    Delegate=yes
    DelegateSubgroup=launcher
    Environment=CORRAL_CGROUP_PARENT=/sys/fs/cgroup/system.slice/corral.service

Who gets one: an instance whose Spawn asks (``cgroup: true``) or has a memory limit
(``memory_max``); everyone with ``CORRAL_CGROUP=all``; no one with ``CORRAL_CGROUP=off``.
Not everyone by default, because of what it costs on the restart path.  The child is
placed in its leaf *before* it execs by moving the launcher itself into the leaf around
the ``vfork``/``exec`` and back (two writes to ``cgroup.procs``; a ``preexec_fn`` writing
``0`` would lose ``vfork``, and a ``/bin/sh`` wrapper costs a shell's start).  Back to
back those writes are cheap, but a migration is a writer of the kernel's
``cgroup_threadgroup_rwsem``, which waits for an RCU grace period when none ran lately,
and a service's restarts are seldom close enough together for one to have run: a cgroup
makes each restart several times slower (figures in docs/benchmarks.md, "Figures behind
the code"), so only the instances that ask pay it.
(``clone3(CLONE_INTO_CGROUP)`` would avoid the writer lock, but Python's ``subprocess``
cannot use it; the ``favordynmods`` cgroup2 mount option makes the writes cheap
host-wide.)  While the launcher is inside, ``memory.max`` is ``max``: the limit is
written after the child has exec'd, so the launcher itself can never be charged against
a service's limit.

Fallback: no cgroup2 mount, no write access, no ``cgroup.kill`` -> process groups alone
(what every child without a cgroup has), and one line on stderr says why.

Enabling the memory controller: ``+memory`` is written to the parent's and our
directory's ``cgroup.subtree_control`` where ``cgroup.controllers`` offers it.  The
kernel refuses that for a non-root cgroup that has processes of its own (the "no
internal processes" rule), which is the usual case for the launcher's own cgroup under
systemd: there ``memory.max`` is not applied (it is reported), unless
``CORRAL_CGROUP_PARENT`` names a parent without processes.  Hybrid hosts (memory on
cgroup v1, as here) get the kill-the-whole-cgroup half only.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ENV_CGROUP = "CORRAL_CGROUP"  # off | all | unset: only the instances that ask
ENV_CGROUP_PARENT = "CORRAL_CGROUP_PARENT"

_SAFE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@-]{0,200}")
# mountinfo escapes space, tab, newline and backslash as \ooo.
_OCTAL = re.compile(r"\\([0-7]{3})")


def _unescape(text: str) -> str:
    return _OCTAL.sub(lambda match: chr(int(match.group(1), 8)), text)


def v2_mounts(mountinfo: str) -> list[tuple[str, str]]:
    """The cgroup2 mounts in a ``/proc/self/mountinfo`` text: ``(root, mount point)``.

    ``root`` is the path inside the hierarchy that is mounted there (``/`` normally,
    something else for a bind mount or a cgroup namespace seen from outside).
    """
    found: list[tuple[str, str]] = []
    for line in mountinfo.splitlines():
        head, sep, tail = line.partition(" - ")
        fields, rest = head.split(), tail.split()
        if sep and len(fields) >= 5 and rest and rest[0] == "cgroup2":
            found.append((_unescape(fields[3]), _unescape(fields[4])))
    return found


def own_v2_path(proc_cgroup: str) -> str | None:
    """The process's cgroup v2 path from a ``/proc/self/cgroup`` text (the ``0::`` line)."""
    for line in proc_cgroup.splitlines():
        if line.startswith("0::"):
            path = line[3:].strip()
            # " (deleted)" marks a cgroup removed under us: nothing to build on.
            return path if path.startswith("/") and not path.endswith(" (deleted)") else None
    return None


def own_cgroup_dir(mountinfo: str, proc_cgroup: str) -> str | None:
    """Where the process's own v2 cgroup is in the file system, or None.

    Pure (both texts are given), so the detection is tested with fake files.
    """
    own = own_v2_path(proc_cgroup)
    if own is None:
        return None
    for root, mount in v2_mounts(mountinfo):
        root = root.rstrip("/")
        if own == root or own.startswith(root + "/"):
            rel = own[len(root):].strip("/")
            return os.path.join(mount, rel) if rel else mount
    return None


def leaf_name(name: str) -> str:
    """A cgroup directory name for a launcher name (``web/0`` -> ``web.0``)."""
    safe = name.replace("/", ".")
    if _SAFE.fullmatch(safe) and not safe.startswith("cgroup."):
        return safe
    return "x-" + hashlib.sha256(name.encode()).hexdigest()[:16]


@dataclass
class Cgroups:
    """The launcher's cgroup subtree; all methods are best effort and never raise OSError."""

    base: str
    home: str  # the launcher's own cgroup, where it returns after each spawn
    memory: bool
    everyone: bool = False  # CORRAL_CGROUP=all: every instance gets one
    parent: str = ""  # where corral-<hash> is made (default: home)
    ready: bool = False  # corral-<hash> exists and works
    broken: bool = False  # making it failed: no cgroups from now on
    owners: dict[str, int] = field(default_factory=dict)
    stuck: str | None = None  # a leaf the launcher could not leave: never killed
    entered: bool = False  # whether the last :meth:`inside` got in (so the child is there)
    _warned_memory: bool = False

    # ------------------------------------------------------------------ setup
    @classmethod
    def setup(cls, state_dir: Path) -> tuple[Cgroups | None, str]:
        """Find where ``corral-<hash>`` goes: ``(Cgroups, "")`` or ``(None, the reason)``.

        The directory itself is made by the first :meth:`create` (most launchers never
        need one; a launcher killed with SIGKILL leaves it behind), or at once if a dead
        launcher left one.  Never raises.
        """
        choice = os.environ.get(ENV_CGROUP, "").strip()
        if choice.lower() in ("off", "no", "0", "false"):
            return None, f"{ENV_CGROUP}={choice}"
        chosen_parent = os.environ.get(ENV_CGROUP_PARENT, "").strip()
        try:
            with open("/proc/self/mountinfo") as f:
                mountinfo = f.read()
            with open("/proc/self/cgroup") as f:
                proc_cgroup = f.read()
            home = own_cgroup_dir(mountinfo, proc_cgroup)
            if home is None:
                return None, "no cgroup v2 hierarchy holds the launcher"
            parent = chosen_parent or home
            if not os.path.isfile(os.path.join(parent, "cgroup.procs")):
                return None, f"{ENV_CGROUP_PARENT}={chosen_parent} is not a cgroup v2 directory"
            digest = hashlib.sha256(str(state_dir).encode()).hexdigest()[:12]
            base = os.path.join(parent, f"corral-{digest}")
        except OSError as exc:
            return None, f"cannot read the launcher's cgroup ({exc.strerror or exc})"
        if not (os.access(parent, os.W_OK)
                and os.access(os.path.join(home, "cgroup.procs"), os.W_OK)):
            return None, f"cgroup v2 is not writable here ({parent})"
        if _kernel_version() < (5, 14):
            return None, "the kernel has no cgroup.kill (Linux 5.14 or later needed)"
        cgroups = cls(base=base, home=home, memory=False, everyone=choice.lower() == "all",
                      parent=parent)
        if os.path.isdir(base) and not cgroups.make_base():
            return None, f"{base} is not usable"
        return cgroups, ""

    def make_base(self) -> bool:
        """Make ``corral-<hash>`` (once) and enable the memory controller where we can;
        False (and no more cgroups) if that fails."""
        if self.ready or self.broken:
            return self.ready
        try:
            os.makedirs(self.base, exist_ok=True)
        except OSError as exc:
            print(f"corral-launcher: cannot create {self.base}: {exc.strerror}; services "
                  "run in process groups only", file=sys.stderr)
            self.broken = True
            return False
        if not os.path.exists(os.path.join(self.base, "cgroup.kill")):
            print(f"corral-launcher: {self.base} has no cgroup.kill; services run in process "
                  "groups only", file=sys.stderr)
            _rmdir(self.base)
            self.broken = True
            return False
        self.memory = _enable(self.parent or self.home, "memory") and _enable(self.base,
                                                                                "memory")
        self.ready = True
        return True

    def stale(self) -> list[str]:
        """Leaf cgroups left by a launcher that died: their processes are orphans no one
        can supervise (their output pipes died with it), so the caller kills them."""
        try:
            names = os.listdir(self.base)
        except OSError:
            return []
        return [os.path.join(self.base, n) for n in names
                if os.path.isdir(os.path.join(self.base, n))]

    # ------------------------------------------------------------------ leaves
    def create(self, name: str) -> str | None:
        """Make (or reuse) the leaf for ``name`` and return its path, or None on failure.

        A leaf still owned by a live child (two children with one name, as during a
        cut-over) gets a numbered sibling, so killing one never touches the other.
        Call :meth:`adopt` once the child runs there, or :meth:`remove` if it did not start.
        """
        if not self.make_base():
            return None
        leaf = leaf_name(name)
        path = os.path.join(self.base, leaf)
        n = 1
        while path in self.owners:
            n += 1
            path = os.path.join(self.base, f"{leaf}-{n}")
        try:
            os.mkdir(path)
        except FileExistsError:
            if self.memory:  # a reused leaf keeps its old limit: lift it while we enter
                _write(os.path.join(path, "memory.max"), "max")
        except OSError as exc:
            print(f"corral-launcher: cannot create cgroup {path}: {exc.strerror}; "
                  f"{name} runs in a process group only", file=sys.stderr)
            return None
        return path

    @contextmanager
    def inside(self, path: str) -> Iterator[None]:
        """Run the body (the fork/exec) with the launcher in ``path``, so the child starts
        there; move back afterwards.

        Error handling: if entering fails, the body runs where we are (the child gets
        no cgroup and OSError is not raised); if moving back fails the launcher stays in
        a leaf it can never be killed with: :meth:`kill` refuses any cgroup that holds
        the launcher.
        """
        entered = self.entered = _write(os.path.join(path, "cgroup.procs"), "0")
        try:
            yield
        finally:
            if entered and not _write(os.path.join(self.home, "cgroup.procs"), "0"):
                self.stuck = path
                print(f"corral-launcher: cannot move back out of {path}", file=sys.stderr)

    def adopt(self, path: str, pid: int) -> None:
        """Record that ``pid`` (the child started in ``path``) owns the leaf."""
        self.owners[path] = pid

    def set_memory_max(self, path: str, limit: int | None, name: str) -> int | None:
        """Write ``memory.max``; return the limit applied, or None (no controller, no limit)."""
        if limit is None:
            return None
        if not self.memory:
            if not self._warned_memory:
                print("corral-launcher: the cgroup v2 memory controller is not available "
                      f"under {self.base}; memory limits stay the supervisor's (for {name} "
                      "and others)", file=sys.stderr)
                self._warned_memory = True
            return None
        return limit if _write(os.path.join(path, "memory.max"), str(limit)) else None

    def oom_kills(self, path: str) -> int | None:
        """``oom_kill`` from ``memory.events``, or None where there is no such file."""
        if not self.memory:
            return None
        try:
            with open(os.path.join(path, "memory.events")) as f:
                for line in f:
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        except (OSError, ValueError):
            return None
        return None

    def procs(self, path: str) -> list[int]:
        """The pids in the cgroup (empty when it is gone)."""
        try:
            with open(os.path.join(path, "cgroup.procs")) as f:
                return [int(line) for line in f if line.strip()]
        except (OSError, ValueError):
            return []

    def kill(self, path: str) -> bool:
        """SIGKILL every process in the cgroup (``cgroup.kill``), never the launcher's own."""
        if path == self.stuck:
            print(f"corral-launcher: refusing to kill {path}: the launcher is in it",
                  file=sys.stderr)
            return False
        return _write(os.path.join(path, "cgroup.kill"), "1")

    def release(self, path: str, pid: int) -> None:
        """The child that owned ``path`` is gone: the leaf may be removed (see :meth:`remove`)."""
        if self.owners.get(path) == pid:
            del self.owners[path]

    def remove(self, path: str) -> bool:
        """Remove the leaf if no child owns it; True when it is gone (or now owned).

        False means it still holds dying processes (``EBUSY``): try again later.
        """
        if path in self.owners:
            return True
        try:
            os.rmdir(path)
        except FileNotFoundError:
            return True
        except OSError as exc:
            # EBUSY: processes are still dying.  Anything else is not ours to fix.
            return exc.errno != errno.EBUSY
        return True

    def close(self, wait: float = 1.0) -> None:
        """At launcher exit: kill what is left in our leaves, remove them and the
        per-state-dir directory, waiting up to ``wait`` seconds for dying processes (the
        launcher has nothing else left to do; what is still there is left for the next
        launcher's clean-up at start)."""
        deadline = time.monotonic() + wait
        left = self.stale()
        for path in left:
            if path != self.stuck:
                self.kill(path)
        while True:
            left = [path for path in left if not self.remove(path)]
            if not left or time.monotonic() >= deadline:
                break
            time.sleep(0.01)
        _rmdir(self.base)


def _kernel_version() -> tuple[int, int]:
    """``(major, minor)`` of the running kernel; (0, 0) if it cannot be read."""
    match = re.match(r"(\d+)\.(\d+)", os.uname().release)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def _enable(path: str, controller: str) -> bool:
    """Make ``controller`` available to ``path``'s children; True if it is."""
    try:
        with open(os.path.join(path, "cgroup.subtree_control")) as f:
            if controller in f.read().split():
                return True
        with open(os.path.join(path, "cgroup.controllers")) as f:
            if controller not in f.read().split():
                return False
    except OSError:
        return False
    return _write(os.path.join(path, "cgroup.subtree_control"), f"+{controller}")


def _write(path: str, text: str) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        os.write(fd, text.encode())
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


def _rmdir(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass
