"""Tests of the launcher's standing orders: the child table's bookkeeping, the Spawn and
Order requests, and a respawn carried out with no supervisor connected.

The respawn tests start real ``sleep`` children in-process (no supervisor, no socket) and
reap them with the launcher's own ``reap``; every child is killed and reaped at the end.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.launcher.children import Child, ChildTable, Respawn
from corral.launcher.logfile import LogFile
from corral.launcher.output import PipeReader
from corral.launcher.pid1 import Launcher
from corral.protocol import messages as m
from corral.protocol.standing import StandingOrder

SLEEP = shutil.which("sleep") or "/bin/sleep"


def child(pid: int, on_exit: int | None = None) -> Child:
    """A child record with a pipe reader that never reads (no process, no file)."""
    reader = PipeReader(-1, pid, b"O", LogFile("/nonexistent/web.log", 4096, 1), True)
    return Child(name="web/0", pid=pid, argv=["sleep"], started_at=0.0, readers=[reader],
                 on_exit=StandingOrder.lift(on_exit))


# --------------------------------------------------------------------- the child table
def test_an_order_is_for_one_exit() -> None:
    """The order of a child is handed over once, at its exit; the next exit has none."""
    table = ChildTable()
    web = child(10, on_exit=0)
    table.add(web)
    assert table.take_order(web, 10.0) == (0, None, False)
    assert table.take_order(web, 10.0) == (None, None, False)


def test_order_replaces_the_order_of_a_running_child() -> None:
    """Order sets, changes and clears (None) a running child's order."""
    table = ChildTable()
    web = child(10)
    table.add(web)
    assert table.order(10, StandingOrder(250)) and web.on_exit == StandingOrder(250)
    assert table.order(10, None) and web.on_exit is None


def test_order_changes_or_cancels_a_waiting_respawn() -> None:
    """Until a delayed respawn is due, an order for the old pid changes its delay, and
    None cancels it."""
    table = ChildTable()
    waiting = Respawn(child(10), 500, exited_at=100.0)
    table.respawns[10] = waiting
    assert table.order(10, StandingOrder(2000)) and waiting.after_ms == 2000
    assert waiting.due_in(101.0) == pytest.approx(1.0)
    table.cancel_order(10)
    assert 10 not in table.respawns


def test_order_for_an_unknown_pid_is_refused() -> None:
    """A pid that neither runs nor waits for a respawn takes no order."""
    assert not ChildTable().order(99, StandingOrder(0))


def test_listing_and_exit_report_show_the_order() -> None:
    """List shows each child's order; an Exited says the order the launcher carries out."""
    table = ChildTable()
    web = child(10, on_exit=0)
    table.add(web)
    assert table.listing()[0]["on_exit"] == {"respawn_after_ms": 0}
    table.remove(10)
    exited = table.exited(web, 1, None, respawn_after_ms=table.take_order(web, 10.0)[0])
    assert exited["respawn_after_ms"] == 0
    assert "respawn_after_ms" not in table.exited(web, 1, None)


# ------------------------------------------------------------- requests and respawns
@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[Launcher]:
    launcher = Launcher(tmp_path, [])
    yield launcher
    for pid in list(launcher.children):
        with_reaped(pid)
    for log in launcher.logs.values():
        log.close()
    os.close(launcher.devnull)
    launcher.reactor.sel.close()


