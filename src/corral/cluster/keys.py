"""Names and the etcd keyspace of service groups.  Pure.

Every key of an organisation lives under ``/corral/<org>/``::

    members/<service group>/<member>   lease-bound JSON member record (records.MemberRecord)
    config/<service group>             {"version", "values"}, written by compare-and-swap
    spec/<service group>               the group's process entry, versioned (group rollouts)
    election/<service group>           etcd's v3election name for the leader topology
    rollout/<service group>            the update slot, held under the updater's lease

A *service group* is ``<process>.<group>`` (Habitat's ``redis.default``).  Process names
may contain dots, group names may not, so the last dot splits them.  A *member* is one
supervisor's copy of a service group, named by ``--member-name``.
"""

from __future__ import annotations

import fcntl
import re
import socket
import struct
from dataclasses import dataclass

from corral.errors import SpecError

MAX_NAME = 128
_PROCESS = r"[a-z0-9][a-z0-9_.-]*"
_GROUP = r"[a-z0-9][a-z0-9_-]*"
GROUP_PATTERN = re.compile(_GROUP)
SERVICE_GROUP_PATTERN = re.compile(rf"({_PROCESS})\.({_GROUP})")
MEMBER_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
ORG_PATTERN = re.compile(r"[a-z0-9][a-z0-9_.-]*")
DEFAULT_GROUP = "default"
DEFAULT_ORG = "default"

#: The kinds of keys under an organisation, in the order the module docstring lists them.
KINDS = ("members", "config", "spec", "election", "rollout")


def _check(kind: str, name: str, pattern: re.Pattern[str], rule: str) -> str:
    if not isinstance(name, str) or len(name) > MAX_NAME or not pattern.fullmatch(name):
        raise SpecError(f"invalid {kind} {name!r}: {rule}, at most {MAX_NAME} characters")
    return name


def check_service_group(name: str) -> str:
    """``name`` if it is ``<process>.<group>``, else SpecError saying what one looks like."""
    return _check("service group", name, SERVICE_GROUP_PATTERN,
                  "write <process>.<group>, e.g. redis.default (lower-case letters, digits, "
                  "'_', '-'; the group has no '.')")


def check_member(name: str) -> str:
    """``name`` if it can name a member (a key segment: no '/')."""
    return _check("member name", name, MEMBER_PATTERN,
                  "use letters, digits, '_', '.', '-', starting with a letter or digit")


def check_org(name: str) -> str:
    """``name`` if it can name an organisation."""
    return _check("org", name, ORG_PATTERN,
                  "use lower-case letters, digits, '_', '.', '-', starting with a letter or digit")


def service_group(process: str, group: str = DEFAULT_GROUP) -> str:
    """``<process>.<group>``: the service group of ``process`` in cluster group ``group``."""
    _check("cluster group", group, GROUP_PATTERN,
           "use lower-case letters, digits, '_', '-', starting with a letter or digit")
    return check_service_group(f"{process}.{group}")


def split_service_group(name: str) -> tuple[str, str]:
    """``(process, group)`` of service group ``name``."""
    process, _, group = check_service_group(name).rpartition(".")
    return process, group


def default_member_name(host: str, state_name: str) -> str:
    """DESIGN's default member id: the host name and the state name (``web1-default``).

    Characters a member name cannot hold become ``-``.
    """
    raw = re.sub(r"[^A-Za-z0-9_.-]", "-", f"{host.split('.')[0]}-{state_name}").lstrip("_.-")
    return raw[:MAX_NAME] or "member"


def default_address() -> str:
    """The address of the interface the default route goes out of (``127.0.0.1`` if none).

    With a gateway, a UDP ``connect`` to it makes the kernel pick the source address the
    route would use, without sending a packet; a default route straight onto a link (no
    gateway) gives that interface's own address.
    """
    route = _default_route()
    if route is None:
        return "127.0.0.1"
    interface, gateway = route
    if gateway is not None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.connect((gateway, 9))
                return str(probe.getsockname()[0])
            except OSError:
                pass
    return _interface_address(interface) or "127.0.0.1"


def _default_route() -> tuple[str, str | None] | None:
    """The IPv4 default route with the lowest metric from ``/proc/net/route``: its
    interface and its gateway (None: on the link).  None: no default route."""
    try:
        with open("/proc/net/route") as table:
            rows = [line.split() for line in table.readlines()[1:]]
    except OSError:
        return None
    best: tuple[int, str, str | None] | None = None
    for row in rows:
        # Iface Destination Gateway Flags RefCnt Use Metric Mask ...; flags: 1 up, 2 gateway.
        if len(row) < 8 or row[1] != "00000000" or row[7] != "00000000":
            continue
        flags, metric = int(row[3], 16), int(row[6])
        if not flags & 1:
            continue
        gateway = socket.inet_ntoa(struct.pack("<L", int(row[2], 16))) if flags & 2 else None
        if best is None or metric < best[0]:
            best = (metric, row[0], gateway)
    return None if best is None else (best[1], best[2])


def _interface_address(interface: str) -> str | None:
    """The primary IPv4 address of ``interface`` (SIOCGIFADDR), None if it has none."""
    request = struct.pack("256s", interface.encode()[:15])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            answer = fcntl.ioctl(probe.fileno(), _SIOCGIFADDR, request)
        except OSError:
            return None
    return socket.inet_ntoa(answer[20:24])


_SIOCGIFADDR = 0x8915


@dataclass(frozen=True)
class Key:
    """A parsed key: its kind, its service group and (members only) the member."""

    kind: str
    service_group: str
    member: str | None = None


class Keyspace:
    """The keys of one organisation (``/corral/<org>/``), as text."""

    def __init__(self, org: str = DEFAULT_ORG) -> None:
        self.org = check_org(org)
        self.root = f"/corral/{org}/"

    def members(self, service_group: str | None = None) -> str:
        """The prefix of every member record, or of one service group's."""
        return f"{self.root}members/" + (f"{service_group}/" if service_group else "")

    def member(self, service_group: str, member: str) -> str:
        return f"{self.root}members/{service_group}/{member}"

    def config(self, service_group: str) -> str:
        return f"{self.root}config/{service_group}"

    def spec(self, service_group: str) -> str:
        return f"{self.root}spec/{service_group}"

    def election(self, service_group: str) -> str:
        return f"{self.root}election/{service_group}"

    def rollout(self, service_group: str) -> str:
        return f"{self.root}rollout/{service_group}"

    def parse(self, key: str) -> Key | None:
        """What ``key`` is, or None for a key this version does not know (ignored)."""
        if not key.startswith(self.root):
            return None
        kind, _, rest = key[len(self.root):].partition("/")
        if kind not in KINDS or not rest:
            return None
        if kind == "members":
            group, _, member = rest.partition("/")
            if not SERVICE_GROUP_PATTERN.fullmatch(group) or not MEMBER_PATTERN.fullmatch(member):
                return None
            return Key(kind, group, member)
        if kind == "election":  # the election's own keys are "<name>/<lease>"
            rest = rest.partition("/")[0]
        return Key(kind, rest) if SERVICE_GROUP_PATTERN.fullmatch(rest) else None
