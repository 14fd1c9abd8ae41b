"""Runtime records: one :class:`Instance` per running copy, one :class:`Service` per spec."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from corral.monitor.history import History
from corral.monitor.sampler import Usage
from corral.spec import ProcessSpec
from corral.states import Desired, HealthState, ServiceState

from .events import rfc3339
from .notify import NotifySocket
from .policy import Streak
from .watch import HealthWatch

# Resource history: one point every HISTORY_STEP seconds, for the last hour.
HISTORY_STEP = 10.0
HISTORY_POINTS = 360

# Order used to summarise several instances in one state: the least healthy wins.
_SEVERITY = [ServiceState.FAILED, ServiceState.BACKOFF, ServiceState.UNHEALTHY,
             ServiceState.STOPPING, ServiceState.STARTING, ServiceState.UP, ServiceState.DOWN]


def launcher_name(service: str, index: int, gen: int) -> str:
    """``web/0`` for generation 0, ``web/0@3`` after three spec changes."""
    return f"{service}/{index}@{gen}" if gen else f"{service}/{index}"


def parse_launcher_name(name: str) -> tuple[str, int, int] | None:
    """``"web/0@3"`` -> ``("web", 0, 3)``; None for a name corral did not make."""
    service, _, rest = name.rpartition("/")
    index_text, _, gen_text = rest.partition("@")
    if not service or not index_text.isdigit() or not (gen_text.isdigit() or not gen_text):
        return None
    return service, int(index_text), int(gen_text or 0)


@dataclass
class Instance:
    """What the supervisor knows of one instance; rebuilt from the launcher after a restart."""

    service: str
    index: int
    gen: int = 0                      # the service's generation (spec version) it runs
    state: ServiceState = ServiceState.DOWN  # assigned only by Supervisor.feed (machine.py)
    pid: int | None = None
    started_at: float | None = None
    spawns: int = 0
    streak: Streak = field(default_factory=Streak)
    stays_down: bool = False          # left down on purpose: reconcile does not start it
    delay: float = 0.0
    next_restart_at: float | None = None
    reason: str = ""
    last_exit: dict[str, Any] | None = None
    health: HealthState = HealthState.UNKNOWN
    timer: asyncio.TimerHandle | None = None
    spawned: asyncio.Future[None] | None = None
    # Futures of callers waiting for this instance to be down (see until_stopped).
    stop_waiters: list[asyncio.Future[None]] = field(default_factory=list)
    spawn_request: tuple[ProcessSpec, bytes] | None = None
    watch: HealthWatch | None = None
    cpu: float | None = None          # percent of one core, over the last sample period
    rss: int | None = None            # bytes, whole process tree
    usage: Usage | None = None        # the tree's last reading (same object while idle)
    sampled_at: float = 0.0           # monotonic time it was last sampled
    over_limit_since: float | None = None
    init_done: bool = False
    watchdog_timer: asyncio.TimerHandle | None = None   # the watchdog countdown
    history: History = field(default_factory=lambda: History(HISTORY_POINTS))
    notify: NotifySocket | None = None
    failures: int = 0
    spec: ProcessSpec | None = None   # set while retiring: the (older) spec it runs
    failed_run: bool = False          # its last run failed (keep its directory to inspect)
    ports: dict[str, int] = field(default_factory=dict)  # SERVICE_PORT_<service> it got
    draining: bool = False            # the balancer sends it no new connections
    early_exit: dict[str, Any] | None = None  # its Exited, read before its Spawned reply
    passed: bool = False              # its process has passed a health check (or was adopted)
    fault: str | None = None          # why corral is stopping it to restart it, if it is
    held: bool = False                # down because its restart waits for a dependency
    ready_timer: asyncio.TimerHandle | None = None   # readiness: started, after start_seconds
    start_timer: asyncio.TimerHandle | None = None   # start_timeout
    # Notify messages read before its pid was known, with their senders' lineage.
    early_notify: list[tuple[dict[str, str], frozenset[int]]] = field(default_factory=list)

    def until_stopped(self) -> asyncio.Future[None]:
        """A future done once this instance is down or failed (done already if it is).

        A future made now, not an ``asyncio.Event`` waited on from a task: a stop that
        completes before such a task first runs (the launcher answers fast, the loop is
        busy) would set the event and a restart would clear it again, and the waiter
        would then wait forever.  ``svc restart`` hung that way under load.
        """
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.state in (ServiceState.DOWN, ServiceState.FAILED):
            future.set_result(None)
        else:
            self.stop_waiters.append(future)
        return future

    def stopped(self) -> None:
        """Release every :meth:`until_stopped` waiter (the instance is down or failed)."""
        for future in self.stop_waiters:
            if not future.done():
                future.set_result(None)
        self.stop_waiters.clear()

    @property
    def launcher_name(self) -> str:
        """The child's name at the launcher: ``<service>/<index>``, and ``@<gen>`` after
        the service's spec has changed (so old and new run side by side in a rollout)."""
        return launcher_name(self.service, self.index, self.gen)

    @property
    def restarts(self) -> int:
        return max(0, self.spawns - 1)

    def uptime(self, now: float) -> float | None:
        """Seconds it has run at wall time ``now``; None while it does not run."""
        if self.pid is None or self.started_at is None:
            return None
        return max(0.0, now - self.started_at)

    def as_dict(self, now: float) -> dict[str, Any]:
        uptime = self.uptime(now)
        return {
            "index": self.index, "state": self.state.value, "pid": self.pid,
            "restarts": self.restarts,
            "uptime_s": round(uptime, 3) if uptime is not None else None,
            "started_at": rfc3339(self.started_at) if self.started_at and self.pid else None,
            "health": self.health.value, "reason": self.reason,
            "cpu": round(self.cpu, 1) if self.cpu is not None and self.pid else None,
            "rss": self.rss if self.pid else None,
            "next_restart_at": rfc3339(self.next_restart_at) if self.next_restart_at else None,
            "last_exit": self.last_exit,
        }


