"""A remote's client auth file: where it lives, how it reads and is written.

``corral print-auth`` prints the file on the supervisor's host; ``--remote NAME`` reads it
as :class:`RemoteAuth` (the address, the name the server certificate must carry, the pinned
CA and the bearer token).  ``yaml`` is imported only when a file is read, so the local path
never pays for it.
"""

from __future__ import annotations

import json
import os

from corral import atomic
from corral.cli.errors import CliError


def auth_file(name: str) -> str:
    """Where the auth file of remote ``name`` lives: ``name`` itself when it is a path (has
    a ``/`` or ends in ``.yaml``/``.yml``), else ``$XDG_CONFIG_HOME/corral/auth/NAME.yaml``
    (``~/.config/corral/auth/NAME.yaml``)."""
    if "/" in name or name.endswith((".yaml", ".yml")):
        return os.path.expanduser(name)
    config = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    return os.path.join(config, "corral", "auth", f"{name}.yaml")


def render_auth(auth: dict[str, str], name: str) -> str:
    """The client auth file for ``auth`` (``GET /v1/auth/client``'s answer), as YAML.

    Written by hand rather than by a YAML library: a fixed, commented layout, with the CA
    as a literal block so that it stays a readable PEM.
    """
    path = auth_file(name)
    home = os.path.expanduser("~")
    shown = "~" + path[len(home):] if path.startswith(home + "/") else path
    ca = "".join(f"  {line}\n" for line in auth["ca_cert"].strip().splitlines())
    return (f"# corral client auth for {auth.get('hostname') or auth['host']}; keep it private\n"
            f"# (mode 0600). Save it as {shown}, then: corral --remote {name} svc status\n"
            f"host: {json.dumps(auth['host'])}\n"
            f"server_name: {json.dumps(auth.get('server_name') or 'corral')}\n"
            f"token: {json.dumps(auth['token'])}\n"
            f"ca_cert: |\n{ca}")


class RemoteAuth:
    """A client auth file: the address to dial, the name the certificate must carry, the
    pinned CA certificate (PEM) and the bearer token.  The token never appears in a repr."""

    def __init__(self, name: str, path: str, host: str, server_name: str, ca_cert: str,
                 token: str) -> None:
        self.name = name
        self.path = path
        self.host = host
        self.server_name = server_name
        self.ca_cert = ca_cert
        self.token = token
        address, _, port = host.rpartition(":")
        self.address = address[1:-1] if address.startswith("[") else address
        self.port = int(port) if port.isdigit() else 0
        if not self.address or not 0 < self.port < 65536:
            raise CliError(f"{path}: host {host!r} is not HOST:PORT")

    def __repr__(self) -> str:
        return f"RemoteAuth(name={self.name!r}, path={self.path!r}, host={self.host!r})"

    @classmethod
    def load(cls, name: str) -> RemoteAuth:
        """Read the auth file of remote ``name`` (see :func:`auth_file`).

        Raises :class:`CliError` naming the file: missing, unreadable, not YAML, or a field
        missing or not text.
        """
        path = auth_file(name)
        try:
            with open(path) as f:
                text = f.read()
        except FileNotFoundError:
            raise CliError(f"no auth file for remote {name!r} at {path}; on that host, run: "
                           f"corral print-auth --name {name} (and save its output there)") from None
        except OSError as exc:
            raise CliError(f"cannot read the auth file {path}: {exc.strerror}") from None
        import yaml  # only remote use pays for it

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise CliError(f"{path} is not valid YAML: {' '.join(str(exc).split())}") from None
        if not isinstance(data, dict):
            raise CliError(f"{path}: expected the fields host, token and ca_cert "
                           "(as printed by corral print-auth)")
        for key in ("host", "token", "ca_cert"):
            if not isinstance(data.get(key), str) or not data[key].strip():
                raise CliError(f"{path}: field {key!r} is missing or not text "
                               "(as printed by corral print-auth)")
        server_name = data.get("server_name") or "corral"
        return cls(os.path.basename(path).rsplit(".", 1)[0] if "/" in name else name, path,
                   data["host"].strip(), str(server_name), data["ca_cert"],
                   data["token"].strip())

    def save(self, auth: dict[str, str]) -> None:
        """Rewrite this file (mode 0600, atomically) with ``auth`` (e.g. after a rotation),
        keeping the address this client dials."""
        text = render_auth({**auth, "host": self.host, "server_name": self.server_name},
                           self.name)
        try:
            atomic.write(self.path, text.encode(), 0o600, make_dirs=False)
        except OSError as exc:
            raise CliError(f"cannot rewrite the auth file {self.path}: {exc.strerror}") from None
