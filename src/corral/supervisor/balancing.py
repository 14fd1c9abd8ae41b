"""The supervisor's side of the load balancer: keep it running, keep it configured.

The balancer (``python -m corral.balancer``) is a child of the LAUNCHER, named
:data:`NAME` (a name no user process can have: user names start with a letter or digit),
so a supervisor crash, restart or upgrade never drops a connection.  It is started on the
first ``configure`` or ``validate_bind`` that has a proxy-mode service, adopted after a
supervisor restart, and restarted (0.1 s doubling to 5 s while it dies young) if it exits.
One that runs another corral release than this supervisor (after ``sup upgrade``) is
replaced by one of this release started with ``--take-over``: the running one hands it
its listening sockets over its control socket, so no connection is refused.

Interface (all the supervisor needs)::

    balancer = Balancer(state_dir, env)
    balancer.adopt(child) -> bool       # Supervisor._adopt: True if the child is the balancer
    balancer.on_exit(exited) -> bool    # Supervisor.on_exit: True if the exit was the balancer's
    balancer.attach(launcher)           # once the launcher's children are adopted
    await balancer.configure(services, {service: [Backend, ...]})
                                        # the WHOLE set; returns {service: bind error or None}
    await balancer.drain(service, backend_id) -> bool
                                        # mark draining, wait until its connections are gone
                                        # (True) or its drain_timeout passed (False)
    await balancer.validate_bind(services) -> {service: reason}   # only the ones that fail
    balancer.stats() -> dict            # the last figures (polled every STATS_EVERY s)
    balancer.status() -> dict           # for ``corral sup status``
    await balancer.close()              # stop talking to it (it keeps running)

Only ``mode: proxy`` services go to the balancer; ``mode: socket`` ones are ignored here.
Error handling: ``configure``/``drain``/``validate_bind`` raise
:class:`~corral.errors.Unavailable` if the balancer cannot be started or reached within
:data:`CONNECT_TIMEOUT`; the configuration is kept and re-sent whenever it reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sys
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from corral import __version__
from corral.balancer import proxy as balancer_proxy
from corral.errors import CorralError, Unavailable
from corral.protocol import framing, paths
from corral.protocol import messages as m
from corral.protocol.backoff import doubled
from corral.protocol.binding import BindError
from corral.spec import ServiceSpec

from .clock import SYSTEM, Clock
from .launcher_client import LauncherClient, Message

#: The balancer's name at the launcher (never a valid user process name).
NAME = ".balancer"
CONNECT_TIMEOUT = 10.0
STATS_EVERY = 2.0
RESTART_MIN = 0.1
RESTART_MAX = 5.0
#: A balancer that ran longer than this before exiting is restarted at once.
COOLDOWN = 10.0
#: How often a drain asks whether the backend's connections are gone.
DRAIN_POLL = 0.1
#: The exit code of a balancer that could not take over (``corral.balancer.__main__``).
EXIT_NO_TAKE_OVER = 3


def control_path(state_dir: Path) -> Path:
    """``<state>/run/balancer.sock`` (mode 0600)."""
    return paths.run_dir(state_dir) / "balancer.sock"


@dataclass(frozen=True)
class Backend:
    """One instance receiving a service: where to connect, and whether it takes new
    connections (``active``) or only finishes its open ones (``draining``)."""

    id: str
    host: str
    port: int
    state: Literal["active", "draining"] = "active"

    def wire(self) -> dict[str, Any]:
        return {"id": self.id, "host": self.host, "port": self.port, "state": self.state}


def _service_wire(spec: ServiceSpec, backends: list[Backend]) -> dict[str, Any]:
    return {"name": spec.name, "host": spec.bind_host, "port": spec.port,
            "balance": spec.balance, "drain_timeout": spec.drain_timeout,
            "backends": [b.wire() for b in backends]}


class Balancer:
    """Keeps the balancer process running and configured.

    Args:
        state_dir: the state directory (control socket, log file).
        env: the environment to start the balancer with (the supervisor's own).
        argv: the command (a seam for tests); default ``python -m corral.balancer``.
    """

    def __init__(self, state_dir: Path, env: dict[str, str],
                 argv: list[str] | None = None, clock: Clock = SYSTEM) -> None:
        self.state_dir = state_dir
        self._clock = clock
        self.control = control_path(state_dir)
        self.env = env
        self.argv = argv or [sys.executable, "-m", "corral.balancer"]
        self.pid: int | None = None
        self.started_at: float | None = None
        self.restarts = 0
        self.last_exit: Message | None = None
        self.bind_errors: dict[str, str | None] = {}
        self._launcher: LauncherClient | None = None
        self._specs: dict[str, ServiceSpec] = {}
        self._backends: dict[str, list[Backend]] = {}
        self._wanted = False  # a proxy service exists: the balancer must run
        self._delay = RESTART_MIN
        self._stats: dict[str, Any] = {}
        self._stats_at: float | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Message]] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._connected = asyncio.Event()
        self._keeper: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._closed = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._replacing: int | None = None  # the old balancer's pid while one replaces it
        self._not_replaced: tuple[int, Any] | None = None  # (pid, version) that stays

    # ------------------------------------------------------------ launcher hooks
    def adopt(self, child: Message) -> bool:
        """Called for each child the launcher lists: take it if it is the balancer."""
        if child.get("name") != NAME:
            return False
        started_at = float(child.get("started_at", self._clock.time()))
        if self.pid is not None and self.started_at is not None \
                and started_at < self.started_at:
            # An older one still finishing its connections after it handed over: its exit
            # is reported like any replaced balancer's.
            self._replacing = int(child["pid"])
            return True
        if self.pid is not None:
            self._replacing = self.pid
        self.pid = int(child["pid"])
        self.started_at = started_at
        self._wanted = True  # it ran, so it was wanted; keep it until told otherwise
        return True

    def on_exit(self, exited: Message) -> bool:
        """Called for each exit the launcher reports: take it if it was the balancer's."""
        if exited.get("name") != NAME:
            return False
        if exited.get("pid") == self._replacing:
            self._replacing = None  # the replaced one, done with its last connections
            return True
        if (exited.get("exit_code") == EXIT_NO_TAKE_OVER and exited.get("pid") == self.pid
                and self._replacing is not None):
            # The running one would not hand over (an older balancer): it stays.
            self._log("the new balancer could not take over from the running one, which "
                      "stays; see " + str(self._log_path()))
            self.pid, self._replacing = self._replacing, None
            self._not_replaced = (self.pid, self._stats.get("version"))
            return True
        if exited.get("pid") == self.pid or self.pid is None:
            ran = self._clock.time() - (self.started_at or self._clock.time())
            self._delay = (RESTART_MIN if ran > COOLDOWN
                           else doubled(self._delay, RESTART_MIN, RESTART_MAX))
            self.pid = None
            self.last_exit = {k: exited.get(k) for k in ("exit_code", "signal", "at")}
            self._drop_connection()
            self._wake.set()
        return True

    def attach(self, launcher: LauncherClient) -> None:
        """Start keeping the balancer (after adoption)."""
        self._launcher = launcher
        if self._keeper is None:
            self._keeper = asyncio.get_running_loop().create_task(self._keep(),
                                                                  name="balancer-keeper")
        self._wake.set()

    # ------------------------------------------------------------------ interface
    async def configure(self, services: list[ServiceSpec],
                        backends: dict[str, list[Backend]]) -> dict[str, str | None]:
        """Send the whole set of proxy services and their backends; return each
        service's bind error (``None``: listening).  Idempotent."""
        self._specs = {s.name: s for s in services if s.mode == "proxy"}
        self._backends = {name: list(backends.get(name, [])) for name in self._specs}
        if not self._specs and self.pid is None and not self._connected.is_set():
            self.bind_errors = {}
            return {}  # nothing to balance, and no balancer to tell
        reply = await self._request(self._configure_message())
        self.bind_errors = dict(reply.get("services", {}))
        return self.bind_errors

    async def drain(self, service: str, backend_id: str, timeout: float | None = None) -> bool:
        """Mark the backend draining (no new connections) and wait until its open
        connections are gone (True) or the service's drain_timeout passed (False; the
        balancer closes what is left)."""
        spec = self._specs.get(service)
        if spec is None:
            return True
        current = self._backends.get(service, [])
        if not any(b.id == backend_id for b in current):
            return True
        self._backends[service] = [
            Backend(b.id, b.host, b.port, "draining") if b.id == backend_id else b
            for b in current]
        await self._request(self._configure_message())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (spec.drain_timeout if timeout is None else timeout)
        while True:
            reply = await self._request({"type": "drained", "service": service,
                                         "backend": backend_id})
            if reply.get("drained"):
                return True
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(DRAIN_POLL)

    async def validate_bind(self, services: list[ServiceSpec]) -> dict[str, str]:
        """Each proxy service whose ``on`` cannot be bound, with the reason.  An address
        the balancer already listens on is fine."""
        proxied = [s for s in services if s.mode == "proxy"]
        if not proxied:
            return {}
        wire = [_service_wire(s, []) for s in proxied]
        if self.pid is None and not self._specs:
            # No balancer yet: probe here (the balancer would bind as the same user).
            return {s.name: reason for s in proxied
                    if (reason := _probe(s.bind_host, s.port)) is not None}
        reply = await self._request({"type": "probe", "services": wire})
        return {name: str(reason) for name, reason in reply.get("services", {}).items()
                if reason is not None}

    def stats(self) -> dict[str, Any]:
        """The last figures: ``{pid, started_at, services: [{name, on, active, total,
        bytes_in, bytes_out, errors, backends: [...]}, ...]}`` (empty before the first)."""
        return self._stats

    def status(self) -> dict[str, Any]:
        """What ``corral sup status`` shows about the balancer."""
        return {"name": NAME, "pid": self.pid, "running": self.pid is not None,
                "connected": self._connected.is_set(), "started_at": self.started_at,
                "restarts": self.restarts, "last_exit": self.last_exit,
                "control": str(self.control),
                "bind_errors": {k: v for k, v in self.bind_errors.items() if v},
                "services": self._stats.get("services", []), "stats_at": self._stats_at}

    async def close(self) -> None:
        """Stop keeping the balancer (it keeps running and serving)."""
        self._closed = True
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
        self._drop_connection()

    # ------------------------------------------------------------------ keeping
    def _configure_message(self) -> Message:
        return {"type": "configure", "services": [
            _service_wire(spec, self._backends.get(name, []))
            for name, spec in self._specs.items()]}

    async def _request(self, message: Message) -> Message:
        self._wanted = True
        self._wake.set()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                await self._connected.wait()
                writer = self._writer
                assert writer is not None
                rid = next(self._ids)
                future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
                self._pending[rid] = future
                writer.write(framing.encode({**message, "id": rid}))
                reply = await future
        except TimeoutError:
            raise Unavailable("the load balancer did not answer within "
                              f"{CONNECT_TIMEOUT:.0f}s (see {self._log_path()})") from None
        if reply.get("type") == "error":
            raise CorralError(f"load balancer: {reply.get('message')}")
        return reply

    async def _keep(self) -> None:
        """Forever: make sure it runs, connect, re-send the set, poll the figures."""
        while not self._closed:
            await self._wake.wait()
            self._wake.clear()
            if not self._wanted or self._launcher is None:
                continue
            try:
                if self.pid is None:
                    await self._spawn()
                if not self._connected.is_set():
                    await self._connect()
            except (OSError, CorralError, TimeoutError) as exc:
                self._log(f"balancer not reachable: {exc}; retrying in {self._delay:.1f}s")
                await asyncio.sleep(self._delay)
                self._delay = doubled(self._delay, RESTART_MIN, RESTART_MAX)
                self._wake.set()

    async def _spawn(self, take_over: bool = False) -> None:
        assert self._launcher is not None
        if (self.restarts or self.last_exit is not None) and not take_over:
            await asyncio.sleep(self._delay)  # backoff while it keeps dying young
        self.control.parent.mkdir(parents=True, exist_ok=True)
        log = paths.service_log(self.state_dir, NAME)
        argv = [*self.argv, "--control", str(self.control), *(["--take-over"] * take_over)]
        reply = await self._launcher.request({
            "type": m.SPAWN, "name": NAME, "argv": argv,
            "env": self.env, "cwd": str(self.state_dir), "user": None, "group": None,
            "umask": None, "rlimits": {},
            "log": {"path": str(log), "format": "stamped", "max_bytes": 10 * 1024 * 1024,
                    "keep": 5, "stdout": False}})  # corral's own part, not a service
        if self.started_at is not None:
            self.restarts += 1
        self.pid = int(reply["pid"])
        self.started_at = float(reply.get("started_at", self._clock.time()))

    async def _connect(self) -> None:
        """Connect to the control socket (it appears shortly after a spawn), then
        re-send the whole configuration."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CONNECT_TIMEOUT
        while True:
            try:
                with paths.unix_address(self.control) as address:
                    reader, writer = await asyncio.open_unix_connection(
                        address, limit=framing.MAX_FRAME)
                break
            except OSError:
                if loop.time() >= deadline or self.pid is None:
                    raise
                await asyncio.sleep(0.02)  # the balancer is still binding its socket
        self._writer = writer
        self._spawn_task(self._read(reader, writer))
        if self._specs:
            rid = next(self._ids)
            future: asyncio.Future[Message] = loop.create_future()
            self._pending[rid] = future
            writer.write(framing.encode({**self._configure_message(), "id": rid}))
            reply = await future
            self.bind_errors = dict(reply.get("services", {}))
        self._delay = RESTART_MIN
        self._connected.set()
        self._spawn_task(self._poll(writer))

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = framing.Decoder()
        try:
            while data := await reader.read(1024 * 1024):
                for message in decoder.feed(data):
                    future = self._pending.pop(message.get("id", -1), None)
                    if future is not None and not future.done():
                        future.set_result(message)
        except (ConnectionError, framing.FrameError):
            pass
        finally:
            if self._writer is writer:
                self._drop_connection()
                self._wake.set()  # reconnect (or respawn, once its exit is reported)

    async def _poll(self, writer: asyncio.StreamWriter) -> None:
        while self._writer is writer:
            with contextlib.suppress(CorralError):
                self._stats = await self._request({"type": "stats"})
                self._stats.pop("id", None)
                self._stats.pop("type", None)
                self._stats_at = self._clock.time()
                self._replace_if_old()
            await asyncio.sleep(STATS_EVERY)

    def _replace_if_old(self) -> None:
        """A balancer of another release than this supervisor's (an upgrade) is replaced
        by one of this release, which takes its listening sockets over (``--take-over``):
        no connection is refused.  Tried once per release it runs."""
        version = self._stats.get("version")
        if (version in (None, __version__) or self._replacing is not None
                or self._launcher is None or self.pid is None
                or self._not_replaced == (self.pid, version)):
            return
        self._replacing = self.pid
        self._spawn_task(self._replace(str(version)))

    async def _replace(self, version: str) -> None:
        old = self._replacing
        assert old is not None
        self._log(f"replacing the balancer (pid {old}, corral {version}) with one of corral "
                  f"{__version__}; it hands its listening sockets over")
        restarts = self.restarts
        try:
            await self._spawn(take_over=True)
            self.restarts = restarts  # a replacement, not a restart
        except CorralError as exc:
            self._log(f"cannot start a new balancer ({exc}); the running one stays")
            self._not_replaced = (old, version)
            self._replacing = None

    def _drop_connection(self) -> None:
        self._connected.clear()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        for future in self._pending.values():
            if not future.done():
                future.set_exception(Unavailable("lost the connection to the load balancer"))
                future.exception()  # retrieved: a poll may not be waiting any more
        self._pending.clear()

    def _spawn_task(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _log_path(self) -> Path:
        return paths.service_log(self.state_dir, NAME)

    def _log(self, text: str) -> None:
        print(f"corral-supervisor: {text}", file=sys.stderr, flush=True)


def _probe(host: str, port: int) -> str | None:
    try:
        balancer_proxy.bind(host, port).close()
    except BindError as exc:
        return str(exc)
    return None