@dataclass
class Service:
    """A loaded spec, what the user wants of it, and its instances by index."""

    spec: ProcessSpec
    desired: Desired = Desired.UP
    instances: dict[int, Instance] = field(default_factory=dict)
    gen: int = 0                 # bumped whenever the spec (or a secret it uses) changes
    # Old instances kept running during a rollout until their replacement is ready.
    retiring: dict[int, Instance] = field(default_factory=dict)

    def new_instance(self, index: int) -> Instance:
        """A fresh record for ``index`` at the current generation."""
        return Instance(service=self.spec.name, index=index, gen=self.gen)

    def as_dict(self, now: float) -> dict[str, Any]:
        """The row ``GET /v1/services`` answers, at wall time ``now`` (for uptimes)."""
        ordered = [self.instances[i] for i in sorted(self.instances)]
        states = [inst.state for inst in ordered]
        state = min(states, key=_SEVERITY.index) if states else ServiceState.DOWN
        first = ordered[0] if ordered else None
        live = [i for i in ordered if i.pid is not None]
        uptime = first.uptime(now) if first is not None else None
        return {
            "name": self.spec.name, "state": state.value, "desired": self.desired.value,
            "pid": first.pid if first is not None else None,
            "instances": self.spec.instances, "running": len(live),
            "restarts": sum(i.restarts for i in ordered),
            # Unknown (not 0) until an instance has been sampled, as on the instance rows.
            "cpu": (round(sum(i.cpu or 0.0 for i in live), 1)
                    if any(i.cpu is not None for i in live) else None),
            "rss": sum(i.rss or 0 for i in live) if any(i.rss is not None for i in live) else None,
            "health": first.health.value if first is not None else HealthState.UNKNOWN.value,
            "uptime_s": round(uptime, 3) if uptime is not None else None,
            "reason": first.reason if first is not None else "",
            "next_restart_at": (rfc3339(first.next_restart_at)
                                if first is not None and first.next_restart_at else None),
            "last_exit": first.last_exit if first is not None else None,
            "command": self.spec.argv,
            "instance_list": [i.as_dict(now) for i in ordered] + [
                {**self.retiring[i].as_dict(now), "retiring": True} for i in sorted(self.retiring)],
        }
