"""The composition root: builds the supervisor, connects it to the launcher, serves the API.

This is the one module that wires everything; nothing imports it but the supervisor's
entry point.  Exit codes follow the launcher contract: 84 (done: stop everything),
0 (restart me: used by ``corral sup restart``), 1 (failed to start; the launcher retries).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import signal
import socket
import ssl
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import uvloop

from corral.errors import CorralError
from corral.protocol import messages as m
from corral.protocol import paths
from corral.supervisor.drops import OutputDrops
from corral.supervisor.facade import Facade
from corral.supervisor.launcher_client import LauncherClient
from corral.supervisor.loop import Supervisor

if TYPE_CHECKING:
    from corral.api.server import QuietServer
    from corral.api.tls import RemoteAccess

#: Seconds between attempts to bind the ``--listen-http`` address while it is taken.
REMOTE_RETRY = 2.0


def _bind_api(state_dir: Path) -> socket.socket:
    """Bind ``api.sock`` with mode 0600 from the start (no window where it is open)."""
    path = paths.api_socket(state_dir)
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(128)
    return sock


def _bind_tcp(host: str, port: int) -> socket.socket:
    """Bind and listen on ``host:port`` (the remote API); raises :class:`OSError`."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        # A restarted supervisor rebinds while the old one's connections sit in TIME_WAIT.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


async def _serve_remote(server: QuietServer, remote: RemoteAccess) -> None:
    """Serve ``server`` (TLS + token) on the ``--listen-http`` address until it exits.

    If the address cannot be bound (taken, or not ours), say so once and retry every
    :data:`REMOTE_RETRY` seconds: the services and the local socket keep working meanwhile,
    where exiting would only make the launcher restart us into the same failure.
    """
    said = False
    while not server.should_exit:
        try:
            sock = _bind_tcp(remote.host, remote.port)
        except OSError as exc:
            if not said:
                print(f"corral-supervisor: cannot listen on {remote.host}:{remote.port} "
                      f"({exc.strerror or exc}); the API stays on api.sock only, retrying "
                      f"every {REMOTE_RETRY:g}s", file=sys.stderr)
                said = True
            await asyncio.sleep(REMOTE_RETRY)
            continue
        if said:
            print(f"corral-supervisor: now listening on {remote.host}:{remote.port}",
                  file=sys.stderr)
        with sock:
            await server.serve(sockets=[sock])
        return


async def serve(state_dir: Path, target_file: Path | None, listen_http: str | None = None,
                metrics_public: bool = False) -> int:
    """Run the supervisor until it is told to stop or restart; return its exit code.

    With ``listen_http`` (``HOST:PORT``), the same application is also served there over
    TLS, behind the bearer token (the material is made on first start under ``tls/``);
    ``metrics_public`` lets ``GET /metrics`` through that listener without a token.
    """
    supervisor = Supervisor(state_dir)
    supervisor.load_state(target_file)
    loop = asyncio.get_running_loop()
    done: asyncio.Future[int] = loop.create_future()

    def finish(code: int) -> None:
        if not done.done():
            done.set_result(code)

    async def shutdown() -> None:
        await supervisor.stop_all()
        finish(m.EXIT_DONE)

    def request_exit(code: int) -> None:
        if code == m.EXIT_DONE:
            loop.call_later(0.05, lambda: asyncio.ensure_future(shutdown()))
        else:
            loop.call_later(0.05, finish, code)

    fd_text = os.environ.get(m.ENV_LAUNCHER_FD, "")
    if not fd_text.isdigit():
        print(f"corral-supervisor: no launcher to talk to (${m.ENV_LAUNCHER_FD} is not set); "
              "start corral with: corral sup run", file=sys.stderr)
        return 1
    launcher_sock = socket.socket(fileno=int(fd_text))
    drops = OutputDrops(supervisor.events)
    launcher = await LauncherClient.connect(
        launcher_sock, supervisor.on_exit,
        on_shutdown=lambda: request_exit(m.EXIT_DONE),
        on_lost=lambda: finish(m.EXIT_FATAL), on_dropped=drops.on_message)
    await supervisor.attach(launcher)
    for sig in (signal.SIGINT, signal.SIGTERM):
        # The launcher coordinates shutdown; a stray signal must not kill us mid-stop.
        loop.add_signal_handler(sig, lambda: None)
    loop.add_signal_handler(signal.SIGHUP, lambda: None)

    # Imported only now: services are already started (or adopted) while the API stack,
    # the heaviest import of the supervisor, loads.
    import uvicorn

    from corral.api.app import create_app
    from corral.api.auth import TokenAuth
    from corral.api.server import QuietServer

    remote = None
    if listen_http:  # cryptography (about 10 MB) is loaded only for a TCP listener
        from corral.api.tls import RemoteAccess

        remote = RemoteAccess.setup(state_dir, listen_http)
    app = create_app(Facade(supervisor, request_exit, drops), remote)
    # Everything imported so far lives as long as the process: move it out of the
    # collector's reach, so a full collection landing on a restart stays short.
    gc.freeze()
    remote_server: QuietServer | None = None
    remote_task: asyncio.Task[None] | None = None
    if remote is not None:
        remote_config = uvicorn.Config(
            TokenAuth(app, remote.token, metrics_public), log_level="warning",
            lifespan="off", access_log=False, timeout_graceful_shutdown=1,
            ssl_certfile=str(remote.paths.server_cert),
            ssl_keyfile=str(remote.paths.server_key))
        remote_config.load()  # builds the SSL context, which uvicorn offers no floor for
        if remote_config.ssl is not None:
            remote_config.ssl.minimum_version = ssl.TLSVersion.TLSv1_2
        remote_server = QuietServer(remote_config)
        # uvicorn installs SIGINT/SIGTERM handlers per server and restores them in its own
        # order on exit; with two servers on one loop that juggling is wrong, and the
        # launcher, not a signal, tells this process to stop.
        setattr(remote_server, "capture_signals", contextlib.nullcontext)  # noqa: B010
        remote_task = asyncio.create_task(_serve_remote(remote_server, remote))
    api = _bind_api(state_dir)
    config = uvicorn.Config(app, log_level="warning",
                            lifespan="off", access_log=False, timeout_graceful_shutdown=1)
    server = QuietServer(config)
    server_task = asyncio.create_task(server.serve(sockets=[api]))
    code = await done
    server.stop()
    if remote_server is not None:
        remote_server.stop()
    try:
        await asyncio.wait_for(server_task, 3)
    except TimeoutError:
        server.stop(force=True)
    if remote_task is not None:
        # A listener that does not finish in 3 s is cancelled by wait_for itself.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(remote_task, 3)
    launcher.close()
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="corral-supervisor")
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--target")
    parser.add_argument("--listen-http")
    parser.add_argument("--metrics-public", action="store_true")
    args = parser.parse_args(argv)
    state_dir = paths.resolve_state_dir(args.state_dir)
    try:
        # uvloop: on the restart path (an Exited frame in, a Spawn frame out) it wakes
        # and dispatches about 0.1 ms sooner than asyncio's own loop.  Hooks and exec
        # checks do not use its subprocesses (see corral.command).
        return uvloop.run(serve(state_dir, Path(args.target) if args.target else None,
                                args.listen_http, args.metrics_public))
    except CorralError as exc:
        print(f"corral-supervisor: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 1
