"""The composition root: builds the supervisor, connects it to the launcher, serves the API.

This is the one module that wires everything; nothing imports it but the supervisor's
entry point.  Exit codes follow the launcher contract: 84 (done: stop everything),
0 (restart me: used by ``corral sup restart``), 1 (failed to start; the launcher retries).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

from corral.errors import CorralError
from corral.protocol import messages as m
from corral.protocol import paths
from corral.supervisor.facade import Facade
from corral.supervisor.launcher_client import LauncherClient
from corral.supervisor.loop import Supervisor


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


async def serve(state_dir: Path, target_file: Path | None) -> int:
    """Run the supervisor until it is told to stop or restart; return its exit code."""
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
    launcher = await LauncherClient.connect(
        launcher_sock, supervisor.on_exit,
        on_shutdown=lambda: request_exit(m.EXIT_DONE),
        on_lost=lambda: finish(m.EXIT_FATAL))
    await supervisor.attach(launcher)
    for sig in (signal.SIGINT, signal.SIGTERM):
        # The launcher coordinates shutdown; a stray signal must not kill us mid-stop.
        loop.add_signal_handler(sig, lambda: None)
    loop.add_signal_handler(signal.SIGHUP, lambda: None)

    # Imported only now: services are already started (or adopted) while the API stack,
    # the heaviest import of the supervisor, loads.
    import uvicorn

    from corral.api.app import create_app

    api = _bind_api(state_dir)
    config = uvicorn.Config(create_app(Facade(supervisor, request_exit)), log_level="warning",
                            lifespan="off", access_log=False, timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    server_task = asyncio.create_task(server.serve(sockets=[api]))
    code = await done
    server.should_exit = True
    try:
        await asyncio.wait_for(server_task, 3)
    except TimeoutError:
        server.force_exit = True
    launcher.close()
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="corral-supervisor")
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--target")
    parser.add_argument("--listen-http")
    args = parser.parse_args(argv)
    state_dir = paths.resolve_state_dir(args.state_dir)
    try:
        return asyncio.run(serve(state_dir, Path(args.target) if args.target else None))
    except CorralError as exc:
        print(f"corral-supervisor: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 1
