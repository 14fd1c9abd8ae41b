"""Service groups across hosts: membership, census, group configs, on etcd or on one host.

Public surface (what the supervisor and the API use; the rest is private to the package):

- :class:`ClusterBackend` (the interface) and :class:`ClusterListener` (the callbacks the
  supervisor gives it); :class:`LocalBackend` (no etcd) and :class:`EtcdBackend`;
- :class:`Identity`, :class:`MemberStatus`, :class:`InstanceStatus` (what a member
  publishes), :class:`MemberRecord`, :class:`GroupConfig`;
- :class:`Census`, :class:`CensusMember`, :class:`LinkStatus` (what ``census`` and
  ``sup status`` show);
- :class:`ClusterOptions` (``sup run``'s flags, and the backend they describe);
- :class:`EtcdSettings`, :func:`parse_endpoints`, :func:`read_endpoints_file`;
- names: :func:`service_group`, :func:`split_service_group`, :func:`default_member_name`,
  :func:`default_address`, :class:`Keyspace`.

:mod:`corral.cluster.etcd` is the only module that speaks to etcd.  Nothing here imports
the supervisor: it hands changes over through :class:`ClusterListener`.
"""

from typing import TYPE_CHECKING

from .backend import DEFAULT_TTL, ClusterBackend, ClusterListener
from .census import Census, CensusMember, LinkStatus
from .etcd import EtcdSettings, parse_endpoints, read_endpoints_file
from .keys import (
    DEFAULT_GROUP,
    DEFAULT_ORG,
    Keyspace,
    check_member,
    check_service_group,
    default_address,
    default_member_name,
    service_group,
    split_service_group,
)
from .local import LocalBackend
from .options import PASSWORD_ENV, ClusterOptions
from .records import GroupConfig, Identity, InstanceStatus, MemberRecord, MemberStatus
from .remote import EtcdBackend

if TYPE_CHECKING:
    def _both_backends_implement_the_interface(
            local: LocalBackend, etcd: EtcdBackend) -> tuple[ClusterBackend, ClusterBackend]:
        return local, etcd  # mypy checks each against the Protocol here


__all__ = [
    "DEFAULT_GROUP",
    "DEFAULT_ORG",
    "DEFAULT_TTL",
    "PASSWORD_ENV",
    "Census",
    "CensusMember",
    "ClusterBackend",
    "ClusterListener",
    "ClusterOptions",
    "EtcdBackend",
    "EtcdSettings",
    "GroupConfig",
    "Identity",
    "InstanceStatus",
    "Keyspace",
    "LinkStatus",
    "LocalBackend",
    "MemberRecord",
    "MemberStatus",
    "check_member",
    "check_service_group",
    "default_address",
    "default_member_name",
    "parse_endpoints",
    "read_endpoints_file",
    "service_group",
    "split_service_group",
]
