"""corral's desired state: processes, services, the target, and their validation.

LEAF: the package imports the stdlib, pydantic, yaml and :mod:`corral.errors` only.  One
noun per module, each re-exported here:

- :mod:`.units`: durations, sizes, percentages and signals, read and written;
- :mod:`.fields`: small field types (names, variable names, umasks, rlimits, addresses);
- :mod:`.models`: the models (a process and its parts, a service, the target);
- :mod:`.checks`: checks between entries (names, dependencies, cycles, addresses);
- :mod:`.reader`: YAML text to data and a node tree (the fast path, keys given twice);
- :mod:`.loading`: text or data to a model, or SpecError;
- :mod:`.problems`: problems and how they read (file, line, field path, message).

Every model is frozen and forbids unknown fields.  Durations are stored as float seconds and
sizes as int bytes; both dump in human form ("8s", "10MiB"), so ``to_dict()`` and
``Target.to_yaml()`` give a canonical text that loads back to an equal object.

Read user input through :func:`load_target`, :func:`load_process`, :func:`validate_target` or
:func:`validate_process`.  They raise :class:`~corral.errors.SpecError` whose ``problems`` are
one line each, ``<source>:<line>: <field path>: <message>``::

    target.yaml:7: processes[1].restart.policy: must be one of always, on-failure, never
"""

from .fields import (
    EnvName,
    EnvValue,
    Name,
    NonEmpty,
    Port,
    Positive,
    RlimitName,
    RlimitValue,
    Seconds,
)
from .loading import load_process, load_target, refuse, validate_process, validate_target
from .models import (
    MAX_BACKOFF,
    ClusterSpec,
    HealthSpec,
    HooksSpec,
    HttpCheck,
    LimitsSpec,
    LogSpec,
    ProcessSpec,
    ResourceRef,
    RestartSpec,
    ServiceSpec,
    StopSpec,
    Target,
    TcpCheck,
)
from .problems import Loc, Problem
from .units import (
    Duration,
    Percent,
    Size,
    format_duration,
    format_size,
    parse_duration,
    parse_signal,
    parse_size,
)

__all__ = [
    "MAX_BACKOFF",
    "ClusterSpec",
    "Duration",
    "EnvName",
    "EnvValue",
    "HealthSpec",
    "HooksSpec",
    "HttpCheck",
    "LimitsSpec",
    "Loc",
    "LogSpec",
    "Name",
    "NonEmpty",
    "Percent",
    "Port",
    "Positive",
    "Problem",
    "ProcessSpec",
    "ResourceRef",
    "RestartSpec",
    "RlimitName",
    "RlimitValue",
    "Seconds",
    "ServiceSpec",
    "Size",
    "StopSpec",
    "Target",
    "TcpCheck",
    "format_duration",
    "format_size",
    "load_process",
    "load_target",
    "parse_duration",
    "parse_signal",
    "parse_size",
    "refuse",
    "validate_process",
    "validate_target",
]
