"""The supervisor core, driven by replayed event histories: no process, no socket.

Each history is a list of steps ``(event, expected states, expected launcher requests)``:
the event is fed to a real :class:`corral.supervisor.loop.Supervisor` built on
:mod:`corral.testing`'s fakes (launcher, clock, health checks, sampler), then the states of
every instance of ``web`` (by index; or of each named service) and the requests the
launcher received meanwhile are compared with the step's.  Events:

- ``("attach",)``: the supervisor attaches to the launcher (adopting what it runs);
- ``("exit", name, code)``: the launcher reports that child ``name`` exited;
- ``("runs", name)``: the launcher runs a child ``name`` (before an attach);
- ``("advance", seconds)``: time passes (due timers fire);
- ``("ready",)``: time passes until ``readiness: started`` calls instances ready;
- ``("stop",)`` / ``("start",)``: ``svc stop web`` / ``svc start web``;
- ``("target", yaml)``: ``target set`` (a rollout, in the background);
- ``("rollout", phase)``: checks the last rollout's phase;
- ``("health", index, state)``: from now on instance ``index``'s check answers ``state``;
- ``("usage", index, rss)``: instance ``index``'s tree uses ``rss`` bytes;
- ``("spawn_fails", name)``: the launcher refuses the next spawns of ``name``;
- ``("hooks", (hook, index), ...)``: checks the hooks run since the last such check;
- ``("hook_fails", hook)`` / ``("hook_works", hook)``: how ``hook`` ends from now on;
- ``("crash",)``: the supervisor dies; a new one starts on the same state directory,
  launcher and clock (the launcher keeps its children, and reports again the exits the
  dead one never acknowledged).
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from corral.health.probes import Result
from corral.monitor.sampler import Usage
from corral.protocol import messages as m
from corral.spec import load_target
from corral.states import HealthState
from corral.testing import Harness

# (event, states of web's instances (or of each service's, by name), launcher requests)
Step = tuple[tuple[Any, ...], list[str] | dict[str, list[str]], list[tuple[str, Any]]]

ALWAYS = """
processes:
  - name: web
    command: [srv]
    restart: {policy: always, cooldown: 10s, backoff_min: 1s, backoff_max: 8s, max_restarts: 3}
"""

ON_FAILURE = """
processes:
  - name: web
    command: [srv]
    restart: {policy: on-failure}
"""

TWO = """
processes:
  - name: web
    command: [srv]
    instances: 2
"""

HEALTH = """
processes:
  - name: web
    command: [srv]
    readiness: health
    start_timeout: 30s
    health: {exec: [check], interval: 5s, timeout: 1s, retries: 3}
    restart: {cooldown: 1s, backoff_min: 2s}
"""

LIMITS = """
processes:
  - name: web
    command: [srv]
    limits: {memory: 100MiB, grace: 10s}
    restart: {cooldown: 1s}
"""

TWO_ON_FAILURE = """
processes:
  - name: web
    command: [srv]
    instances: 2
    restart: {policy: on-failure}
"""

V1 = """
processes:
  - name: web
    command: [srv]
    rollout_timeout: 20s
"""
V2 = V1.replace("[srv]", "[srv, v2]")
# The new version has a health check (it must pass it before it takes the old one's place).
V2_CHECKED = V2 + "    health: {exec: [check], interval: 5s, timeout: 1s}\n"

PAIR = """
processes:
  - name: api
    command: [api]
    rollout_timeout: 20s
  - name: web
    command: [srv]
    rollout_timeout: 20s
    depends_on: [api]
"""
PAIR_V2 = PAIR.replace("[api]\n", "[api, v2]\n", 1).replace(
    "[srv]", "[srv, v2]\n    health: {exec: [check], interval: 5s, timeout: 1s}")

HOOKS = """
processes:
  - name: web
    command: [srv]
    restart: {cooldown: 1s, backoff_min: 2s}
    hooks: {init: prepare, post_run: announce, post_stop: clean}
