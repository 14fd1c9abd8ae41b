"""``corral print-auth [--name NAME] [--host HOST] [--json]``: the client auth file.

``GET /v1/auth/client`` (over the local socket, or over TCP with the token) and print the
YAML a client saves as ``~/.config/corral/auth/NAME.yaml`` to use ``corral --remote NAME``:
the address to dial, the server name to verify, the CA certificate to pin, and the token.
"""

from __future__ import annotations

import argparse
import json

from corral.cli.common import CommandContext, add_parser, split_host_port
from corral.cli.errors import EXIT_OK

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing slows every command's start
if TYPE_CHECKING:
    from typing import Any


def register(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``print-auth``."""
    p = add_parser(subparsers, "print-auth", "print a client auth file for remote access",
                   "Print what a client needs to use this supervisor remotely (it must run\n"
                   "with --listen-http): the address, the CA certificate to pin and the token,\n"
                   "as YAML to save as ~/.config/corral/auth/NAME.yaml (mode 0600) on the\n"
                   "client. Then every command takes --remote NAME (or $CORRAL_REMOTE=NAME).\n"
                   "The file holds the token: whoever has it controls this supervisor.",
                   """
  corral print-auth --name web1
  (umask 077; ssh web1 corral print-auth --name web1 > ~/.config/corral/auth/web1.yaml)
  corral --remote web1 svc status
  corral print-auth --name web1 --host web1.example.com:9631""", parents)
    p.add_argument("--name", metavar="NAME",
                   help="the remote's name on the client (default: this host's name)")
    p.add_argument("--host", metavar="HOST[:PORT]",
                   help="the address clients dial (default: the --listen-http address, or "
                        "this host's name when listening on every interface)")
    p.add_argument("--json", action="store_true", help="print the API's JSON object")
    p.set_defaults(handler=cmd_print_auth)


def with_host(auth: dict[str, str], host: str | None) -> dict[str, str]:
    """``auth`` with the address replaced by ``host`` (its port defaults to the listener's).

    Raises :class:`UsageError` for a malformed ``host``.
    """
    if not host:
        return auth
    if "]:" in host or (host.count(":") == 1 and not host.startswith("[")):
        split_host_port(host, "--host")  # a port was given
    else:  # a bare name or address (IPv6 with or without brackets): the listener's port
        port = auth["host"].rpartition(":")[2]
        host = f"[{host.strip('[]')}]:{port}" if ":" in host else f"{host}:{port}"
    return {**auth, "host": host}


def auth_name(auth: dict[str, str], name: str | None) -> str:
    """The remote's name: ``--name``, else the server's short host name."""
    return name or (auth.get("hostname") or "corral").split(".")[0] or "corral"


def print_auth(ctx: CommandContext, auth: dict[str, str], args: argparse.Namespace) -> None:
    """Print ``auth`` as the client file (or JSON), honouring ``--host`` and ``--name``."""
    from corral.cli.remote import render_auth

    auth = with_host(auth, args.host)
    if args.json:
        ctx.out(json.dumps(auth, indent=2))
    else:
        ctx.stdout.write(render_auth(auth, auth_name(auth, args.name)))


def cmd_print_auth(args: argparse.Namespace, ctx: CommandContext) -> int:
    """``GET /v1/auth/client`` and print it."""
    _, auth = ctx.client().request("GET", "/v1/auth/client")
    print_auth(ctx, auth, args)
    return EXIT_OK
