"""The CLI's side of remote access: auth files, `--remote` resolution (pure logic, no sockets)."""

from __future__ import annotations

import argparse
import os
import stat
from pathlib import Path

import pytest

from corral.cli.common import CommandContext
from corral.cli.errors import CliError, UsageError
from corral.cli.print_auth import auth_name, with_host
from corral.cli.remote import RemoteAuth, auth_file, render_auth

AUTH = {"host": "10.0.0.5:9631", "server_name": "corral", "hostname": "web1.example",
        "token": "ab" * 32,
        "ca_cert": "-----BEGIN CERTIFICATE-----\nMIIB\nAAAA\n-----END CERTIFICATE-----\n"}


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    return tmp_path / "corral" / "auth"


def save(config: Path, name: str, text: str) -> Path:
    config.mkdir(parents=True, exist_ok=True)
    path = config / f"{name}.yaml"
    path.write_text(text)
    return path


def test_render_then_load_round_trips(config: Path) -> None:
    """What print-auth prints is what --remote reads back, PEM intact."""
    save(config, "web1", render_auth(AUTH, "web1"))
    auth = RemoteAuth.load("web1")
    assert (auth.host, auth.address, auth.port) == ("10.0.0.5:9631", "10.0.0.5", 9631)
    assert auth.server_name == "corral" and auth.token == AUTH["token"]
    assert auth.ca_cert.strip() == AUTH["ca_cert"].strip()
    assert AUTH["token"] not in repr(auth)


def test_rendered_file_says_where_to_save_it(config: Path) -> None:
    text = render_auth(AUTH, "prod")
    assert "corral/auth/prod.yaml" in text and "corral --remote prod" in text


def test_ipv6_host(config: Path) -> None:
    save(config, "v6", render_auth({**AUTH, "host": "[::1]:9631"}, "v6"))
    auth = RemoteAuth.load("v6")
    assert (auth.address, auth.port) == ("::1", 9631)


def test_auth_file_locations(config: Path, tmp_path: Path) -> None:
    """A bare name is looked up under $XDG_CONFIG_HOME/corral/auth; a path is a path."""
    assert auth_file("web1") == str(config / "web1.yaml")
    assert auth_file("./x.yaml") == "./x.yaml" and auth_file("a/b") == "a/b"
    path = tmp_path / "elsewhere.yml"
    path.write_text(render_auth(AUTH, "e"))
    assert RemoteAuth.load(str(path)).name == "elsewhere"


@pytest.mark.parametrize(("text", "needle"), [
    ("host: [unclosed\n", "not valid YAML"),
    ("- a list\n", "expected the fields"),
    ('host: "h:1"\nca_cert: x\n', "'token'"),
    ('host: "h:1"\ntoken: t\nca_cert: 3\n', "'ca_cert'"),
    ('host: "nohostport"\ntoken: t\nca_cert: x\n', "is not HOST:PORT"),
])
def test_bad_auth_files_name_the_file_and_the_problem(config: Path, text: str,
                                                      needle: str) -> None:
    path = save(config, "bad", text)
    with pytest.raises(CliError) as info:
        RemoteAuth.load("bad")
    assert str(path) in info.value.message and needle in info.value.message


def test_missing_auth_file_says_how_to_make_it(config: Path) -> None:
    with pytest.raises(CliError, match="corral print-auth --name nope"):
        RemoteAuth.load("nope")


def test_save_rewrites_privately_keeping_the_dialled_address(config: Path) -> None:
    """After a rotation through --remote the file gets the new token, stays 0600, and
    keeps the address this client dials (not the server's idea of it)."""
    path = save(config, "web1", render_auth({**AUTH, "host": "nat.example:19631"}, "web1"))
    auth = RemoteAuth.load("web1")
    auth.save({**AUTH, "token": "cd" * 32})
    again = RemoteAuth.load("web1")
    assert again.token == "cd" * 32 and again.host == "nat.example:19631"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in config.iterdir()] == ["web1.yaml"]  # no temp file left


def ctx(**kwargs: str) -> CommandContext:
    return CommandContext(argparse.Namespace(**kwargs))


def test_remote_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    """--remote beats everything; --state-dir beats $CORRAL_REMOTE; '' means local;
    --remote with --state-dir is a usage error."""
    monkeypatch.delenv("CORRAL_REMOTE", raising=False)
    assert ctx().remote is None
    assert ctx(remote="a").remote == "a"
    monkeypatch.setenv("CORRAL_REMOTE", "env")
    assert ctx().remote == "env"
    assert ctx(state_dir="/x").remote is None
    assert ctx(remote="").remote is None
    assert ctx(remote="a").remote == "a"
    with pytest.raises(UsageError):
        _ = ctx(remote="a", state_dir="/x").remote


def test_with_host_and_name() -> None:
    """--host replaces the address (keeping the port unless given); the name defaults to
    the server's short host name."""
    assert with_host(AUTH, None)["host"] == "10.0.0.5:9631"
    assert with_host(AUTH, "pub.example")["host"] == "pub.example:9631"
    assert with_host(AUTH, "pub.example:443")["host"] == "pub.example:443"
    assert with_host(AUTH, "::1")["host"] == "[::1]:9631"
    assert with_host(AUTH, "[::1]:443")["host"] == "[::1]:443"
    assert auth_name(AUTH, None) == "web1" and auth_name(AUTH, "x") == "x"
    with pytest.raises(UsageError):
        with_host(AUTH, "h:0")


def test_sup_run_passes_the_remote_options_to_the_launcher(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`sup run --listen-http A --metrics-public` execs the launcher with both (it gives
    them to every supervisor); --metrics-public alone, or --remote, is a usage error."""
    import io
    import sys

    from corral.cli.main import run

    calls: list[list[str]] = []

    def fake_execv(path: str, argv: list[str]) -> None:
        calls.append(argv)
        raise SystemExit(0)

    monkeypatch.setattr(os, "execv", fake_execv)
    assert run(["sup", "run", "--state-dir", str(tmp_path), "--listen-http", "127.0.0.1:9631",
                "--metrics-public"], io.StringIO(), io.StringIO()) == 0
    assert calls == [[sys.executable, "-m", "corral.launcher", "--state-dir", str(tmp_path),
                      "--listen-http", "127.0.0.1:9631", "--metrics-public"]]
    err = io.StringIO()
    assert run(["sup", "run", "--metrics-public"], io.StringIO(), err) == 100
    assert "--listen-http" in err.getvalue()
    assert run(["--remote", "x", "sup", "run"], io.StringIO(), io.StringIO()) == 100
    assert len(calls) == 1
