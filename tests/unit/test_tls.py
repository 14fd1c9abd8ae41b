"""TLS material and tokens (corral.api.tls): made once, private, reused, re-issued when needed."""

from __future__ import annotations

import ipaddress
import socket
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509

from corral.api.tls import RemoteAccess, TlsPaths, ensure_material, parse_listen, server_names
from corral.errors import SpecError


def sans(path: Path) -> tuple[set[str], set[str]]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return (set(ext.get_values_for_type(x509.DNSName)),
            {str(i) for i in ext.get_values_for_type(x509.IPAddress)})


def test_first_start_makes_private_material(tmp_path: Path) -> None:
    """tls/ is 0700; the CA, server key+cert and the 64-hex-digit token are 0600."""
    p = ensure_material(tmp_path, "127.0.0.1")
    assert stat.S_IMODE(p.dir.stat().st_mode) == 0o700
    for path in (p.ca_key, p.ca_cert, p.server_key, p.server_cert, p.token):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    token = p.token.read_text().strip()
    assert len(token) == 64 and bytes.fromhex(token)


def test_server_certificate_names_and_chain(tmp_path: Path) -> None:
    """The server certificate carries the host name, corral, localhost and the listen IP,
    and a client trusting only the CA verifies it."""
    p = ensure_material(tmp_path, "10.9.8.7")
    dns, ips = sans(p.server_cert)
    assert {"corral", "localhost", socket.gethostname()} <= dns
    assert {"10.9.8.7", "127.0.0.1", "::1"} <= ips
    ca = x509.load_pem_x509_certificate(p.ca_cert.read_bytes())
    x509.load_pem_x509_certificate(p.server_cert.read_bytes()).verify_directly_issued_by(ca)


def test_later_starts_reuse_everything(tmp_path: Path) -> None:
    """A second start with the same address changes no file."""
    p = ensure_material(tmp_path, "127.0.0.1")
    before = {f.name: f.read_bytes() for f in p.dir.iterdir()}
    ensure_material(tmp_path, "127.0.0.1")
    assert {f.name: f.read_bytes() for f in p.dir.iterdir()} == before


def test_a_new_listen_address_reissues_only_the_server_certificate(tmp_path: Path) -> None:
    """Listening on an address the certificate does not name re-issues the server
    certificate with the same CA; the CA and the token stay (clients keep working)."""
    p = ensure_material(tmp_path, "127.0.0.1")
    ca, token, cert = p.ca_cert.read_bytes(), p.token.read_bytes(), p.server_cert.read_bytes()
    ensure_material(tmp_path, "db.example.net")
    assert p.ca_cert.read_bytes() == ca and p.token.read_bytes() == token
    assert p.server_cert.read_bytes() != cert
    assert "db.example.net" in sans(p.server_cert)[0]


def test_a_key_that_does_not_match_its_certificate_is_replaced(tmp_path: Path) -> None:
    """A kill between writing the server key and its certificate cannot leave a pair that
    fails every handshake: the next start re-issues both."""
    p = ensure_material(tmp_path, "127.0.0.1")
    (tmp_path / "other").mkdir()
    other = ensure_material(tmp_path / "other", "127.0.0.1")
    p.server_key.write_bytes(other.server_key.read_bytes())
    ensure_material(tmp_path, "127.0.0.1")
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(str(p.server_cert), str(p.server_key))  # raises on a mismatch


def test_unspecified_address_is_not_a_san() -> None:
    """0.0.0.0 and :: are not names a client dials; loopback always is."""
    _, ips = server_names("0.0.0.0")
    assert "0.0.0.0" not in ips and "127.0.0.1" in ips
    assert all(not ipaddress.ip_address(i).is_unspecified for i in server_names("::")[1])


def test_rotation_replaces_the_token_in_memory_and_on_disk(tmp_path: Path) -> None:
    """rotate_token() writes a new token (0600) and token() answers it at once; a token
    written by someone else is picked up on the next call."""
    remote = RemoteAccess.setup(tmp_path, "127.0.0.1:9631")
    old = remote.token()
    new = remote.rotate_token()
    assert new != old and remote.token() == new
    assert remote.paths.token.read_text().strip() == new
    assert stat.S_IMODE(remote.paths.token.stat().st_mode) == 0o600
    remote.paths.token.write_text("12" * 32 + "\n")
    assert remote.token() == "12" * 32


def test_an_emptied_token_file_keeps_the_last_good_token(tmp_path: Path) -> None:
    """A truncated or unreadable token file never opens the door (no empty token)."""
    remote = RemoteAccess.setup(tmp_path, "127.0.0.1:9631")
    good = remote.token()
    remote.paths.token.write_text("")
    assert remote.token() == good
    remote.paths.token.unlink()
    assert remote.token() == good


def test_repr_and_client_auth_never_leak_the_key(tmp_path: Path) -> None:
    """The repr holds no token; the client auth holds the CA certificate but no key."""
    remote = RemoteAccess.setup(tmp_path, "0.0.0.0:9631")
    assert remote.token() not in repr(remote)
    auth = remote.client_auth()
    assert auth["host"] == f"{socket.gethostname()}:9631" and auth["server_name"] == "corral"
    assert "PRIVATE KEY" not in "".join(auth.values())
    assert auth["ca_cert"].startswith("-----BEGIN CERTIFICATE-----")


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:9631", ("127.0.0.1", 9631)), ("[::1]:443", ("::1", 443)),
    ("host.example:1", ("host.example", 1)),
])
def test_parse_listen(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["", ":9631", "9631", "host:", "host:0", "host:65536",
                                  "host:http", "[::1]"])
def test_parse_listen_refuses_bad_addresses(text: str) -> None:
    with pytest.raises(SpecError, match="--listen-http"):
        parse_listen(text)


def test_paths_under_the_state_dir(tmp_path: Path) -> None:
    p = TlsPaths.under(tmp_path)
    assert p.dir == tmp_path / "tls" and p.token == tmp_path / "tls" / "token"
