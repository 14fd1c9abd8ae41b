"""Small field types of the spec: names, variable names, umasks, rlimits, service addresses.

LEAF: imports the stdlib, pydantic and :mod:`corral.spec.units` only.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BeforeValidator, Field

from .units import Duration

_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]*")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
RlimitName = Literal["nofile", "nproc", "core", "as", "fsize", "stack", "memlock", "cpu"]


def _check_name(v: str) -> str:
    if not _NAME.fullmatch(v) or len(v) > 64:
        raise ValueError(
            f"invalid name {v!r}: use at most 64 of a-z 0-9 _ . - starting with a letter or digit"
        )
    return v


def _check_env_name(v: str) -> str:
    if not _ENV_NAME.fullmatch(v):
        raise ValueError(
            f"invalid variable name {v!r}: use A-Z a-z 0-9 _, not starting with a digit"
        )
    return v


def _number_to_str(v: object) -> object:
    return str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v


def _parse_umask(v: object) -> str:
    if not isinstance(v, str):
        raise ValueError('must be a quoted octal string like "022" (YAML reads 022 as a number)')
    m = re.fullmatch(r"(?:0o)?([0-7]{1,4})", v.strip())
    if not m or int(m[1], 8) > 0o777:
        raise ValueError(f'invalid umask {v!r}: use octal digits like "022" or "077"')
    return f"{int(m[1], 8):03o}"


def _parse_rlimit(v: object) -> object:
    return -1 if isinstance(v, str) and v.strip().lower() in ("unlimited", "infinity") else v


def _check_service_address(v: object) -> str:
    host, sep, port = v.rpartition(":") if isinstance(v, str) else ("", "", "")
    if not sep:
        raise ValueError(f"must be host:port, e.g. 127.0.0.1:5000 or :5000, not {v!r}")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"port must be a number from 1 to 65535, not {port!r}")
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if ":" in host and bare == host:
        raise ValueError(f"write an IPv6 address in brackets, e.g. [::1]:{port}")
    if bare not in ("", "*", "localhost"):
        try:
            ipaddress.ip_address(bare)
        except ValueError:
            raise ValueError(
                f"host must be an IP address, localhost, * or empty, not {host!r}"
            ) from None
    return f"{host}:{port}"


Name = Annotated[str, AfterValidator(_check_name)]
EnvName = Annotated[str, AfterValidator(_check_env_name)]
EnvValue = Annotated[str, BeforeValidator(_number_to_str)]
RlimitValue = Annotated[int, BeforeValidator(_parse_rlimit), Field(ge=-1)]  # -1 = unlimited
NonEmpty = Annotated[str, Field(min_length=1)]
Port = Annotated[int, Field(ge=1, le=65535)]
Seconds = Annotated[Duration, Field(ge=0)]
Positive = Annotated[Duration, Field(gt=0)]
Umask = Annotated[str, BeforeValidator(_parse_umask)]
ServiceAddress = Annotated[str, BeforeValidator(_check_service_address)]
