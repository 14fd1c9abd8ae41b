"""Where a corral instance keeps its state.  STDLIB ONLY.

The launcher, the supervisor and the CLI resolve the state directory the same way:
``--state-dir``, then ``$CORRAL_HOME``, then ``/var/lib/corral/<name>`` as root or
``$XDG_STATE_HOME/corral/<name>`` (``~/.local/state/corral/<name>``) otherwise, where
``<name>`` is ``--override-name`` (default ``default``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

DEFAULT_NAME = "default"
UNIX_PATH_MAX = 107
"""Bytes of a Unix socket's path the kernel takes (``sun_path`` is 108 with its NUL)."""


def resolve_state_dir(state_dir: str | None, name: str | None = None) -> Path:
    """Return the absolute state directory for these options (it may not exist yet)."""
    if state_dir:
        return Path(state_dir).expanduser().absolute()
    home = os.environ.get("CORRAL_HOME")
    if home:
        return Path(home).expanduser().absolute()
    name = name or DEFAULT_NAME
    if os.geteuid() == 0:
        return Path("/var/lib/corral") / name
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg).absolute() / "corral" / name


def api_socket(state_dir: Path) -> Path:
    """The local API's Unix socket (mode 0600)."""
    return state_dir / "api.sock"


def lock_file(state_dir: Path) -> Path:
    """The launcher's lock: one launcher per state directory."""
    return state_dir / "LOCK"


def logs_dir(state_dir: Path) -> Path:
    """Where the launcher writes ``<service>.log`` and its rotations."""
    return state_dir / "logs"


def service_log(state_dir: Path, name: str) -> Path:
    """The log a service's (or ``.balancer``'s, ``.launcher``'s) output goes to; its
    rotations are ``<name>.log.1`` and on."""
    return logs_dir(state_dir) / f"{name}.log"


def run_dir(state_dir: Path) -> Path:
    """Parent of every instance's fresh working directory."""
    return state_dir / "run"


@contextlib.contextmanager
def unix_address(path: Path | str) -> Iterator[str]:
    """An address for the Unix socket at ``path`` that fits in :data:`UNIX_PATH_MAX`, to bind
    or connect in this process while the context lasts: ``path`` itself when it fits,
    else ``/proc/self/fd/<its directory, opened>/<its name>`` (a deep state directory
    must not leave a socket in it unreachable)."""
    text = str(path)
    if len(os.fsencode(text)) <= UNIX_PATH_MAX or not os.path.isdir("/proc/self/fd"):
        yield text
        return
    fd = os.open(os.path.dirname(text) or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{os.path.basename(text)}"
    finally:
        os.close(fd)
