"""Building the launcher's Spawn request for an instance (pure).

The caller resolves what needs the world (the working directory, ports, the
environment); this turns them and the spec into the encoded request, which the core
keeps per instance and spec, so that a restart costs one frame write.
"""

from __future__ import annotations

import json
from pathlib import Path

from corral.protocol import messages as m
from corral.spec import ProcessSpec

from .launcher_client import Message


def build(name: str, spec: ProcessSpec, argv: list[str], env: dict[str, str], cwd: str,
          user: str | None, group: str | None, log: Path, sockets: list[str]) -> bytes:
    """The encoded Spawn request of the process called ``name`` (its launcher name).

    Args:
        spec: the process's spec (its umask, rlimits, memory limit and log settings).
        argv: the command, secrets substituted.
        env: its whole environment.
        cwd: its working directory.
        user: the user it runs as (None: corral's own), and ``group`` its group.
        log: the service's log file.
        sockets: the socket-mode services whose listening sockets it inherits.
    """
    request: Message = {
        "type": m.SPAWN, "name": name, "argv": argv, "env": env,
        "cwd": cwd, "user": user, "group": group,
        "umask": int(spec.umask, 8) if spec.umask else None, "rlimits": dict(spec.rlimits),
        "memory_max": spec.limits.memory,  # launcher: cgroup memory.max
        # How a launcher that finds it left by a dead one stops it.
        "stop": {"signal": spec.stop.signal, "timeout": spec.stop.timeout},
        "log": {"path": str(log), "format": spec.logs.format,
                "max_bytes": spec.logs.max_bytes, "keep": spec.logs.keep,
                "stdout": spec.logs.stdout},
    }
    if sockets:
        request["listen_fds"] = sockets
    return json.dumps(request, separators=(",", ":")).encode()
