"""The supervisor's settings from its environment, parsed and checked once at start.

The composition root (:mod:`corral.daemon`) reads them with :meth:`Settings.from_environ`
and hands them in; nothing else in the supervisor reads the environment.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from corral.errors import SpecError
from corral.protocol import messages as m
from corral.protocol.defaults import PORT_RANGE as DEFAULT_RANGE


@dataclass(frozen=True)
class Settings:
    """What the supervisor takes from its environment.

    Attributes:
        port_range: ``CORRAL_PORT_RANGE`` (``LOW-HIGH``), where ``SERVICE_PORT_*`` ports
            are allocated; 30000-39999 by default.
        base_env: the environment every process (and hook, and exec check) starts from:
            the supervisor's own, less the launcher's socket and the etcd password
            (``CORRAL_CLUSTER_PASSWORD``: it is the supervisor's, not its processes').
    """

    port_range: tuple[int, int] = DEFAULT_RANGE
    base_env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Settings:
        """The settings ``environ`` gives.

        Raises:
            SpecError: a variable holds a value it cannot (one line: which, and why).
        """
        return cls(port_range=_port_range(environ.get("CORRAL_PORT_RANGE", "")),
                   base_env={k: v for k, v in environ.items() if k not in _PRIVATE})


# Kept from the processes' environment.  The name is corral.cluster.PASSWORD_ENV's, written
# out: the settings are read before anything of the cluster package is imported.
_PRIVATE = frozenset({m.ENV_LAUNCHER_FD, "CORRAL_CLUSTER_PASSWORD"})


def _port_range(text: str) -> tuple[int, int]:
    if not text.strip():
        return DEFAULT_RANGE
    low, _, high = text.partition("-")
    if low.strip().isdigit() and high.strip().isdigit() and 0 < int(low) <= int(high) < 65536:
        return int(low), int(high)
    raise SpecError(f"CORRAL_PORT_RANGE={text!r} is not a port range: write LOW-HIGH, two "
                    "ports from 1 to 65535 with LOW <= HIGH (e.g. 30000-39999)")
