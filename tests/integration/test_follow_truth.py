"""Followers tell the truth: `logs -f` and `events -f` across supervisor restarts and kills,
and `logs -f` against a writer that rotates its log faster than a follower can look.

A follower runs as a real `corral ... -f` subprocess; a thread collects what it prints.
Every counter line carries its number, so a repeated or lost line is visible; a skipped
stretch must be announced on stderr with its size in bytes.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import PY, Corral, wait_for

# Numbered lines until the file named by argv[1] exists, then END; the pace is the
# service's own (a line a millisecond), not the test's synchronisation.
COUNTER = ("import os, sys, time\n"
           "i = 0\n"
           "while not os.path.exists(sys.argv[1]):\n"
           "    sys.stdout.write(f'n={i:08d}\\n'); sys.stdout.flush(); i += 1; time.sleep(0.001)\n"
           "sys.stdout.write('END\\n'); sys.stdout.flush()\n"
           "time.sleep(3600)\n")

# READY, then (once the file named by argv[2] exists) COUNT lines of one length as fast
# as it can, then END.
FAST = ("import os, sys, time\n"
        "COUNT = int(sys.argv[1])\n"
        "print('READY', flush=True)\n"
        "while not os.path.exists(sys.argv[2]):\n"
        "    time.sleep(0.01)\n"
        "out = sys.stdout\n"
        "for start in range(0, COUNT, 1000):\n"
        "    out.write(''.join(f'n={i:08d} ' + 'x' * 80 + '\\n'\n"
        "                      for i in range(start, min(start + 1000, COUNT))))\n"
        "out.write('END\\n'); out.flush()\n"
        "time.sleep(3600)\n")

SKIPPED = re.compile(r"skipped (\d+) bytes")


class Follower:
    """A `corral ARGS` subprocess whose stdout and stderr lines are collected as they come."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.proc = subprocess.Popen([PY, "-m", "corral", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env)
        self.out: list[str] = []
        self.err: list[str] = []
        self._threads = [threading.Thread(target=self._collect, args=(pipe, into), daemon=True)
                         for pipe, into in ((self.proc.stdout, self.out),
                                            (self.proc.stderr, self.err))]
        for thread in self._threads:
            thread.start()

    @staticmethod
    def _collect(pipe: Iterable[str], into: list[str]) -> None:
        for line in pipe:
            into.append(line.rstrip("\n"))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for thread in self._threads:
            thread.join(15)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()

    def alive(self) -> bool:
        return self.proc.poll() is None


@pytest.fixture
def followers() -> Iterator[Callable[..., Follower]]:
    made: list[Follower] = []

    def make(corral: Corral, *args: str) -> Follower:
        follower = Follower(corral.env, *args)
        made.append(follower)
        return follower
    yield make
    for follower in made:
        follower.stop()


def counted(lines: list[str]) -> list[int]:
    return [int(m.group(1)) for line in lines if (m := re.search(r" n=(\d{8})", line))]


def new_supervisor(corral: Corral, old: int) -> None:
    wait_for(lambda: corral.answers() and corral.sup_status()["supervisor_pid"] != old, 30,
             "a new supervisor")


def cut(corral: Corral, how: str) -> None:
    """End the supervisor: `sup restart`, or kill -9 (the launcher starts a new one)."""
    old = corral.sup_status()["supervisor_pid"]
    if how == "restart":
        corral.ok("sup", "restart")
    else:
        os.kill(old, signal.SIGKILL)
    new_supervisor(corral, old)


@pytest.mark.parametrize("how", ["restart", "kill"])
def test_logs_follow_continues_across_the_supervisor(corral: Corral, tmp_path: Path,
                                                     followers: Callable[..., Follower],
                                                     how: str) -> None:
    """1. a counter prints a numbered line a millisecond; `logs -f` follows it from line 0;
    2. the supervisor is restarted (`sup restart`) or killed (-9), twice;
    3. the follower keeps running, says nothing on stderr, and after the counter's END
       has printed every number exactly once, in order."""
    stop = tmp_path / "stop"
    corral.ok("svc", "load", "counter", "--", PY, "-u", "-c", COUNTER, str(stop))
    follower = followers(corral, "logs", "counter", "-f", "-n", "100000")
    for _ in range(2):
        wait_for(lambda: len(counted(follower.out)) > 200, 30, "the follower to print lines")
        cut(corral, how)
        printed = len(counted(follower.out))
        wait_for(lambda p=printed: not follower.alive() or len(counted(follower.out)) > p + 200,
                 30, "lines printed after the new supervisor started")
        assert follower.alive(), follower.err
    stop.touch()
    wait_for(lambda: follower.out and follower.out[-1].endswith(" END"), 30, "END")
    seen = counted(follower.out)
    assert seen == list(range(len(seen))), "a line missing or repeated"
    assert follower.alive() and follower.err == []


