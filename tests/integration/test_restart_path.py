"""The supervisor's restart hot path, driven over a real socket pair by a scripted launcher.

A real :class:`Supervisor` and :class:`LauncherClient` run in-process; the test plays the
launcher's end of the protocol (Hello, List, Spawn, Exited), so it can see exactly what
the supervisor writes and when.  No process is started: the "children" are pids the
test makes up (its own, so that the sampler finds a live process).
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from corral.daemon import build_supervisor
from corral.errors import Unavailable
from corral.protocol import framing
from corral.protocol import messages as m
from corral.supervisor.launcher_client import LauncherClient
from corral.supervisor.loop import Supervisor
from corral.supervisor.policy import Streak
from corral.supervisor.settings import Settings

Message = dict[str, Any]

TARGET = """\
processes:
  - name: s0
    command: ["/usr/bin/sleep", "1000"]
    restart: {policy: always, cooldown: 50ms, backoff_min: 0s}
"""


class FakeLauncher:
    """The launcher's end: answers Hello and List like the launcher; queues every other
    frame the supervisor writes (Spawn, Ack) for the test, in order."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.frames: asyncio.Queue[Message] = asyncio.Queue()

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        decoder = framing.Decoder()
        while data := await loop.sock_recv(self.sock, 65536):
            for msg in decoder.feed(data):
                if msg["type"] == m.HELLO:
                    await self.send({"type": m.HELLO_OK, "id": msg["id"],
                                     "version": msg["version"], "launcher_pid": os.getpid()})
                elif msg["type"] == m.LIST:
                    await self.send({"type": m.CHILDREN, "id": msg["id"], "children": [],
                                     "listeners": []})
                else:
                    self.frames.put_nowait(msg)

    async def next(self) -> Message:
        return await asyncio.wait_for(self.frames.get(), 10)

    async def send(self, msg: Message) -> None:
        await asyncio.get_running_loop().sock_sendall(self.sock, framing.encode(msg))

    async def send_raw(self, data: bytes) -> None:
        await asyncio.get_running_loop().sock_sendall(self.sock, data)


def run_with_supervisor(tmp_path: Path,
                        body: Callable[[Supervisor, FakeLauncher], Awaitable[None]]) -> None:
    """Start a Supervisor on ``TARGET`` against a FakeLauncher (its one instance running
    as pid ``os.getpid()``), run ``body``, clean up."""
    target = tmp_path / "target.yaml"
    target.write_text(TARGET)
    (tmp_path / "state").mkdir()
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)

    async def main() -> None:
        sup = build_supervisor(tmp_path / "state", Settings.from_environ(os.environ))
        sup.load_state(target)
        fake = FakeLauncher(theirs)
        serving = asyncio.ensure_future(fake.serve())
        launcher = await LauncherClient.connect(ours, sup.on_exit, lambda: None, lambda: None)
        attaching = asyncio.ensure_future(sup.attach(launcher))
        spawn = await fake.next()
        assert spawn["type"] == m.SPAWN
        await fake.send({"type": m.SPAWNED, "id": spawn["id"], "pid": os.getpid(),
                         "started_at": time.time() - 100})
        await asyncio.wait_for(attaching, 10)
        try:
            await body(sup, fake)
        finally:
            launcher.close()
            serving.cancel()
            for task in list(sup._tasks):
                task.cancel()
            await asyncio.gather(serving, *sup._tasks, return_exceptions=True)

    try:
        asyncio.run(main())
    finally:
        ours.close()
        theirs.close()


async def wait_until(check: Callable[[], bool]) -> None:
    """Poll ``check`` on the loop (a deadline, not a sleep as synchronisation)."""
    deadline = time.monotonic() + 10
    while not check():
        assert time.monotonic() < deadline, "condition not met within 10 s"
        await asyncio.sleep(0.005)


def test_restart_spawn_is_written_before_the_exit_is_recorded(tmp_path: Path) -> None:
    async def body(sup: Supervisor, fake: FakeLauncher) -> None:
        inst = sup.services["s0"].instances[0]
        await wait_until(lambda: inst.state.value == "up")
        assert sup.launcher is not None
        seen_at_spawn: list[list[str]] = []
        send = sup.launcher.send_encoded

        def spy(body: bytes, extra: bytes = b"") -> asyncio.Future[Message]:
            seen_at_spawn.append([e["kind"] for e in sup.events.recent(100, "s0")])
            return send(body, extra)

        sup.launcher.send_encoded = spy  # type: ignore[method-assign]
        before = len(sup.events.recent(100, "s0"))
        await fake.send({"type": m.EXITED, "name": "s0/0", "pid": os.getpid(),
                         "exit_code": None, "signal": "KILL", "at": time.time(), "seq": 7,
                         "last_lines": []})
        spawn, ack = await fake.next(), await fake.next()
        assert spawn["type"] == m.SPAWN and spawn["name"] == "s0/0"
        assert ack == {"type": m.ACK, "seq": 7}
        # The Spawn went out before anything about the exit was recorded ...
        assert seen_at_spawn == [[e["kind"] for e in sup.events.recent(100, "s0")[:before]]]
        # ... and the record still reads exit first, then the state change it caused.
        after = sup.events.recent(100, "s0")[before:]
        assert [(e["kind"], e["to"]) for e in after[:2]] == [("exit", None),
                                                             ("state", "starting")]
        assert after[0]["signal"] == "KILL" and after[0]["pid"] == os.getpid()
        assert inst.last_exit is not None and inst.last_exit["signal"] == "KILL"
        await fake.send({"type": m.SPAWNED, "id": spawn["id"], "pid": os.getpid(),
                         "started_at": time.time()})
        await wait_until(lambda: inst.state.value == "up")

    run_with_supervisor(tmp_path, body)


def test_backoff_exit_is_recorded_before_the_restart_is_scheduled(tmp_path: Path) -> None:
    async def body(sup: Supervisor, fake: FakeLauncher) -> None:
        inst = sup.services["s0"].instances[0]
        await wait_until(lambda: inst.state.value == "up")
        inst.started_at = time.time()  # dies young twice: the second exit backs off
        inst.streak = Streak(young_deaths=1, last_delay=0.0)
        before = len(sup.events.recent(100, "s0"))
        await fake.send({"type": m.EXITED, "name": "s0/0", "pid": os.getpid(),
                         "exit_code": 1, "signal": None, "at": time.time(), "seq": 8})
        assert await fake.next() == {"type": m.ACK, "seq": 8}
        kinds = [e["kind"] for e in sup.events.recent(100, "s0")[before:]]
        assert kinds[:3] == ["exit", "restart_scheduled", "state"]

    run_with_supervisor(tmp_path, body)


def test_a_bad_frame_drops_the_connection_and_fails_pending_requests() -> None:
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)

    async def main() -> None:
        lost = asyncio.get_running_loop().create_future()
        fake = FakeLauncher(theirs)
        serving = asyncio.ensure_future(fake.serve())
        client = await LauncherClient.connect(ours, lambda msg: None, lambda: None,
                                              lambda: lost.set_result(True))
        pending = client.send_request({"type": m.LIST})
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)
        await fake.send_raw(b"\x00\x00\x00\x02[]")  # a JSON array, not an object
        assert await asyncio.wait_for(lost, 10) is True
        with pytest.raises(Unavailable):
            await pending
        with pytest.raises(Unavailable):
            client.send_request({"type": m.LIST})

    try:
        asyncio.run(main())
    finally:
        ours.close()
        theirs.close()
