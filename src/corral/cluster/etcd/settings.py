"""How to reach etcd: endpoints (from flags or a file), TLS files, user and password."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from corral.errors import SpecError

DEFAULT_PORT = 2379
DEFAULT_TIMEOUT = 1.0
DEFAULT_RETRY_FOR = 3.0


@dataclass(frozen=True)
class EtcdSettings:
    """How to reach etcd.

    Args:
        endpoints: client URLs (:func:`parse_endpoints`), tried in order.
        ca: PEM file of the CA that signed the endpoints' certificates (https).
        cert, key: a client certificate and its key, for endpoints that ask for one.
        user, password: etcd user; the password is never shown (repr, messages).
        timeout: seconds for one request to one endpoint (connect and answer).
        retry_for: seconds a request keeps going round the endpoints while etcd is busy
            (an election takes 1-2 s with etcd's default timings).
    """

    endpoints: tuple[str, ...]
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout: float = DEFAULT_TIMEOUT
    retry_for: float = DEFAULT_RETRY_FOR

    def __post_init__(self) -> None:
        if not self.endpoints:
            raise SpecError("no etcd endpoint given")
        if (self.cert is None) != (self.key is None):
            raise SpecError("a client certificate needs its key, and a key its certificate")
        if self.user is not None and self.password is None:
            raise SpecError(f"etcd user {self.user!r} has no password")


def parse_endpoints(text: str | Iterable[str], *, tls: bool = False) -> tuple[str, ...]:
    """Normalise endpoints to ``scheme://host:port``.

    ``text`` is one string (items separated by commas, spaces or new lines; ``#`` starts
    a comment, as in an endpoints file) or an iterable of items.  An item without a
    scheme gets ``https`` when ``tls``, else ``http``; one without a port gets 2379.

    Raises:
        SpecError: an item that is not an http(s) URL of a host, naming it.
    """
    if isinstance(text, str):
        lines = (line.split("#", 1)[0] for line in text.splitlines())
        items = [item for line in lines for item in line.replace(",", " ").split()]
    else:
        items = [item.strip() for item in text if item.strip()]
    out: list[str] = []
    for item in items:
        url = item if "://" in item else f"{'https' if tls else 'http'}://{item}"
        try:
            parts = urlsplit(url)
            port = parts.port or DEFAULT_PORT
        except ValueError as exc:
            raise SpecError(f"invalid etcd endpoint {item!r}: {exc}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname \
                or parts.path not in ("", "/") or parts.query or parts.username:
            raise SpecError(f"invalid etcd endpoint {item!r}: write http(s)://HOST:PORT, "
                            "e.g. http://10.0.0.1:2379")
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        normal = f"{parts.scheme}://{host}:{port}"
        if normal not in out:
            out.append(normal)
    if not out:
        raise SpecError("no etcd endpoint given")
    return tuple(out)


def read_endpoints_file(path: Path, *, tls: bool = False) -> tuple[str, ...]:
    """The endpoints listed in ``path`` (:func:`parse_endpoints`'s format)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        return parse_endpoints(text, tls=tls)
    except SpecError as exc:
        raise SpecError(f"{path}: {exc}") from None
