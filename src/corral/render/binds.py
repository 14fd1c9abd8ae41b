"""The ``svc`` and ``bind`` views a template sees, and the ``CORRAL_BIND_*`` environment.

Pure.  A member is a mapping as :meth:`corral.cluster.CensusMember.view` builds it::

    {"member": "db1-default", "host": "db1", "address": "10.0.0.5",
     "ports": {"traffic": 5432}, "exports": {"port": 5432}, "state": "up",
     "health": "ok", "leader": false, "alive": true, ...}

Members are sorted by member name, so a render is the same on every host and every time
for the same census.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

Member = Mapping[str, Any]


def _sorted(members: Sequence[Member]) -> list[Member]:
    return sorted(members, key=lambda m: str(m.get("member", "")))


def service_view(group: str, members: Sequence[Member], me: str | None) -> dict[str, Any]:
    """``svc``: the service group ``group`` with its ``members`` (all known ones).

    ``me`` is this host's member name; ``svc.me`` is None when it is not among them yet.
    ``svc.leader`` is the member whose record says leader (None in a standalone group).
    """
    ordered = _sorted(members)
    return {
        "group": group,
        "members": ordered,
        "me": next((m for m in ordered if m.get("member") == me), None),
        "first": ordered[0] if ordered else None,
        "leader": next((m for m in ordered if m.get("leader")), None),
    }


def bind_view(binds: Mapping[str, tuple[str, Sequence[Member]]]) -> dict[str, Any]:
    """``bind``: for each bind name, ``(producer group, its live members)`` as a view."""
    out: dict[str, Any] = {}
    for name, (group, members) in binds.items():
        ordered = _sorted(members)
        out[name] = {"group": group, "members": ordered,
                     "first": ordered[0] if ordered else None}
    return out


def member_address(member: Member) -> str:
    """``address:port`` of a producer member (``[v6]:port`` for IPv6); the bare address
    when it has no port.

    The port is its exported ``port`` when it exports one, else its first named port (by
    name): a producer says which port consumers should use by exporting it.
    """
    address = str(member.get("address", ""))
    if ":" in address:
        address = f"[{address}]"
    port = _port(member)
    return f"{address}:{port}" if port is not None else address


def _port(member: Member) -> int | None:
    exported = (member.get("exports") or {}).get("port")
    if isinstance(exported, int) and not isinstance(exported, bool):
        return exported
    if isinstance(exported, str) and exported.isdigit():
        return int(exported)
    ports = member.get("ports") or {}
    for name in sorted(ports):
        if isinstance(ports[name], int):
            return int(ports[name])
    return None


def env_name(bind: str) -> str:
    """The environment variable for bind ``bind``: ``CORRAL_BIND_<NAME>_ADDRS``."""
    return f"CORRAL_BIND_{re.sub(r'[^A-Z0-9]', '_', bind.upper())}_ADDRS"


def bind_env(binds: Mapping[str, tuple[str, Sequence[Member]]]) -> dict[str, str]:
    """``{"CORRAL_BIND_DB_ADDRS": "10.0.0.5:5432,10.0.0.6:5432"}`` for each bind (empty
    text for a bind with no live member)."""
    return {env_name(name): ",".join(member_address(m) for m in _sorted(members))
            for name, (_, members) in binds.items()}
