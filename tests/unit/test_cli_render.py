"""Rendering of status tables, durations, notes and event lines (pure functions, no I/O).

The status objects rendered here come from the supervisor's own records
(``Service.as_dict()``, which ``GET /v1/services`` answers), so a change of the data's shape
shows up here and not only in front of a user.
"""

from __future__ import annotations

import argparse
import io
from datetime import datetime
from typing import Any

import pytest

from corral.cli import render
from corral.cli.common import CommandContext
from corral.spec import ProcessSpec
from corral.states import Desired, HealthState, ServiceState
from corral.supervisor.clock import SYSTEM
from corral.supervisor.effects import exit_record
from corral.supervisor.events import EventLog
from corral.supervisor.instance import Service

NOW = datetime.fromisoformat("2026-11-22T00:00:00Z").timestamp()


def _services() -> list[dict[str, Any]]:
    """Two services as the supervisor reports them: ``web`` with one instance up for 3m12s
    and one backing off after an exit (restart due 4 s after NOW), and ``db`` stopped by
    the user with a graceful stop."""
    web = Service(ProcessSpec(name="web", command="serve", instances=2))
    up, crashed = web.new_instance(0), web.new_instance(1)
    up.state, up.pid, up.spawns, up.health = ServiceState.UP, 1234, 1, HealthState.OK
    up.started_at, up.reason = NOW - 192.5, "spawned"
    up.cpu, up.rss = 12.34, 50 * 1024 * 1024  # sampled
    crashed.state, crashed.spawns, crashed.reason = ServiceState.BACKOFF, 2, "exited with code 1"
    crashed.next_restart_at = NOW + 4
    crashed.last_exit = exit_record({"exit_code": 1, "pid": 1235, "at": NOW - 1}, None, SYSTEM)
    web.instances = {0: up, 1: crashed}
    db = Service(ProcessSpec(name="db", command="postgres"), desired=Desired.DOWN)
    stopped = db.new_instance(0)
    stopped.spawns = 1
    stopped.last_exit = exit_record({"signal": 15, "pid": 99, "at": NOW - 60}, "graceful", SYSTEM)
    db.instances = {0: stopped}
    return [web.as_dict(NOW), db.as_dict(NOW)]


SERVICES = _services()


def test_status_table_without_colour() -> None:
    """The table has a header, aligned columns, indented instance rows and no escapes; a
    service shows its least healthy instance's state, and CPU in whole percent and memory
    in binary units."""
    lines = render.service_table(SERVICES, NOW, colour=False)
    assert lines == [
        "NAME   STATE    DESIRED  PID   INST  RESTARTS  HEALTH   CPU  MEM    UPTIME  NOTE",
        "web    backoff  up       1234  1/2   1         ok       12%  50.0M  -       spawned",
        "  [0]  up                1234        0         ok       12%  50.0M  3m12s   spawned",
        "  [1]  backoff           -           1         unknown  -    -      -       restart in 4s: exited with code 1",
        "db     down     down     -     0/1   0         unknown  -    -      -       killed by SIGTERM (graceful stop)",
    ]
    assert not any("\033" in line for line in lines)


def test_status_table_with_colour_keeps_alignment() -> None:
    """With colour on, states are painted and the columns still line up."""
    lines = render.service_table(SERVICES, NOW, colour=True)
    assert "\033[35mbackoff\033[0m  up" in lines[1]
    assert "\033[32mup\033[0m     " in lines[2]
    assert "\033[35mbackoff\033[0m" in lines[3]
    assert "\033[2mdown\033[0m" in lines[4]
    plain = [line.replace("\033[32m", "").replace("\033[35m", "").replace("\033[2m", "")
             .replace("\033[0m", "") for line in lines]
    assert plain == render.service_table(SERVICES, NOW, colour=False)


def test_table_tolerates_missing_fields() -> None:
    """A status object with unknown or missing fields renders dashes, not a KeyError."""
    lines = render.service_table([{"name": "x"}], NOW, colour=False)
    assert lines[1].split() == ["x", "-", "-", "-", "-", "-", "-", "-", "-", "-"]


