"""Sampling: CPU and RSS of every instance's process tree every two seconds, the
resource history, and the limits (``limits.memory``, ``limits.cpu``, with their
``grace``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

from corral.monitor import sampler
from corral.spec import LimitsSpec, format_size
from corral.states import LIVE_STATES

from .clock import Clock
from .events import EventLog
from .instance import HISTORY_STEP, Instance, Service

SAMPLE_EVERY = 2.0


class Sampling:
    """Samples the instances of the loaded processes.

    Args:
        sampler: reads a process tree's usage (kept-open /proc files).
        processes: the loaded processes (read each round: the core replaces the mapping).
        events: the event log.
        over_limit: stops an instance that stayed over a limit past its grace, with the
            reason (the restart policy brings it back).
        clock: wall time for the history, monotonic time for CPU %.
    """

    def __init__(self, sampler: sampler.TreeSampler,
                 processes: Callable[[], Mapping[str, Service]], events: EventLog,
                 over_limit: Callable[[Instance, str], None], clock: Clock) -> None:
        self._sampler = sampler
        self._clock = clock
        self._processes = processes
        self._events = events
        self._over_limit = over_limit
        self._history_at = 0.0  # wall clock of the last resource history point

    async def run(self) -> None:
        """Sample CPU and RSS of every instance's process tree every 2 s, forever; enforce
        limits.  (Kept-open /proc files keep a round cheap even at 1,000 services: see
        :class:`corral.monitor.sampler.TreeSampler`.)"""
        while True:
            await asyncio.sleep(SAMPLE_EVERY)
            self.sample_once(self._clock.monotonic())

    def sample_once(self, now: float) -> None:
        # Per instance this is the hot part of an idle supervisor at 1,000 services: the
        # clock is read once a round, whether to keep a history point is decided once a
        # round, an instance that has not run since the last round (the sampler hands back
        # the same reading) costs a comparison, and limits are checked only where set.
        wall = self._clock.time()
        record = wall - self._history_at >= HISTORY_STEP
        if record:
            self._history_at = wall
        usage = self._sampler.usage
        for service in list(self._processes().values()):
            limits = service.spec.limits
            limited = limits.memory is not None or limits.cpu is not None
            for inst in list(service.instances.values()):
                if inst.pid is None or inst.state not in LIVE_STATES:
                    inst.usage = None
                    continue
                use = usage(inst.pid)
                if use is None:
                    continue
                last = inst.usage
                if use is not last:
                    if last is not None and now > inst.sampled_at:
                        inst.cpu = max(0.0, (use.cpu_seconds - last.cpu_seconds)
                                       / (now - inst.sampled_at) * 100)
                    inst.rss = use.rss_bytes
                    inst.usage = use
                else:  # not run since the last reading (a second reading: CPU known)
                    inst.cpu = 0.0
                inst.sampled_at = now
                if record:
                    inst.history.append(wall, inst.cpu or 0.0, use.rss_bytes)
                if limited:
                    self._check_limits(service, inst, now)
        self._sampler.end_round()

    def _check_limits(self, service: Service, inst: Instance, now: float) -> None:
        limits = service.spec.limits
        over = over_limits(limits, inst.rss, inst.cpu)
        if not over:
            inst.over_limit_since = None
            return
        if inst.over_limit_since is None:
            inst.over_limit_since = now
        if not grace_over(inst.over_limit_since, now, limits.grace):
            return
        why = "; ".join(over)
        inst.over_limit_since = None
        self._events.emit(inst.service, "limit", f"restarting: {why}", instance=inst.index,
                          pid=inst.pid)
        self._over_limit(inst, f"restarting: {why}")


def over_limits(limits: LimitsSpec, rss: int | None, cpu: float | None) -> list[str]:
    """The limits a reading (``rss`` bytes, ``cpu`` percent) is over, each as a phrase;
    empty when it is within them (or unknown)."""
    over = []
    if limits.memory is not None and rss is not None and rss > limits.memory:
        over.append(f"memory {rss / 2**20:.0f}MiB over the {format_size(limits.memory)} limit")
    if limits.cpu is not None and cpu is not None and cpu > limits.cpu:
        over.append(f"cpu {cpu:.0f}% over the {limits.cpu:g}% limit")
    return over


def grace_over(since: float, now: float, grace: float) -> bool:
    """Whether an instance over a limit since ``since`` has stayed over it past ``grace``
    seconds (then it is restarted)."""
    return now - since >= grace
