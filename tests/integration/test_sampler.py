"""The /proc tree sampler on real process trees: the kept-open reader agrees with the plain
one, sees CPU time grow, counts descendants, and lets go of processes that ended."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

from corral.monitor import sampler

from .conftest import wait_for

TREE = "import subprocess, sys, time\n" \
       "kids = [subprocess.Popen(['sleep', '60']) for _ in range(2)]\n" \
       "print('ready', flush=True)\n" \
       "end = time.time() + 60\n" \
       "while time.time() < end: pass\n"   # burns CPU: the tree's time must grow


def test_kept_open_sampler_matches_the_plain_one_and_follows_the_tree() -> None:
    proc = subprocess.Popen([sys.executable, "-c", TREE], stdout=subprocess.PIPE)
    tree = sampler.TreeSampler()
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        first = tree.usage(proc.pid)
        plain = sampler.usage(proc.pid)
        assert first is not None and plain is not None
        assert first.processes == plain.processes == 3   # python + two sleeps
        assert abs(first.rss_bytes - plain.rss_bytes) < 8 << 20
        wait_for(lambda: (u := tree.usage(proc.pid)) is not None
                 and u.cpu_seconds > first.cpu_seconds + 0.05, 15, "CPU time to grow")
        tree.end_round()
        assert len(tree._open) == 1
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    assert tree.usage(proc.pid) is None          # ended: reported gone, files closed
    assert tree._open == {}


def test_roots_not_sampled_in_a_round_are_let_go() -> None:
    procs = [subprocess.Popen(["sleep", "60"]) for _ in range(3)]
    tree = sampler.TreeSampler(max_open=2)
    try:
        for p in procs:
            assert tree.usage(p.pid) is not None   # the third is read the plain way
        assert len(tree._open) == 2
        tree.end_round()
        tree.usage(procs[0].pid)
        tree.end_round()
        assert list(tree._open) == [procs[0].pid]
        before = len(os.listdir("/proc/self/fd"))
        tree.close()
        assert len(os.listdir("/proc/self/fd")) == before - 3
    finally:
        for p in procs:
            p.kill()
            p.wait()


@contextlib.contextmanager
def _sampled(code: str) -> Iterator[tuple[subprocess.Popen[bytes], sampler.TreeSampler]]:
    """A Python child running ``code`` (which prints ``ready`` first, read here) and a
    sampler; both gone afterwards."""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    tree = sampler.TreeSampler()
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        yield proc, tree
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        tree.close()


def test_an_idle_process_costs_one_read_until_it_runs_again() -> None:
    """A root that has not run since the last round gets last round's answer (the very
    same object: nothing was re-read); once it runs, or after REFRESH_EVERY rounds, it is
    read afresh."""
    # Sleeps until poked with SIGUSR1, then burns CPU for a moment and sleeps again.
    code = ("import signal, time\n"
            "def burn(*_):\n"
            "    end = time.process_time() + 0.2\n"
            "    while time.process_time() < end: pass\n"
            "    print('burnt', flush=True)\n"
            "signal.signal(signal.SIGUSR1, burn)\n"
            "print('ready', flush=True)\n"
            "while True: signal.pause()\n")
    with _sampled(code) as (proc, tree):

        def settled() -> sampler.Usage | None:
            """A reading handed back unchanged by the next round (the process is asleep:
            after its print it may still run for a moment before it pauses)."""
            before = tree.usage(proc.pid)
            tree.end_round()
            after = tree.usage(proc.pid)
            tree.end_round()
            return after if after is before else None

        first = wait_for(settled, 10, "the process to sleep")
        proc.send_signal(signal.SIGUSR1)
        assert proc.stdout is not None and proc.stdout.readline() == b"burnt\n"
        busy = tree.usage(proc.pid)  # it ran: read afresh
        tree.end_round()
        assert busy is not None and busy is not first
        assert busy.cpu_seconds >= first.cpu_seconds + 0.15
        busy = wait_for(settled, 10, "the process to sleep again")
        # Still asleep: the same reading, until its memory is due for a fresh look.
        same = 0
        while (reading := tree.usage(proc.pid)) is busy:
            tree.end_round()
            same += 1
            assert same <= sampler.TreeSampler.REFRESH_EVERY, "never read afresh"
        # Reused round after round (settled() took the first few of the period).
        assert same >= sampler.TreeSampler.REFRESH_EVERY // 2
        assert reading is not None
        assert reading == busy._replace(rss_bytes=reading.rss_bytes)  # no CPU used


def test_a_busy_thread_behind_a_sleeping_main_thread_is_still_counted() -> None:
    """``schedstat`` is the main thread's alone: a process whose main thread sleeps while
    another thread burns CPU must not be taken for idle."""
    code = ("import threading, time\n"
            "def burn():\n"
            "    while True: pass\n"
            "threading.Thread(target=burn, daemon=True).start()\n"
            "print('ready', flush=True)\n"
            "time.sleep(60)\n")
    with _sampled(code) as (proc, tree):
        main_thread = f"/proc/{proc.pid}/task/{proc.pid}/schedstat"

        def main_asleep() -> bool:
            with open(main_thread) as f:
                before = f.read()
            tree.usage(proc.pid)  # a round in between, so the sampler reads it too
            tree.end_round()
            with open(main_thread) as f:
                return f.read() == before

        wait_for(main_asleep, 10, "the main thread to sleep")
        first = tree.usage(proc.pid)
        tree.end_round()
        assert first is not None
        # The kernel's own count for the whole process (all threads) grows ...
        wait_for(lambda: (u := sampler.usage(proc.pid)) is not None
                 and u.cpu_seconds >= first.cpu_seconds + 0.3, 15,
                 "the worker thread to burn 0.3 s")
        # ... and the very next round shows it, though the main thread never woke.
        now = tree.usage(proc.pid)
        assert now is not None and now.cpu_seconds >= first.cpu_seconds + 0.3
