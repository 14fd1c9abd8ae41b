"""A supervisor core wired to fakes: no process, no socket, time moved by hand.

Example::

    harness = Harness(tmp_path, "processes:\\n  - {name: web, command: [srv]}\\n")

    async def scenario() -> None:
        await harness.attach()
        assert harness.states("web") == ["starting"]
        harness.launcher.exit("web/0", exit_code=1)
        await harness.settle()

    harness.run(scenario())

The :class:`Supervisor` is the real one (machine, policy, effects, liveness, rollouts);
only its edges are fakes: the launcher (:class:`.launcher.FakeLauncher`), the clock and
the event loop's time (:class:`.clock.FakeClock`), health checks
(:class:`.health.FakeProbes`), hooks (:class:`.hooks.FakeHooks`) and the process-tree
sampler (:class:`.sampler.FakeSampler`).  ``before`` scripts and resources (a fresh
working directory, made in a thread), notify sockets and proxy services reach the real
world: a scenario that uses them is an integration test, not one of these.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from corral.balancer.ports import PortAllocator
from corral.store.resources import ResourceStore
from corral.store.secrets import SecretStore
from corral.supervisor.balancing import Balancer
from corral.supervisor.instance import Instance
from corral.supervisor.loop import Supervisor
from corral.supervisor.persistence import StateFiles

from .clock import FakeClock, FakeLoop
from .health import FakeProbes
from .hooks import FakeHooks
from .launcher import FakeLauncher
from .sampler import FakeSampler

T = TypeVar("T")


class Harness:
    """A :class:`Supervisor` of ``state_dir`` with fake edges, its target already stored.

    Args:
        state_dir: an empty directory.
        target: the target's YAML (``target.yaml``), or None to keep what is there.
        clock: the clock (a new :class:`FakeClock` by default).
        launcher: the launcher (a new :class:`FakeLauncher` by default; pass the old one
            to build the next supervisor of a restart).

    Backoff jitter takes the low end of its range, so delays are the policy's minimum.
    """

    def __init__(self, state_dir: Path, target: str | None, *, clock: FakeClock | None = None,
                 launcher: FakeLauncher | None = None) -> None:
        self.clock = clock or FakeClock()
        self.loop = FakeLoop(self.clock)
        self.launcher = launcher or FakeLauncher(self.clock)
        self.probes = FakeProbes()
        self.sampler = FakeSampler()
        self.hooks = FakeHooks()
        if target is not None:
            state_dir.mkdir(parents=True, exist_ok=True)
            (state_dir / "target.yaml").write_text(target)
        self.supervisor = Supervisor(
            state_dir, files=StateFiles(state_dir),
            secrets=SecretStore(state_dir / "secrets.json"),
            resources=ResourceStore(state_dir / "resources"),
            balancer=Balancer(state_dir, {}), ports=PortAllocator(), sampler=self.sampler,
            clock=self.clock, base_env={"PATH": "/usr/bin:/bin"},
            uniform=lambda low, high: low, probe=self.probes, run_hook=self.hooks)
        self.launcher.on_exit = self.supervisor.on_exit
        self.commands: list[asyncio.Task[Any]] = []
        self.supervisor.load_state()

    def run(self, main: Coroutine[Any, Any, T]) -> T:
        """Run ``main`` on the harness's loop (then close the loop)."""
        return self.loop.run(main)

    def command(self, call: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run a command (``supervisor.commands.stop("web")``...) in the background: it
        may wait for what only later events bring.  Its task is kept in :attr:`commands`."""
        task = self.loop.create_task(call)
        self.commands.append(task)
        return task

    async def attach(self) -> None:
        """Attach to the launcher (adopting what it runs), then settle."""
        await self.supervisor.attach(self.launcher)
        await self.settle()

    async def settle(self) -> None:
        """Run what is ready until the supervisor waits for time or a launcher event."""
        await self.loop.settle()

    async def advance(self, seconds: float) -> None:
        """Move the clock ``seconds`` forward and settle (timers due by then fire)."""
        self.clock.advance(seconds)
        await self.settle()

    def instances(self, service: str) -> list[Instance]:
        """The instances of ``service``, by index."""
        found = self.supervisor.services[service].instances
        return [found[i] for i in sorted(found)]

    def states(self, service: str) -> list[str]:
        """The state of each instance of ``service``, by index."""
        return [inst.state.value for inst in self.instances(service)]