@pytest.mark.parametrize("seconds, text", [
    (None, "-"), (0.42, "0.4s"), (12.9, "12s"), (192, "3m12s"), (7500, "2h05m"),
    (3 * 86400 + 4 * 3600 + 59, "3d04h"), (-3, "0.0s"),
])
def test_duration(seconds: float | None, text: str) -> None:
    """Durations read like ``3m12s``."""
    assert render.duration(seconds) == text


def _event(service: str, kind: str, reason: str, **fields: Any) -> dict[str, Any]:
    """An event as the supervisor's event log records it, stamped 2026-11-21 23:59:01.123456
    (its own stamp is the clock's)."""
    event = EventLog().emit(service, kind, reason, **fields)
    return {**event, "at": "2026-11-21T23:59:01.123456Z"}


def test_event_line() -> None:
    """An event reads ``date time.ms service[i] kind from->to reason`` in UTC."""
    event = _event("web", "exit", "exited with code 1", instance=0, from_="up", to="backoff",
                   exit_code=1)
    assert render.event_line(event, colour=False) == (
        "2026-11-21 23:59:01.123 web[0] exit up->backoff exited with code 1")
    assert render.event_line(_event("db", "load", ""), colour=False) == \
        "2026-11-21 23:59:01.123 db load"
    assert render.event_line({"at": "2026-11-21T23:59:01.5Z", "service": "db", "kind": "load",
                              "instance": None}, colour=False) == "2026-11-21 23:59:01.5 db load"


def test_supervisor_lines_are_aligned() -> None:
    """``sup status`` lines share one label width."""
    lines = render.supervisor_lines({"launcher_pid": 1, "supervisor_pid": 2, "state_dir": "/s",
                                     "version": "0.1.0", "uptime_s": 5,
                                     "services": {"total": 1, "up": 1}})
    assert lines[0] == "launcher pid    1"
    assert lines[-1] == "services        1 up / 1 total"


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("stream, no_color, term, expected", [
    (io.StringIO(), None, "xterm", False),
    (_Tty(), None, "xterm", True),
    (_Tty(), "1", "xterm", False),
    (_Tty(), "", "xterm", True),
    (_Tty(), None, "dumb", False),
])
def test_colour_only_on_a_terminal_without_no_color(
        monkeypatch: pytest.MonkeyPatch, stream: io.StringIO, no_color: str | None, term: str,
        expected: bool) -> None:
    """Colour is on only for a terminal, with NO_COLOR unset or empty and TERM not dumb."""
    if no_color is None:
        monkeypatch.delenv("NO_COLOR", raising=False)
    else:
        monkeypatch.setenv("NO_COLOR", no_color)
    monkeypatch.setenv("TERM", term)
    assert CommandContext(argparse.Namespace(), stdout=stream).colour is expected


def test_exit_event_shows_the_last_lines() -> None:
    """A human event line for an exit is followed by the process's last output lines."""
    line = render.event_line(_event("web", "exit", "exited with code 1", instance=0,
                                    last_lines=["booting", "config missing"]), colour=False)
    assert line.splitlines() == ["2026-11-21 23:59:01.123 web[0] exit exited with code 1",
                                 "    | booting", "    | config missing"]


def test_note_shows_the_countdown_not_the_reasons_own_delay() -> None:
    """In backoff, the note is the countdown and the exit, not also the delay decided then."""
    svc = {"state": "backoff", "reason": "exited with code 3 after 0.2s; restarting in 8.2s",
           "next_restart_at": "2026-11-22T00:00:05Z", "last_exit": None}
    assert render.note(svc, NOW) == "restart in 5s: exited with code 3 after 0.2s"
    failed_spawn = {**svc, "reason": "cannot start: command not found: x; retrying in 0.4s"}
    assert render.note(failed_spawn, NOW) == "restart in 5s: cannot start: command not found: x"
