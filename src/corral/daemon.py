"""The composition root: builds the supervisor, connects it to the launcher, serves the API.

This is the one module that wires everything; nothing imports it but the supervisor's
entry point.  Exit codes follow the launcher contract: 84 (done: stop everything),
0 (restart me: used by ``corral sup restart``), 1 (failed to start; the launcher retries),
86 (fatal: the first supervisor's ``--target`` or ``--secrets-file`` was refused; the
launcher stops and exits 86, since a retry without them would quietly run the old target).

What it has to say goes to stderr, which is ``corral sup run``'s: one line once it is up
(what started, where the API is), and every error that stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import resource
import signal
import socket
import ssl
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import uvloop

from corral.balancer.ports import PortAllocator, start_for
from corral.cluster import ClusterOptions
from corral.cluster.options import FLAGS as CLUSTER_FLAGS
from corral.errors import ClusterError, CorralError, SpecError
from corral.monitor.sampler import TreeSampler
from corral.protocol import messages as m
from corral.protocol import paths
from corral.states import Desired
from corral.store.resources import ResourceStore
from corral.store.secrets import SecretStore
from corral.supervisor import formats, statefile
from corral.supervisor.announce import announce
from corral.supervisor.balancing import Balancer
from corral.supervisor.clock import SYSTEM, Clock
from corral.supervisor.drops import OutputDrops
from corral.supervisor.facade import Facade
from corral.supervisor.launcher_client import Incompatible, LauncherClient
from corral.supervisor.loop import Supervisor
from corral.supervisor.membership import Membership
from corral.supervisor.persistence import StateFiles
from corral.supervisor.settings import Settings
from corral.supervisor.sources import SecretsDir, TargetFile

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
        with paths.unix_address(path) as address:
            sock.bind(address)
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


def report(exc: CorralError) -> None:
    """Print ``corral: <message>`` on stderr, then each further problem indented."""
    problems = getattr(exc, "problems", None) or []
    lines = exc.message.splitlines() or [""]
    head = lines[0] if len(problems) > 1 and lines[1:] == problems else exc.message
    print(f"corral: {head}", file=sys.stderr)
    for problem in problems:
        if problem != head:
            print(f"  {problem}", file=sys.stderr)


def up_line(supervisor: Supervisor, api: Path, listen_http: str | None) -> str:
    """What ``sup run`` says once the supervisor is up: what it started (or adopted,
    after a restart) and where the API listens."""
    wanted = [s for s in supervisor.services.values() if s.desired is Desired.UP]
    count = sum(s.spec.instances for s in wanted)
    stopped = len(supervisor.services) - len(wanted)
    what = (f"{len(wanted)} service{'s' if len(wanted) != 1 else ''} "
            f"({count} instance{'s' if count != 1 else ''})")
    if supervisor.reattach.adopted:
        what += f", {supervisor.reattach.adopted} running instances adopted"
    else:
        what += " started"
    if stopped:
        what += f", {stopped} stopped by request"
    where = f"API on {api}" + (f" and https://{listen_http} (TLS, token)" if listen_http
                               else "")
    return f"corral: up (supervisor pid {os.getpid()}): {what}; {where}"


async def serve(state_dir: Path, target_file: Path | None, listen_http: str | None = None,
                metrics_public: bool = False, health_public: bool = False,
                watch_target: Path | None = None, secrets_dir: Path | None = None,
                secrets_file: Path | None = None, settings: Settings | None = None,
                cluster: ClusterOptions | None = None, cluster_probe: bool = False) -> int:
    """Run the supervisor until it is told to stop or restart; return its exit code.

    With ``listen_http`` (``HOST:PORT``), the same application is also served there over
    TLS, behind the bearer token (the material is made on first start under ``tls/``);
    ``metrics_public`` and ``health_public`` let ``GET /metrics`` and ``GET /v1/health``
    through that listener without a token.  ``watch_target`` is a target file to
    re-apply whenever it changes, ``secrets_dir`` a directory of secret files (read
    before anything starts, then watched): see :mod:`corral.supervisor.sources`.
    ``target_file`` and ``secrets_file`` (the first supervisor of a ``sup run``) are checked
    before anything starts; a problem raises :class:`SpecError`.  ``cluster`` says where
    the service groups live (etcd, or this host only); with ``cluster_probe`` (the first
    supervisor) an etcd that cannot be used raises :class:`ClusterError` before anything
    starts, while a later supervisor starts whatever etcd does.
    """
    statefile.remove_leftovers(state_dir)
    try:
        formats.prepare(state_dir)
    except formats.TooNew as exc:
        print(f"corral-supervisor: {exc}", file=sys.stderr)
        return await _refuse_state()
    backend = (cluster or ClusterOptions()).backend(state_dir, os.environ)
    if cluster_probe:
        try:
            await backend.probe()
        except CorralError:
            await backend.close()
            raise
    supervisor = build_supervisor(state_dir, settings or Settings.from_environ(os.environ))
    membership = Membership(supervisor, backend)
    supervisor.load_state(target_file, secrets_file)
    secrets = SecretsDir(supervisor, secrets_dir) if secrets_dir is not None else None
    fresh_secrets = secrets.load() if secrets is not None else []
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
        on_lost=lambda: finish(m.EXIT_FATAL), on_dropped=drops.on_message,
        on_respawned=supervisor.effects.orders.on_respawned)
    await supervisor.check_boot_target(launcher)
    await membership.open()
    await supervisor.attach(launcher)
    await membership.start()
    stoppers = _watch_sources(supervisor, secrets, fresh_secrets, watch_target)
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
    app = create_app(Facade(supervisor, request_exit, drops, membership), remote)
    # Everything imported so far lives as long as the process: move it out of the
    # collector's reach, so a full collection landing on a restart stays short.
    gc.freeze()
    remote_server: QuietServer | None = None
    remote_task: asyncio.Task[None] | None = None
    if remote is not None:
        remote_config = uvicorn.Config(
            TokenAuth(app, remote.token, metrics_public, health_public), log_level="warning",
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
    if launcher.notify:  # under systemd: READY=1 and STATUS= through the launcher
        stoppers.append(asyncio.ensure_future(
            announce(supervisor, launcher, server.answering)).cancel)
    print(up_line(supervisor, paths.api_socket(state_dir), listen_http), file=sys.stderr,
          flush=True)
    code = await done
    for stop in stoppers:
        stop()
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
    # A stop leaves the census at once; a restart keeps the members for the next
    # supervisor to take over (same key, new lease).
    await membership.close(leave=code == m.EXIT_DONE)
    supervisor.events.close()
    launcher.close()
    return code


async def _refuse_state() -> int:
    """The exit code of a supervisor whose state directory is too new: keep the services
    the launcher runs (it starts no supervisor again until SIGHUP), or, with none running
    (a ``sup run`` on that directory), have the launcher exit."""
    fd_text = os.environ.get(m.ENV_LAUNCHER_FD, "")
    if not fd_text.isdigit():
        return 1
    launcher = await LauncherClient.connect(
        socket.socket(fileno=int(fd_text)), lambda _: None, lambda: None, lambda: None)
    try:
        running = await launcher.list_children()
    finally:
        launcher.close()
    return m.EXIT_INCOMPATIBLE if running else m.EXIT_FATAL


def _watch_sources(supervisor: Supervisor, secrets: SecretsDir | None,
                   fresh_secrets: list[str],
                   watch_target: Path | None) -> list[Callable[[], object]]:
    """Start watching the target file and the secrets directory (once attached).

    Secrets that changed while no supervisor ran were stored before the attach, so new
    spawns have them; processes that were adopted still run with the old values and are
    rolled out as ``secret set`` would.  Returns what to call at the end.
    """
    stoppers: list[Callable[[], object]] = []
    target = TargetFile(supervisor, watch_target) if watch_target is not None else None
    if target is not None:
        target.start()
        stoppers.append(target.close)
    if secrets is not None:
        if target is not None:
            secrets.on_synced = lambda names: target.retry()
        secrets.start()
        stoppers.append(secrets.close)
        adopted = [name for name in fresh_secrets
                   if any(inst.started_at is not None and inst.started_at < supervisor.started_at
                          for user in supervisor.targets.secret_users(name)
                          for inst in supervisor.services[user].instances.values())]
        if adopted:
            stoppers.append(asyncio.ensure_future(supervisor.targets.secrets_changed(adopted)).cancel)
    return stoppers


def build_supervisor(state_dir: Path, settings: Settings, clock: Clock = SYSTEM) -> Supervisor:
    """The supervisor of ``state_dir``, with its stores, balancer, port allocator, sampler
    and clock."""
    low, high = settings.port_range
    ports = PortAllocator(low, high, start=start_for(
        low, high, f"{os.geteuid()}:{state_dir.resolve()}"))
    # Three kept-open /proc files per sampled instance: 3/8 of the fd limit at most.
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    budget = soft // 8 if soft != resource.RLIM_INFINITY else 5000
    return Supervisor(
        state_dir, files=StateFiles(state_dir),
        secrets=SecretStore(state_dir / "secrets.json"),
        resources=ResourceStore(state_dir / "resources"),
        balancer=Balancer(state_dir, settings.base_env, clock=clock), ports=ports,
        sampler=TreeSampler(max_open=min(5000, budget)), clock=clock,
        base_env=settings.base_env)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="corral-supervisor")
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--target")
    parser.add_argument("--secrets-file")
    parser.add_argument("--listen-http")
    parser.add_argument("--metrics-public", action="store_true")
    parser.add_argument("--health-public", action="store_true")
    parser.add_argument("--watch-target")
    parser.add_argument("--secrets-dir")
    for flag, _ in CLUSTER_FLAGS:
        parser.add_argument(flag)
    parser.add_argument("--cluster-probe", action="store_true")
    args = parser.parse_args(argv)
    cluster = ClusterOptions(**{attr: getattr(args, flag[2:].replace("-", "_"))
                                for flag, attr in CLUSTER_FLAGS})
    state_dir = paths.resolve_state_dir(args.state_dir)
    try:
        settings = Settings.from_environ(os.environ)
    except SpecError as exc:
        report(exc)
        return m.EXIT_FATAL  # the same environment would be refused again
    try:
        # uvloop: on the restart path (an Exited frame in, a Spawn frame out) it wakes
        # and dispatches sooner than asyncio's own loop.  Hooks and exec checks do not
        # use its subprocesses (see corral.command).
        return uvloop.run(serve(state_dir, Path(args.target) if args.target else None,
                                args.listen_http, args.metrics_public, args.health_public,
                                Path(args.watch_target) if args.watch_target else None,
                                Path(args.secrets_dir) if args.secrets_dir else None,
                                Path(args.secrets_file) if args.secrets_file else None,
                                settings, cluster, args.cluster_probe))
    except ClusterError as exc:
        report(exc)
        # Only the first supervisor probes: the same etcd would refuse it again.
        return m.EXIT_FATAL
    except SpecError as exc:
        report(exc)
        # The first supervisor's files were refused: stop, rather than be started again
        # without them (the launcher gives them to the first supervisor only).
        return m.EXIT_FATAL if args.target or args.secrets_file else 1
    except Incompatible as exc:
        # One line in all (the launcher's, when it refused us); it keeps the services
        # and does not start a supervisor again until SIGHUP.
        if not exc.by_launcher:
            print(f"corral-supervisor: {exc}; services keep running", file=sys.stderr)
        return m.EXIT_INCOMPATIBLE
    except CorralError as exc:
        print(f"corral-supervisor: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 1
