"""TLS material and the bearer token for the remote (TCP) API listener.

Everything lives under ``<state>/tls/`` (directory 0700, every file 0600)::

    ca.key  ca.crt          a private CA made for this corral only (clients pin ca.crt)
    server.key server.crt   the listener's certificate, signed by the CA
    token                   64 hex characters (32 random bytes), the bearer token

:func:`ensure_material` creates what is missing on first start and reuses it later; the
server certificate alone is re-issued when the listen address is not among its names
(or it is close to expiry), so clients that pinned the CA keep working.  Keys are ECDSA
P-256: generated in milliseconds, and every TLS 1.2+ client speaks it.

:class:`RemoteAccess` is what the daemon and the API hold at run time: the listen address,
the material, and the current token (re-read when the file changes, replaced by
:meth:`RemoteAccess.rotate_token`), so a rotation takes effect without a restart.
Secrets (keys, token) never appear in a repr or a message.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
import socket
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from corral.errors import CorralError, SpecError
from corral.protocol import binding
from corral.supervisor.statefile import atomic_write

#: The name every server certificate carries and clients verify by default, whatever
#: address they dial (a NAT, a DNS alias): the pinned CA is what proves the server.
SERVER_NAME = "corral"
CA_DAYS = 3650
SERVER_DAYS = 825
#: Re-issue the server certificate when it has less than this left.
RENEW_BEFORE = dt.timedelta(days=30)
TOKEN_BYTES = 32


def parse_listen(text: str) -> tuple[str, int]:
    """Split ``host:port`` (``[v6]:port`` for IPv6) into ``(host, port)``.

    Raises :class:`SpecError` naming the option when the address is malformed.
    """
    try:
        return binding.split(text)
    except ValueError as exc:
        raise SpecError(f"--listen-http {text!r}: {exc}") from None


@dataclass(frozen=True)
class TlsPaths:
    """The files under ``<state>/tls/``."""

    dir: Path
    ca_key: Path
    ca_cert: Path
    server_key: Path
    server_cert: Path
    token: Path

    @classmethod
    def under(cls, state_dir: Path) -> TlsPaths:
        d = state_dir / "tls"
        return cls(d, d / "ca.key", d / "ca.crt", d / "server.key", d / "server.crt",
                   d / "token")


def server_names(listen_host: str) -> tuple[list[str], list[str]]:
    """The DNS names and IP addresses a server certificate for ``listen_host`` carries.

    Always the host name, ``corral``, ``localhost``, 127.0.0.1 and ::1; plus the listen
    host itself, unless it is the unspecified address (0.0.0.0 / ::), which no client dials.
    """
    dns = [SERVER_NAME, "localhost"]
    hostname = socket.gethostname()
    if hostname and hostname not in dns:
        dns.append(hostname)
    ips = ["127.0.0.1", "::1"]
    try:
        ip = ipaddress.ip_address(listen_host)
    except ValueError:
        if listen_host.lower() not in dns:
            dns.append(listen_host.lower())
    else:
        if not ip.is_unspecified and str(ip) not in ips:
            ips.append(str(ip))
    return dns, ips


def ensure_material(state_dir: Path, listen_host: str) -> TlsPaths:
    """Create (first start) or reuse the CA, the server certificate and the token.

    The server certificate is re-issued, by the same CA, when a name of
    :func:`server_names` is missing from it or it expires within :data:`RENEW_BEFORE`.

    Error handling: raises :class:`CorralError` naming the file when something cannot be
    read, parsed or written; nothing is half-written (every write is atomic).
    """
    p = TlsPaths.under(state_dir)
    try:
        p.dir.mkdir(mode=0o700, exist_ok=True)
        os.chmod(p.dir, 0o700)
    except OSError as exc:
        raise CorralError(f"cannot create {p.dir}: {exc.strerror}") from None
    now = dt.datetime.now(dt.UTC)
    if not (p.ca_key.exists() and p.ca_cert.exists()):
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_cert = _ca_certificate(ca_key, now)
        _write(p.ca_key, _key_pem(ca_key))
        _write(p.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM))
        _remove(p.server_cert)  # signed by a CA that is gone
    else:
        ca_key = _load_key(p.ca_key)
        ca_cert = _load_cert(p.ca_cert)
    dns, ips = server_names(listen_host)
    if not _server_cert_fits(p, ca_cert, dns, ips, now):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _server_certificate(key, ca_key, ca_cert, dns, ips, now)
        _write(p.server_key, _key_pem(key))
        _write(p.server_cert, cert.public_bytes(serialization.Encoding.PEM))
    if not p.token.exists():
        _write(p.token, (new_token() + "\n").encode())
    return p


def new_token() -> str:
    """A fresh token: 32 random bytes, hex."""
    return secrets.token_hex(TOKEN_BYTES)


@dataclass
class RemoteAccess:
    """The remote listener's address, material and current token.

    Args:
        host, port: the ``--listen-http`` address.
        paths: the files under ``tls/`` (made by :func:`ensure_material`).
    """

    host: str
    port: int
    paths: TlsPaths
    _token: str = field(default="", repr=False)
    _stamp: tuple[int, int] = field(default=(0, 0), repr=False)

    @classmethod
    def setup(cls, state_dir: Path, listen: str) -> RemoteAccess:
        """Parse ``listen``, ensure the material, read the token."""
        host, port = parse_listen(listen)
        remote = cls(host, port, ensure_material(state_dir, host))
        remote.token()
        return remote

    def token(self) -> str:
        """The current token; re-read when the file changed (cheap: one ``stat``)."""
        try:
            st = os.stat(self.paths.token)
            stamp = (st.st_ino, st.st_mtime_ns)
            if stamp == self._stamp:
                return self._token
            text = self.paths.token.read_text().strip()
        except OSError:
            # Unreadable for a moment (a rotation renaming it into place): the last good
            # token stays in force rather than none or an empty one.
            return self._token
        if len(text) >= 32:  # a torn or emptied file must not open the door
            self._token, self._stamp = text, stamp
        return self._token

    def rotate_token(self) -> str:
        """Replace the token (file and memory); the old one stops working at once."""
        token = new_token()
        _write(self.paths.token, (token + "\n").encode())
        st = os.stat(self.paths.token)
        self._token, self._stamp = token, (st.st_ino, st.st_mtime_ns)
        return token

    def advertised_host(self) -> str:
        """The address a client should dial: the listen host, or this host's name when
        listening on every interface."""
        host = self.host
        try:
            if ipaddress.ip_address(host).is_unspecified:
                host = socket.gethostname()
        except ValueError:
            pass
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    def client_auth(self) -> dict[str, str]:
        """What a client needs: the address to dial, the name to verify, the CA, the token."""
        return {"host": self.advertised_host(), "server_name": SERVER_NAME,
                "hostname": socket.gethostname(),
                "ca_cert": self.paths.ca_cert.read_text(), "token": self.token()}


# -- certificates --------------------------------------------------------------------------

def _ca_certificate(key: ec.EllipticCurvePrivateKey, now: dt.datetime) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                         f"corral CA ({socket.gethostname()})")])
    return (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))


def _server_certificate(key: ec.EllipticCurvePrivateKey, ca_key: ec.EllipticCurvePrivateKey,
                        ca_cert: x509.Certificate, dns: list[str], ips: list[str],
                        now: dt.datetime) -> x509.Certificate:
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    return (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SERVER_NAME)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=SERVER_DAYS))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))


def _server_cert_fits(p: TlsPaths, ca_cert: x509.Certificate, dns: list[str], ips: list[str],
                      now: dt.datetime) -> bool:
    """Whether the existing server certificate is usable as is."""
    if not (p.server_cert.exists() and p.server_key.exists()):
        return False
    try:
        cert = x509.load_pem_x509_certificate(p.server_cert.read_bytes())
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        cert.verify_directly_issued_by(ca_cert)
        key = _load_key(p.server_key)
    except CorralError:
        return False  # e.g. a kill between writing the key and the certificate
    except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound, OSError):
        return False  # unreadable, or signed by another CA: issue a new one
    have_dns = set(sans.get_values_for_type(x509.DNSName))
    have_ips = {str(i) for i in sans.get_values_for_type(x509.IPAddress)}
    pem = serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    return (key.public_key().public_bytes(*pem) == cert.public_key().public_bytes(*pem)
            and set(dns) <= have_dns and set(ips) <= have_ips
            and cert.not_valid_after_utc - now > RENEW_BEFORE)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise CorralError(f"cannot read the private key {path}: "
                       f"{getattr(exc, 'strerror', None) or 'not a PEM key'}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CorralError(f"{path}: expected an EC private key")
    return key


def _load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise CorralError(f"cannot read the certificate {path}: "
                       f"{getattr(exc, 'strerror', None) or 'not a PEM certificate'}") from None


def _write(path: Path, data: bytes) -> None:
    try:
        atomic_write(path, data, 0o600)
        os.chmod(path, 0o600)  # the umask could only have narrowed it; make it exact
    except OSError as exc:
        raise CorralError(f"cannot write {path}: {exc.strerror}") from None


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