def test_logs_follow_keeps_up_with_fast_rotation_or_says_what_it_skipped(
        corral: Corral, tmp_path: Path, followers: Callable[..., Follower]) -> None:
    """1. a writer prints 200,000 numbered lines of one length as fast as it can, into a
    log of `max_bytes: 1MiB, keep: 2`, once `logs -f` follows it;
    2. after END, no number was printed twice, numbers only go up, and the lines missing
    are exactly what the follower announced on stderr as skipped bytes."""
    count = 200_000
    go = tmp_path / "go"
    script = tmp_path / "fast.py"
    script.write_text(FAST)
    spec = tmp_path / "fast.yaml"
    spec.write_text(f"name: fast\ncommand: [{PY}, {script}, '{count}', {go}]\n"
                    "logs: {max_bytes: 1MiB, keep: 2}\n")
    corral.ok("svc", "load", "-f", str(spec))
    wait_for(lambda: corral.log_lines("fast")[-1:] and
             corral.log_lines("fast")[-1].endswith(" READY"), 15, "READY in the log")
    follower = followers(corral, "logs", "fast", "-f", "-n", "1")
    wait_for(lambda: follower.out, 15, "the follower to print READY")
    go.touch()
    wait_for(lambda: follower.out and follower.out[-1].endswith(" END"), 120, "END")
    seen = counted(follower.out)
    assert len(seen) == len(set(seen)), "a line printed twice"
    assert seen == sorted(seen), "lines out of order"
    notes = [line for line in follower.err if SKIPPED.search(line)]
    assert notes == follower.err, "stderr holds something other than skip notes"
    skipped = sum(int(m.group(1)) for line in notes if (m := SKIPPED.search(line)))
    line_bytes = len(follower.out[-2]) + 1
    assert skipped == (count - len(seen)) * line_bytes, (skipped, count - len(seen))
    assert follower.alive()


def events_printed(follower: Follower) -> list[dict[str, Any]]:
    return [json.loads(line) for line in follower.out if line.startswith("{")]


def test_events_follow_without_n_prints_no_history(corral: Corral,
                                                   followers: Callable[..., Follower]) -> None:
    """`events -f` prints only events that happen after it starts; `-n 3` adds three."""
    corral.ok("svc", "load", "steady", "--", "sleep", "1000")
    corral.ok("svc", "restart", "steady")
    before = json.loads(corral.ok("events", "--json", "-n", "1").splitlines()[-1])["seq"]
    follower = followers(corral, "events", "-f", "--json")
    # Until the follower is subscribed, a restart's events may come before it: repeat.
    wait_for(lambda: corral.ok("svc", "restart", "steady") is not None
             and events_printed(follower), 30, "a new event")
    assert all(e["seq"] > before for e in events_printed(follower))
    with_history = followers(corral, "events", "-f", "--json", "-n", "3")
    wait_for(lambda: len(events_printed(with_history)) >= 3, 15, "three past events")


@pytest.mark.parametrize("how", ["restart", "kill"])
def test_events_follow_continues_across_the_supervisor(corral: Corral,
                                                       followers: Callable[..., Follower],
                                                       how: str) -> None:
    """1. `events -f` follows while a service is restarted;
    2. the supervisor is restarted or killed;
    3. the follower keeps running, repeats no event, and prints every event the new
       supervisor recorded (its own history, fetched at the end), in order; after a
       clean restart it has nothing to warn about (after a kill it may say that events
       the killed supervisor recorded could be missing)."""
    corral.ok("svc", "load", "steady", "--", "sleep", "1000")
    follower = followers(corral, "events", "-f", "--json")
    wait_for(lambda: corral.ok("svc", "restart", "steady") is not None
             and events_printed(follower), 30, "the follower to print events")
    cut(corral, how)
    corral.ok("svc", "restart", "steady")
    corral.ok("svc", "load", "marker", "--", "sleep", "1000")
    wait_for(lambda: not follower.alive()
             or any(e["service"] == "marker" for e in events_printed(follower)), 30,
             "the marker's events")
    assert follower.alive(), follower.err
    corral.ok("svc", "stop", "marker")
    last = json.loads(corral.ok("events", "--json", "-n", "1").splitlines()[-1])["seq"]
    wait_for(lambda: any(e["seq"] == last for e in events_printed(follower)), 30,
             "the last event to be printed")
    printed = events_printed(follower)
    seqs = [e["seq"] for e in printed]
    assert seqs == sorted(set(seqs)), "an event repeated or out of order"
    history = [json.loads(line) for line in corral.ok("events", "--json", "-n", "2000")
               .splitlines()]
    # Everything the new supervisor recorded up to the last printed event was printed.
    expected = [e["seq"] for e in history if e["seq"] <= seqs[-1]]
    assert [s for s in seqs if s >= expected[0]] == expected
    assert follower.alive() and "cut short" not in "\n".join(follower.err)
    if how == "restart":
        assert follower.err == []


@pytest.mark.parametrize("what", [("logs", "steady", "-f"), ("events", "-f")])
def test_a_follower_ends_when_corral_stops(corral: Corral, followers: Callable[..., Follower],
                                           what: tuple[str, ...]) -> None:
    """`sup stop` while `logs -f` / `events -f` follow: once corral has stopped, the
    follower ends with exit 0 and one line saying so (it used to retry for 30 s and then
    fail, as if the supervisor had crashed); the service's last words are printed first."""
    corral.ok("svc", "load", "steady", "--", "sh", "-c",
              "trap 'echo bye; exit 0' TERM; echo hello; while :; do sleep 0.1; done")
    wait_for(lambda: "hello" in corral.ok("logs", "steady"), what="the service's first line")
    follower = followers(corral, *what)
    wait_for(lambda: follower.out, 15, "the follower's first output")
    assert corral.ok("sup", "stop").strip() == "stopped"
    wait_for(lambda: not follower.alive(), 20, "the follower to end")
    assert follower.proc.returncode == 0, follower.err
    follower.stop()
    assert follower.err == [f"corral on {corral.state_dir} stopped; the stream ends here"]
    if what[0] == "logs":
        assert any(line.endswith("bye") for line in follower.out), follower.out
