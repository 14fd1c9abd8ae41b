"""``sup run``'s cluster flags, checked once, and the backend they describe.

``corral sup run`` checks them (and probes etcd) before it starts anything; the launcher
passes them on unchanged; the supervisor builds its backend from them
(:meth:`ClusterOptions.backend`).  Without ``--cluster`` or ``--cluster-file`` the backend
is the embedded :class:`~corral.cluster.LocalBackend`.

The etcd password is never a flag (it would show in ``ps``): it comes from
``$CORRAL_CLUSTER_PASSWORD`` or ``--cluster-password-file``.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from corral.errors import SpecError

from .backend import DEFAULT_TTL, ClusterBackend
from .etcd import EtcdSettings, parse_endpoints, read_endpoints_file
from .keys import DEFAULT_ORG, Keyspace, check_member, default_address, default_member_name
from .local import LocalBackend
from .records import Identity
from .remote import EtcdBackend

#: Where the etcd password is read from when no ``--cluster-password-file`` is given.
PASSWORD_ENV = "CORRAL_CLUSTER_PASSWORD"

# (flag, attribute) of every option that takes a value, in the order they are passed on.
FLAGS = (("--cluster", "endpoints"), ("--cluster-file", "endpoints_file"),
         ("--cluster-ca", "ca"), ("--cluster-cert", "cert"), ("--cluster-key", "key"),
         ("--cluster-user", "user"), ("--cluster-password-file", "password_file"),
         ("--org", "org"), ("--advertise", "advertise"), ("--cluster-ttl", "ttl"),
         ("--member-name", "member_name"))
_PATHS = frozenset({"endpoints_file", "ca", "cert", "key", "password_file"})


@dataclass(frozen=True)
class ClusterOptions:
    """The cluster flags of ``sup run`` (None: not given)."""

    endpoints: str | None = None
    endpoints_file: str | None = None
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    user: str | None = None
    password_file: str | None = None
    org: str | None = None
    advertise: str | None = None
    ttl: str | None = None
    member_name: str | None = None

    @property
    def joins(self) -> bool:
        """Whether these options join an etcd cluster (else: the local backend)."""
        return bool(self.endpoints or self.endpoints_file)

    def argv(self, absolute: bool = True) -> list[str]:
        """The flags again, file paths made absolute (the supervisor runs elsewhere)."""
        out: list[str] = []
        for flag, attr in FLAGS:
            value = getattr(self, attr)
            if value is not None:
                if absolute and attr in _PATHS:
                    value = str(Path(value).expanduser().absolute())
                out += [flag, value]
        return out

    def check(self, environ: Mapping[str, str]) -> None:
        """Raise :class:`SpecError` (one line) for any flag that cannot be used."""
        self.identity(Path("state"))
        self.ttl_seconds()
        Keyspace(self.org or DEFAULT_ORG)
        if self.joins:
            self.settings(environ)
        else:
            given = [flag for flag, attr in FLAGS[2:7] + FLAGS[9:10]
                     if getattr(self, attr) is not None]
            if given:
                raise SpecError(f"{given[0]} applies to an etcd cluster; give --cluster URL "
                                "or --cluster-file PATH too")

    def ttl_seconds(self) -> int:
        if self.ttl is None:
            return DEFAULT_TTL
        if not self.ttl.isdigit() or int(self.ttl) < 2:
            raise SpecError(f"--cluster-ttl {self.ttl!r}: give a whole number of seconds, "
                            "2 or more (etcd's shortest lease)")
        return int(self.ttl)

    def identity(self, state_dir: Path) -> Identity:
        """This supervisor's member name (default ``<host>-<state name>``), host and
        advertised address (default: the default route's interface address)."""
        host = socket.gethostname()
        member = self.member_name or default_member_name(host, state_dir.name)
        try:
            check_member(member)
        except SpecError as exc:
            raise SpecError(f"--member-name: {exc}") from None
        address = self.advertise or default_address()
        if not address.strip() or any(c.isspace() or c == "/" for c in address):
            raise SpecError(f"--advertise {address!r}: give the address other hosts reach "
                            "this one at, e.g. 10.0.0.5")
        return Identity(member, host, address)

    def settings(self, environ: Mapping[str, str]) -> EtcdSettings:
        """The etcd endpoints, TLS files and credentials.  Raises SpecError (one line)."""
        tls = self.ca is not None or self.cert is not None
        if self.endpoints and self.endpoints_file:
            raise SpecError("give --cluster URL or --cluster-file PATH, not both")
        if self.endpoints:
            endpoints = parse_endpoints(self.endpoints, tls=tls)
        elif self.endpoints_file:
            endpoints = read_endpoints_file(Path(self.endpoints_file), tls=tls)
        else:
            raise SpecError("no etcd endpoint given: --cluster URL or --cluster-file PATH")
        for flag, value in (("--cluster-ca", self.ca), ("--cluster-cert", self.cert),
                            ("--cluster-key", self.key)):
            if value is not None and not Path(value).is_file():
                raise SpecError(f"{flag} {value}: no such file")
        password = None
        if self.user is not None:
            password = self._password(environ)
        elif self.password_file is not None:
            raise SpecError("--cluster-password-file needs --cluster-user")
        return EtcdSettings(endpoints, ca=_path(self.ca), cert=_path(self.cert),
                            key=_path(self.key), user=self.user, password=password)

    def _password(self, environ: Mapping[str, str]) -> str:
        if self.password_file is not None:
            try:
                text = Path(self.password_file).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise SpecError(f"--cluster-password-file {self.password_file}: cannot read: "
                                f"{getattr(exc, 'strerror', None) or exc}") from None
            return text.rstrip("\r\n")
        if PASSWORD_ENV in environ:
            return environ[PASSWORD_ENV]
        raise SpecError(f"etcd user {self.user!r} has no password: set ${PASSWORD_ENV} or "
                        "give --cluster-password-file FILE")

    def backend(self, state_dir: Path, environ: Mapping[str, str]) -> ClusterBackend:
        """The backend these options describe, for the supervisor of ``state_dir``."""
        identity = self.identity(state_dir)
        if not self.joins:
            return LocalBackend(identity, state_dir)
        return EtcdBackend(self.settings(environ), identity, org=self.org or DEFAULT_ORG,
                           ttl=self.ttl_seconds(), cache_dir=state_dir / "cluster",
                           endpoints_file=_path(None if self.endpoints
                                                else self.endpoints_file))


def _path(value: str | None) -> Path | None:
    return Path(value) if value is not None else None