def with_reaped(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def spawn(launcher: Launcher, tmp_path: Path, **fields: Any) -> int:
    request = {"type": m.SPAWN, "id": 1, "name": "web/0", "argv": [SLEEP, "60"], "env": {},
               "cwd": str(tmp_path), "log": {"path": str(tmp_path / "web.log")}, **fields}
    reply = launcher.dispatcher.handle_request(request)
    assert reply is not None and reply["type"] == m.SPAWNED, reply
    return int(reply["pid"])


def kill_and_reap(launcher: Launcher, pid: int) -> None:
    """Kill ``pid`` and let the launcher reap it once it is a zombie."""
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline, f"pid {pid} did not die"
        time.sleep(0.001)
    launcher.reap()


@pytest.mark.parametrize("on_exit", [{"respawn_after_ms": -1}, {"respawn_after_ms": "0"},
                                     {"respawn_after_ms": True}, {}, [0],
                                     {"respawn_after_ms": 0, "when": "always"},
                                     {"respawn_after_ms": None},
                                     {"respawn_after_ms": 0, "then": [], "cooldown_ms": 5,
                                      "fresh": [0]},
                                     {"respawn_after_ms": 0, "then": [1], "fresh": [0]},
                                     {"respawn_after_ms": 0, "then": [1], "cooldown_ms": -1,
                                      "fresh": [0]},
                                     {"respawn_after_ms": 0, "then": ["1"], "cooldown_ms": 5,
                                      "fresh": [0]}])
def test_a_bad_order_is_refused_and_starts_nothing(launcher: Launcher, tmp_path: Path,
                                                   on_exit: Any) -> None:
    """A Spawn with a malformed on_exit is BadRequest and starts nothing; an Order with
    one is BadRequest and leaves the child's order as it was."""
    reply = launcher.dispatcher.handle_request(
        {"type": m.SPAWN, "id": 1, "name": "web/0", "argv": [SLEEP, "60"], "env": {},
         "log": {"path": str(tmp_path / "web.log")}, "on_exit": on_exit})
    assert reply is not None and (reply["type"], reply["code"]) == (m.ERROR, m.E_BAD_REQUEST)
    assert "on_exit" in reply["message"] and len(launcher.children) == 0
    pid = spawn(launcher, tmp_path, on_exit={"respawn_after_ms": 5})
    reply = launcher.dispatcher.handle_request({"type": m.ORDER, "id": 2, "pid": pid,
                                                "on_exit": on_exit})
    assert reply is not None and reply["type"] == m.ERROR
    assert launcher.children[pid].on_exit == StandingOrder(5)


def test_order_of_no_such_process(launcher: Launcher) -> None:
    """An Order for a pid the launcher does not run is NoSuchProcess."""
    reply = launcher.dispatcher.handle_request({"type": m.ORDER, "id": 3, "pid": 999_999_999,
                                                "on_exit": None})
    assert reply is not None and reply["code"] == m.E_NO_SUCH_PROCESS


def test_terminate_cancels_the_order_first(launcher: Launcher, tmp_path: Path) -> None:
    """A stopped child is not respawned: Terminate clears its order before it signals."""
    pid = spawn(launcher, tmp_path, on_exit={"respawn_after_ms": 0})
    assert launcher.dispatcher.handle_request({"type": m.TERMINATE, "id": 4, "pid": pid,
                                               "signal": "KILL", "timeout": 5}) is None
    kill_and_reap(launcher, pid)
    assert len(launcher.children) == 0
    [exited] = launcher.children.exits.pending()
    assert exited["type"] == m.EXITED and "respawn_after_ms" not in exited


def test_respawn_at_once_with_no_supervisor(launcher: Launcher, tmp_path: Path) -> None:
    """With on_exit 0, an exit is followed at once by the same spawn: Exited (saying so)
    then Respawned are queued for the next supervisor, List shows the new child, and the
    new child has no order of its own."""
    old = spawn(launcher, tmp_path, on_exit={"respawn_after_ms": 0})
    kill_and_reap(launcher, old)
    [new] = list(launcher.children)
    exited, respawned = launcher.children.exits.pending()
    assert (exited["type"], exited["pid"], exited.get("respawn_after_ms")) == \
        (m.EXITED, old, 0)
    assert respawned == {"type": m.RESPAWNED, "name": "web/0", "old_pid": old, "pid": new,
                         "started_at": launcher.children[new].started_at, "spawns": 2,
                         "cgroup": None, "seq": 2}
    listing = launcher.dispatcher.handle_request({"type": m.LIST, "id": 5})
    assert listing is not None
    assert [(c["name"], c["pid"], c["spawns"], c["on_exit"])
            for c in listing["children"]] == [("web/0", new, 2, None)]
    assert launcher.children[new].argv == [SLEEP, "60"]


def test_delayed_respawn_can_be_cancelled(launcher: Launcher, tmp_path: Path) -> None:
    """A respawn after a delay waits in the loop; an Order for the old pid with null
    cancels it, and nothing is started."""
    old = spawn(launcher, tmp_path, on_exit={"respawn_after_ms": 60_000})
    kill_and_reap(launcher, old)
    assert old in launcher.children.respawns and len(launcher.children) == 0
    reply = launcher.dispatcher.handle_request({"type": m.ORDER, "id": 6, "pid": old,
                                                "on_exit": None})
    assert reply == {"type": m.OK, "id": 6}
    assert not launcher.children.respawns
    reply = launcher.dispatcher.handle_request({"type": m.ORDER, "id": 7, "pid": old,
                                                "on_exit": None})
    assert reply is not None and reply["code"] == m.E_NO_SUCH_PROCESS


def test_delayed_respawn_fires_from_the_loop(launcher: Launcher, tmp_path: Path) -> None:
    """An order shortened while the respawn waits fires at its new time, from the loop."""
    old = spawn(launcher, tmp_path, on_exit={"respawn_after_ms": 60_000})
    kill_and_reap(launcher, old)
    reply = launcher.dispatcher.handle_request({"type": m.ORDER, "id": 8, "pid": old,
                                                "on_exit": {"respawn_after_ms": 1}})
    assert reply == {"type": m.OK, "id": 8}
    deadline = time.monotonic() + 10
    while not launcher.children:
        assert time.monotonic() < deadline, "no respawn"
        launcher.reactor.turn(lambda signum: None)
    assert launcher.children.exits.pending()[-1]["type"] == m.RESPAWNED
    assert not launcher.children.respawns


def test_a_sequence_goes_on_with_the_process_it_starts(launcher: Launcher,
                                                        tmp_path: Path) -> None:
    """A 1.3 order answers for the restarts after the first too: the process a young
    death starts has the rest of ``then``; the last delay stands for the rest."""
    order = {"respawn_after_ms": 0, "then": [0, 7], "cooldown_ms": 60_000, "fresh": [0, 9]}
    first = spawn(launcher, tmp_path, on_exit=order)
    kill_and_reap(launcher, first)
    [second] = list(launcher.children)
    assert launcher.children[second].on_exit == StandingOrder(0, (7,), 60_000, (0, 9))
    kill_and_reap(launcher, second)
    [third] = list(launcher.children)
    assert launcher.children[third].on_exit == StandingOrder(7, (7,), 60_000, (0, 9))
    kill_and_reap(launcher, third)
    assert third in launcher.children.respawns and not launcher.children
    assert launcher.children.respawns[third].then == StandingOrder(7, (7,), 60_000, (0, 9))
    exits = [e for e in launcher.children.exits.pending() if e["type"] == m.EXITED]
    assert [e.get("respawn_after_ms") for e in exits] == [0, 0, 7]
    assert not any(e.get("cooled") for e in exits)


def test_a_sequence_stops_at_null(launcher: Launcher, tmp_path: Path) -> None:
    """Null in a sequence (past max_restarts): that young death is left to the
    supervisor, and nothing is started."""
    first = spawn(launcher, tmp_path, on_exit={"respawn_after_ms": 0, "then": [None],
                                               "cooldown_ms": 60_000, "fresh": [0]})
    kill_and_reap(launcher, first)
    [second] = list(launcher.children)
    kill_and_reap(launcher, second)
    assert not launcher.children and not launcher.children.respawns
    assert "respawn_after_ms" not in launcher.children.exits.pending()[-1]


def test_a_process_past_the_cooldown_restarts_at_once_with_a_fresh_sequence(
        launcher: Launcher, tmp_path: Path) -> None:
    """A child that ran at least ``cooldown_ms`` is restarted at once even where its young
    answer is to wait, its Exited says ``cooled``, and the new child follows ``fresh``."""
    first = spawn(launcher, tmp_path, on_exit={"respawn_after_ms": None, "then": [None],
                                               "cooldown_ms": 0, "fresh": [0, 5]})
    kill_and_reap(launcher, first)
    [second] = list(launcher.children)
    exited = launcher.children.exits.pending()[0]
    assert (exited["pid"], exited["respawn_after_ms"], exited["cooled"]) == (first, 0, True)
    assert launcher.children[second].on_exit == StandingOrder(0, (5,), 0, (0, 5))
