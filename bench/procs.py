"""Process-tree helpers read from /proc: trees, PSS, CPU ticks, clean-up."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

SLEEP_EXE = "/usr/bin/sleep"


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode(errors="replace")
    except OSError:
        return None
    # the comm field may hold spaces and parentheses: split after the last ')'
    return raw[raw.rindex(")") + 2 :].split()


def all_pids() -> list[int]:
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def parent_map() -> dict[int, int]:
    """pid -> ppid for every process on the machine."""
    out: dict[int, int] = {}
    for pid in all_pids():
        f = _stat_fields(pid)
        if f is not None:
            out[pid] = int(f[1])
    return out


def tree(roots: Iterable[int]) -> list[int]:
    """The given pids (alive ones) and all their descendants."""
    parents = parent_map()
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    seen: list[int] = []
    stack = [r for r in roots if r in parents]
    while stack:
        pid = stack.pop()
        seen.append(pid)
        stack.extend(children.get(pid, ()))
    return seen


def exe(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [p.decode(errors="replace") for p in f.read().split(b"\0")[:-1]]
    except OSError:
        return []


def is_workload(pid: int) -> bool:
    """True for the benchmark's services (``sleep`` and the log writer)."""
    if exe(pid) == SLEEP_EXE:
        return True
    argv = cmdline(pid)
    return any(a.endswith("bench/writer.py") for a in argv[:3])


def own_processes(roots: Iterable[int]) -> list[int]:
    """A supervisor's own processes: its tree minus the services and their descendants."""
    parents = parent_map()
    out: list[int] = []
    for pid in tree(roots):
        p, workload = pid, False
        while p in parents and p > 1:
            if is_workload(p):
                workload = True
                break
            p = parents[p]
        if not workload:
            out.append(pid)
    return out


def cpu_ns(pid: int) -> int:
    """CPU time of one process's threads, in ns (``schedstat``); 0 if gone.

    Nanoseconds, where ``stat``'s utime + stime come in 10 ms ticks: a 10 s idle window
    at 0.4 % of a core is 4 ticks, too coarse to compare supervisors that idle near 0.
    """
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tids:
        # A thread that ended since the listing has no file (its time is gone with it).
        with (contextlib.suppress(FileNotFoundError, ProcessLookupError),
              open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as f):
            total += int(f.read().split()[0])
    return total


def pss_rss_kib(pid: int) -> tuple[int, int]:
    """(PSS, RSS) in KiB from smaps_rollup; (0, 0) if the process is gone."""
    pss = rss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1])
                elif line.startswith("Rss:"):
                    rss = int(line.split()[1])
    except OSError:
        pass
    return pss, rss


@dataclass
class CpuWindow:
    """CPU used by a set of processes between :meth:`start` and :meth:`percent`.

    CPU time is kept per pid, so a process that appears later counts from zero and
    one that dies simply stops counting (its last interval is lost).
    """

    pids: list[int]
    t0: float = 0.0
    ns0: dict[int, int] = field(default_factory=dict)

    def start(self) -> None:
        self.t0 = time.monotonic()
        self.ns0 = {p: cpu_ns(p) for p in self.pids}

    def percent(self, pids: list[int] | None = None) -> tuple[float, float]:
        """(% of one core, seconds elapsed) since start, over ``pids`` (default: the same)."""
        now = time.monotonic()
        used = sum(max(0, cpu_ns(p) - self.ns0.get(p, 0)) for p in (pids or self.pids))
        elapsed = now - self.t0
        return 100.0 * used / 1e9 / elapsed, elapsed


def kill_tree(roots: Iterable[int], sig: int = signal.SIGKILL) -> None:
    for pid in tree(roots):
        with contextlib.suppress(OSError):
            os.kill(pid, sig)


def pids_matching(pred: object) -> list[int]:
    """Pids whose argv satisfies ``pred(argv)``."""
    assert callable(pred)
    return [pid for pid in all_pids() if pred(cmdline(pid))]


def wait_gone(pids: Iterable[int], timeout: float) -> bool:
    """Wait until none of ``pids`` exists (zombies count as gone)."""
    deadline = time.monotonic() + timeout
    left = list(pids)
    while left:
        left = [p for p in left if _alive(p)]
        if not left:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _alive(pid: int) -> bool:
    f = _stat_fields(pid)
    return f is not None and f[0] != "Z"
