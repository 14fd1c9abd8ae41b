"""The fakes of corral.testing themselves: time moves only when told, the loop's timers
follow it, and the fake launcher answers and records like the launcher."""

from __future__ import annotations

import asyncio

import pytest

from corral.errors import SpawnFailed
from corral.protocol import messages as m
from corral.supervisor.launcher_client import Message, check
from corral.testing import FakeClock, FakeLauncher, FakeLoop


def test_timers_fire_only_when_the_clock_is_advanced() -> None:
    clock = FakeClock()
    loop = FakeLoop(clock)
    fired: list[float] = []

    async def scenario() -> None:
        asyncio.get_running_loop().call_later(5, lambda: fired.append(clock.monotonic()))
        await loop.settle()
        clock.advance(4.9)
        await loop.settle()
        assert fired == []
        clock.advance(0.1)
        await loop.settle()
        assert fired == [clock.monotonic()]

    loop.run(scenario())


def test_settle_runs_chains_of_callbacks_and_tasks() -> None:
    loop = FakeLoop(FakeClock())
    trail: list[int] = []

    async def chain(n: int) -> None:
        for i in range(n):
            trail.append(i)
            await asyncio.sleep(0)

    async def scenario() -> None:
        task = asyncio.ensure_future(chain(50))
        await loop.settle()
        assert task.done() and trail == list(range(50))

    loop.run(scenario())


def test_the_clock_never_goes_back() -> None:
    clock = FakeClock(wall=100.0, monotonic=7.0)
    clock.advance(2)
    assert (clock.time(), clock.monotonic()) == (102.0, 9.0)
    with pytest.raises(ValueError, match="never goes back"):
        clock.advance(-1)


def test_the_launcher_answers_records_and_reports_exits() -> None:
    clock = FakeClock()
    exits: list[Message] = []
    launcher = FakeLauncher(clock, on_exit=exits.append)
    loop = FakeLoop(clock)

    async def scenario() -> None:
        spawned = await launcher.request({"type": m.SPAWN, "name": "web/0", "argv": ["srv"]})
        assert spawned["spawns"] == 1 and launcher.names() == ["web/0"]
        children = await launcher.list_children()
        assert [c["name"] for c in children] == ["web/0"]
        launcher.exit("web/0", exit_code=3)
        assert exits[0]["pid"] == spawned["pid"] and exits[0]["exit_code"] == 3
        again = await launcher.request({"type": m.SPAWN, "name": "web/0", "argv": ["srv"]})
        assert again["spawns"] == 2 and again["pid"] != spawned["pid"]
        stopped = await launcher.request({"type": m.TERMINATE, "pid": again["pid"]})
        assert stopped["method"] == m.GRACEFUL and launcher.names() == []
        gone = await launcher.request({"type": m.TERMINATE, "pid": again["pid"]})
        assert gone["method"] == m.ALREADY_EXITED
        launcher.spawn_errors["web/1"] = m.E_EXEC_FAILED
        with pytest.raises(SpawnFailed):
            check(await launcher.send_request({"type": m.SPAWN, "name": "web/1"}))
        assert launcher.take() == [(m.SPAWN, "web/0"), (m.LIST, None), (m.SPAWN, "web/0"),
                                   (m.TERMINATE, again["pid"]), (m.TERMINATE, again["pid"]),
                                   (m.SPAWN, "web/1")]

    loop.run(scenario())


def test_a_held_stop_ends_when_the_test_says() -> None:
    clock = FakeClock()
    launcher = FakeLauncher(clock)
    launcher.hold_terminates = True
    loop = FakeLoop(clock)

    async def scenario() -> None:
        child = launcher.run("web/0")
        reply = launcher.send_request({"type": m.TERMINATE, "pid": child.pid})
        await loop.settle()
        assert not reply.done() and launcher.names() == ["web/0"]
        launcher.finish_stop(child.pid)
        assert (await reply)["method"] == m.GRACEFUL and launcher.names() == []

    loop.run(scenario())
