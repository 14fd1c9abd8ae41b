"""What machine the numbers come from."""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import sys
import time


def machine() -> dict[str, str]:
    mem_kib = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    try:
        with open("/etc/debian_version") as f:
            debian = f.read().strip()
    except OSError:
        debian = "?"
    load = os.getloadavg()
    return {
        "date (UTC)": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "nproc": str(os.cpu_count()),
        "cpu": model or "?",
        "memory": f"{mem_kib / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(),
        "os": f"Debian {debian}",
        "python": f"{platform.python_version()} ({sys.executable})",
        "load average at start": " ".join(f"{x:.2f}" for x in load),
        "pid_max": _read("/proc/sys/kernel/pid_max"),
        "RLIMIT_NOFILE (soft/hard)": "/".join(map(str, resource.getrlimit(resource.RLIMIT_NOFILE))),
        "git": _git(),
    }


def load_now() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return "?"


def _git() -> str:
    r = subprocess.run(["git", "log", "-1", "--format=%h %s"], capture_output=True, text=True,
                       check=False)
    return r.stdout.strip() or "?"