"""

SPAWN, TERM = m.SPAWN, m.TERMINATE
P = 40_000  # the fake launcher's first pid

HISTORIES: dict[str, tuple[str, list[Step]]] = {
    "start, crash, restart at once, then back off, then give up": (ALWAYS, [
        (("attach",), ["starting"], [("List", None), (SPAWN, "web/0")]),
        (("ready",), ["up"], []),
        # young deaths: the first restarts at once, the next ones back off ...
        (("exit", "web/0", 1), ["starting"], [(SPAWN, "web/0")]),
        (("exit", "web/0", 1), ["backoff"], []),
        (("advance", 0.9), ["backoff"], []),
        (("advance", 0.1), ["starting"], [(SPAWN, "web/0")]),
        (("exit", "web/0", 1), ["backoff"], []),
        (("advance", 3), ["starting"], [(SPAWN, "web/0")]),
        # ... and past max_restarts young deaths in a row it is failed, and stays so
        (("exit", "web/0", 1), ["failed"], []),
        (("advance", 60), ["failed"], []),
        (("start",), ["starting"], [(SPAWN, "web/0")]),     # until a user starts it
    ]),
    "a run past the cooldown restarts at once and forgets the streak": (ALWAYS, [
        (("attach",), ["starting"], [("List", None), (SPAWN, "web/0")]),
        (("exit", "web/0", 1), ["starting"], [(SPAWN, "web/0")]),
        (("exit", "web/0", 1), ["backoff"], []),
        (("advance", 1), ["starting"], [(SPAWN, "web/0")]),
        (("advance", 10), ["up"], []),
        (("exit", "web/0", 1), ["starting"], [(SPAWN, "web/0")]),
    ]),
    "on-failure: a clean exit stays down, a failure restarts": (ON_FAILURE, [
        (("attach",), ["starting"], [("List", None), (SPAWN, "web/0")]),
        (("exit", "web/0", 2), ["starting"], [(SPAWN, "web/0")]),
        (("exit", "web/0", 0), ["down"], []),
        (("advance", 120), ["down"], []),
    ]),
    "stop and start": (TWO, [
        (("attach",), ["starting", "starting"],
         [("List", None), (SPAWN, "web/0"), (SPAWN, "web/1")]),
        (("ready",), ["up", "up"], []),
        (("stop",), ["down", "down"], [(TERM, P), (TERM, P + 1)]),
        (("advance", 120), ["down", "down"], []),
        (("start",), ["starting", "starting"], [(SPAWN, "web/0"), (SPAWN, "web/1")]),
    ]),
    "a stop while backing off cancels the restart": (ALWAYS, [
        (("attach",), ["starting"], [("List", None), (SPAWN, "web/0")]),
        (("exit", "web/0", 1), ["starting"], [(SPAWN, "web/0")]),
        (("exit", "web/0", 1), ["backoff"], []),
        (("stop",), ["down"], []),
        (("advance", 60), ["down"], []),
    ]),
    "a refused spawn backs off like a crash": (ALWAYS, [
        (("spawn_fails", "web/0"), [], []),
        (("attach",), ["backoff"], [("List", None), (SPAWN, "web/0")]),
        (("advance", 1), ["backoff"], [(SPAWN, "web/0")]),
    ]),
    "health: a failing check restarts only after `retries` failures": (HEALTH, [
        # the first check runs at once and passes: ready
        (("attach",), ["up"], [("List", None), (SPAWN, "web/0")]),
        (("health", 0, HealthState.CRITICAL), ["up"], []),
        (("advance", 5), ["up"], []),                 # one failure ...
        (("advance", 5), ["up"], []),                 # two ...
        # three: stopped for the fault; it ran past its cooldown, so it starts again
        (("advance", 5), ["starting"], [(TERM, P), (SPAWN, "web/0")]),
        (("advance", 5), ["starting"], []),           # a new process must pass first
        (("health", 0, HealthState.OK), ["starting"], []),
        (("advance", 5), ["up"], []),
    ]),
    "health: a start that never passes fails after start_timeout": (HEALTH, [
        (("health", 0, HealthState.CRITICAL), [], []),
        (("attach",), ["starting"], [("List", None), (SPAWN, "web/0")]),
        (("advance", 25), ["starting"], []),          # failures while starting do not count
        (("advance", 5), ["starting"], [(TERM, P), (SPAWN, "web/0")]),  # 30 s: too late
    ]),
    "limits: over memory restarts only once the grace is over": (LIMITS, [
        (("attach",), ["starting"], [("List", None), (SPAWN, "web/0")]),
        (("ready",), ["up"], []),
        (("usage", 0, 200 * 2**20), ["up"], []),
        (("advance", 2), ["up"], []),                 # over since this round
        (("advance", 8), ["up"], []),                 # 8 s over: within the grace
        (("usage", 0, 10 * 2**20), ["up"], []),
        (("advance", 2), ["up"], []),                 # back under: the grace starts again
        (("usage", 0, 200 * 2**20), ["up"], []),
        (("advance", 2), ["up"], []),
        (("advance", 10), ["starting"], [(TERM, P), (SPAWN, "web/0")]),
    ]),
    "hooks: init before a start asked for, post_run once ready, post_stop after a stop": (
        HOOKS, [
            (("attach",), ["starting"], [("List", None), (SPAWN, "web/0")]),
            (("hooks", ("init", 0)), ["starting"], []),
            (("ready",), ["up"], []),
            (("hooks", ("post_run", 0)), ["up"], []),
            # a crash restart runs no init hook
            (("exit", "web/0", 1), ["starting"], [(SPAWN, "web/0")]),
            (("ready",), ["up"], []),
            (("hooks", ("post_run", 0)), ["up"], []),
            (("stop",), ["down"], [(TERM, P + 1)]),
            (("hooks", ("post_stop", 0)), ["down"], []),
            (("start",), ["starting"], [(SPAWN, "web/0")]),
            (("hooks", ("init", 0)), ["starting"], []),
        ]),
    "hooks: an init hook that fails backs off like a crash": (HOOKS, [
        (("hook_fails", "init"), [], []),
        (("attach",), ["backoff"], [("List", None)]),
        (("hooks", ("init", 0)), ["backoff"], []),
        (("hook_works", "init"), ["backoff"], []),
        (("advance", 2), ["starting"], [(SPAWN, "web/0")]),
        (("hooks", ("init", 0)), ["starting"], []),
    ]),
    # ------------------------------------------------------------ reattach, adoption
    "a new supervisor adopts what runs and replays what exited meanwhile": (TWO_ON_FAILURE, [
        (("attach",), ["starting", "starting"],
         [("List", None), (SPAWN, "web/0"), (SPAWN, "web/1")]),
        (("ready",), ["up", "up"], []),
        (("crash",), [], []),
        # the launcher reports (again) the exit no supervisor acknowledged: it is kept
        # until the new one has adopted what runs
        (("exit", "web/1", 0), [], []),
        (("attach",), ["up", "down"], [("List", None)]),   # same pid; a clean exit stays down
        (("advance", 60), ["up", "down"], []),
        (("exit", "web/0", 1), ["starting", "down"], [(SPAWN, "web/0")]),
    ]),
    "an exit while no supervisor ran that the policy restarts is restarted once attached": (
        TWO_ON_FAILURE, [
            (("attach",), ["starting", "starting"],
             [("List", None), (SPAWN, "web/0"), (SPAWN, "web/1")]),
            (("crash",), [], []),
            (("exit", "web/0", 3), [], []),
            (("attach",), ["starting", "up"], [("List", None), (SPAWN, "web/0")]),
        ]),
    "a child that is no longer wanted is stopped, not adopted": (TWO_ON_FAILURE, [
        (("attach",), ["starting", "starting"],
         [("List", None), (SPAWN, "web/0"), (SPAWN, "web/1")]),
        (("crash",), [], []),
        (("runs", "web/5"), [], []),                       # beyond the instance count
        (("attach",), ["up", "up"], [("List", None), (TERM, P + 2)]),
    ]),
    # ------------------------------------------------------------------- rollouts
    "rollout: the new version replaces the old one": (V1, [
        (("attach",), ["starting"], [("List", None), (SPAWN, "web/0")]),
        (("ready",), ["up"], []),
        (("target", V2), ["starting"], [(TERM, P), (SPAWN, "web/0@1")]),
        (("rollout", "running"), ["starting"], []),
        (("ready",), ["up"], []),
        (("rollout", "done"), ["up"], []),
    ]),
    "rollout: a new version not healthy in time is stopped and the old one is back": (V1, [
        (("attach",), ["starting"], [("List", None), (SPAWN, "web/0")]),
        (("ready",), ["up"], []),
        (("health", 0, HealthState.CRITICAL), ["up"], []),
        (("target", V2_CHECKED), ["starting"], [(TERM, P), (SPAWN, "web/0@1")]),
        # ready (readiness: started), but never passing its check
        (("advance", 15), ["up"], []),
        (("rollout", "running"), ["up"], []),
        (("advance", 5), ["starting"], [(TERM, P + 1), (SPAWN, "web/0")]),
        (("ready",), ["up"], []),
        (("rollout", "failed"), ["up"], []),
    ]),
    "rollout: a failure puts back what was already replaced": (PAIR, [
        (("attach",), {"api": ["starting"], "web": ["down"]}, [("List", None), (SPAWN, "api/0")]),
        (("ready",), {"api": ["up"], "web": ["starting"]}, [(SPAWN, "web/0")]),
        (("ready",), {"api": ["up"], "web": ["up"]}, []),
        (("health", 0, HealthState.CRITICAL), {"api": ["up"], "web": ["up"]}, []),
        # dependencies first: api is replaced, then web
        (("target", PAIR_V2), {"api": ["starting"], "web": ["up"]},
         [(TERM, P), (SPAWN, "api/0@1")]),
        (("ready",), {"api": ["up"], "web": ["starting"]}, [(TERM, P + 1), (SPAWN, "web/0@1")]),
        (("advance", 19), {"api": ["up"], "web": ["up"]}, []),
        # web's new version is not healthy in time: it goes and web's old one comes back;
        # once that is ready, api is put back to its old version too
        (("advance", 1), {"api": ["up"], "web": ["starting"]},
         [(TERM, P + 3), (SPAWN, "web/0")]),
        (("ready",), {"api": ["starting"], "web": ["up"]}, [(TERM, P + 2), (SPAWN, "api/0")]),
        (("rollout", "running"), {"api": ["starting"], "web": ["up"]}, []),
        (("ready",), {"api": ["up"], "web": ["up"]}, []),
        (("rollout", "failed"), {"api": ["up"], "web": ["up"]}, []),
    ]),
    "rollout: resumed by the next supervisor after a crash": (V1, [
        (("attach",), ["starting"], [("List", None), (SPAWN, "web/0")]),
        (("ready",), ["up"], []),
        (("target", V2), ["starting"], [(TERM, P), (SPAWN, "web/0@1")]),
        (("crash",), [], []),
        (("attach",), ["up"], [("List", None)]),           # the new version, adopted
        (("rollout", "done"), ["up"], []),
    ]),
    "rollout: the next supervisor puts the old version back when the new one fails": (V1, [
        (("attach",), ["starting"], [("List", None), (SPAWN, "web/0")]),
        (("ready",), ["up"], []),
        (("target", V2_CHECKED), ["starting"], [(TERM, P), (SPAWN, "web/0@1")]),
        (("crash",), [], []),
        (("health", 0, HealthState.CRITICAL), [], []),
        (("attach",), ["up"], [("List", None)]),
        (("advance", 19), ["up"], []),
        (("rollout", "running"), ["up"], []),
        (("advance", 1), ["starting"], [(TERM, P + 1), (SPAWN, "web/0")]),
        (("ready",), ["up"], []),
        (("rollout", "failed"), ["up"], []),
    ]),
}


@pytest.fixture(autouse=True)
def _no_process_no_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing here may start a process or bind or connect a socket: each way to do so
    raises.  (The event loop's own wake-up socket pair is neither.)"""
    def refused(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a unit test started a process or used a socket: {args}")

    for owner, name in ((os, "posix_spawn"), (os, "fork"), (os, "execve"),
                        (subprocess.Popen, "__init__"), (socket.socket, "bind"),
                        (socket.socket, "connect"), (socket.socket, "connect_ex"),
                        (socket.socket, "sendto")):
        monkeypatch.setattr(owner, name, refused)


async def _feed(harness: Harness, event: tuple[Any, ...]) -> None:
    kind, *args = event
    sup, launcher = harness.supervisor, harness.launcher
    if kind == "attach":
        await harness.attach()
    elif kind == "exit":
        launcher.exit(args[0], exit_code=args[1])
    elif kind == "runs":
        launcher.run(args[0])
    elif kind == "advance":
        await harness.advance(args[0])
    elif kind == "ready":
        await harness.advance(max(s.spec.start_seconds for s in sup.services.values()))
    elif kind in ("stop", "start"):
        command = sup.commands.stop if kind == "stop" else sup.commands.start
        harness.command(command("web"))
    elif kind == "target":
        harness.command(sup.targets.apply(load_target(args[0], "test"), args[0], "test"))
    elif kind == "rollout":
        record = sup.rollouts.record
        assert record is not None and record.phase.value == args[0], record
    elif kind == "health":
        harness.probes.answer("web", args[0], Result(args[1], args[1].value))
    elif kind == "usage":
        pid = harness.instances("web")[args[0]].pid
        assert pid is not None
        harness.sampler.readings[pid] = Usage(0.0, args[1], 1)
    elif kind == "hooks":
        assert harness.hooks.take() == [(hook, "web", index) for hook, index in args]
    elif kind == "hook_fails":
        harness.hooks.failing.add(args[0])
    elif kind == "hook_works":
        harness.hooks.failing.discard(args[0])
    elif kind == "spawn_fails":
        launcher.spawn_errors[args[0]] = m.E_EXEC_FAILED
    else:
        raise AssertionError(f"unknown event {event}")
    await harness.settle()


def replay(tmp_path: Path, target: str, steps: list[Step]) -> None:
    """Feed each step's event, then check the states and the requests it led to.  At a
    ``("crash",)`` step the supervisor dies (its tasks are cancelled, nothing more) and a
    new one is built on the same state directory, launcher and clock."""
    lives: list[list[Step]] = [[]]
    for step in steps:
        if step[0] == ("crash",):
            lives.append([])
        else:
            lives[-1].append(step)
    state_dir = tmp_path / "state"
    harness = Harness(state_dir, target)
    for life, lived in enumerate(lives):
        if life:
            harness = Harness(state_dir, None, clock=harness.clock, launcher=harness.launcher)
        harness.run(_live(harness, lived, life))


async def _live(harness: Harness, steps: list[Step], life: int) -> None:
    for number, (event, states, requests) in enumerate(steps):
        await _feed(harness, event)
        loaded = harness.supervisor.services
        now = ({name: harness.states(name) for name in states} if isinstance(states, dict)
               else harness.states("web") if "web" in loaded else [])
        seen = (now, harness.launcher.take())
        assert seen == (states, requests), f"supervisor {life + 1}, step {number}: {event}"


@pytest.mark.parametrize("name", list(HISTORIES))
def test_history(tmp_path: Path, name: str) -> None:
    replay(tmp_path, *HISTORIES[name])
