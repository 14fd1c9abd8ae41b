"""Waiting for an instance to stop: a waiter registered before the stop completes is
released even when the instance is restarted at once (``svc restart`` hung on that)."""

from __future__ import annotations

import asyncio

from corral.states import ServiceState
from corral.supervisor.instance import Instance


def test_a_stop_then_an_immediate_restart_still_releases_the_waiter() -> None:
    async def scenario() -> None:
        inst = Instance(service="web", index=0, state=ServiceState.STOPPING)
        waiter = inst.until_stopped()
        # The launcher's answer lands before any other task runs: down, then restarted.
        inst.state = ServiceState.DOWN
        inst.stopped()
        inst.state = ServiceState.STARTING
        await asyncio.wait_for(waiter, 1)
        assert inst.stop_waiters == []

    asyncio.run(scenario())


def test_an_instance_already_down_is_stopped_at_once() -> None:
    async def scenario() -> None:
        for state in (ServiceState.DOWN, ServiceState.FAILED):
            inst = Instance(service="web", index=0, state=state)
            assert inst.until_stopped().done()
            assert inst.stop_waiters == []

    asyncio.run(scenario())


def test_every_waiter_is_released_once() -> None:
    async def scenario() -> None:
        inst = Instance(service="web", index=0, state=ServiceState.UP)
        waiters = [inst.until_stopped() for _ in range(3)]
        assert not any(w.done() for w in waiters)
        inst.state = ServiceState.DOWN
        inst.stopped()
        inst.stopped()  # a second release finds nothing left to do
        assert all(w.done() for w in waiters)

    asyncio.run(scenario())
