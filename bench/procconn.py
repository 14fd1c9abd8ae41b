"""Kernel proc connector listener: exec/exit events with kernel timestamps.

The netlink proc connector (``AF_NETLINK``, ``NETLINK_CONNECTOR`` = 11, group
``CN_IDX_PROC`` = 1) multicasts one message per fork/exec/exit in the whole system,
stamped by the kernel with ``CLOCK_MONOTONIC`` nanoseconds (the same clock as
:func:`time.monotonic_ns`). Needs root (``CAP_NET_ADMIN``).

This is how the benchmark detects new children: by event, never by polling ``ps``.
A reader thread drains the socket as fast as it can, reads ``/proc/<pid>/cmdline``
of every exec'd process at once (so that short-lived children are still named)
and hands :class:`ProcEvent` objects to the subscribers whose filter accepts them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import queue
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

NETLINK_CONNECTOR = 11
CN_IDX_PROC = 1
CN_VAL_PROC = 1
PROC_CN_MCAST_LISTEN = 1
PROC_CN_MCAST_IGNORE = 2

PROC_EVENT_FORK = 0x00000001
PROC_EVENT_EXEC = 0x00000002
PROC_EVENT_EXIT = 0x80000000

_NLMSG_HDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_CN_MSG = struct.Struct("=IIIIHH")  # idx, val, seq, ack, len, flags
_EV_HDR = struct.Struct("=IIQ")  # what, cpu, timestamp_ns
_EV_OFFSET = _NLMSG_HDR.size + _CN_MSG.size
_NLMSG_DONE = 3
_RCVBUF = 32 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ProcEvent:
    """One process event. ``argv`` is read from /proc at exec time (empty if gone)."""

    kind: str  # "exec" | "exit" | "fork" (pid = the child)
    pid: int
    ts_ns: int
    argv: tuple[str, ...] = ()
    exit_code: int = 0  # raw wait status for "exit"
    ppid: int = 0  # parent for "fork"


EventFilter = Callable[[ProcEvent], bool]


class Subscription:
    """A queue of the events that one filter accepted."""

    def __init__(self, owner: ProcListener, accept: EventFilter) -> None:
        self._owner = owner
        self.accept = accept
        self.events: queue.SimpleQueue[ProcEvent] = queue.SimpleQueue()

    def get(self, timeout: float | None) -> ProcEvent | None:
        """Next event, or None after ``timeout`` seconds."""
        try:
            return self.events.get(timeout=timeout)
        except queue.Empty:
            return None

    def drain(self) -> list[ProcEvent]:
        """Every event already queued, without waiting."""
        out: list[ProcEvent] = []
        while True:
            try:
                out.append(self.events.get_nowait())
            except queue.Empty:
                return out

    def close(self) -> None:
        self._owner.unsubscribe(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_argv(pid: int) -> tuple[str, ...]:
    """``/proc/<pid>/cmdline`` as a tuple, or () when the process is gone."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return ()
    return tuple(p.decode(errors="replace") for p in raw.split(b"\0")[:-1])


class ProcListener:
    """Background reader of the proc connector; use as a context manager."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
        with contextlib.suppress(OSError):
            self._sock.setsockopt(socket.SOL_SOCKET, 33, _RCVBUF)  # SO_RCVBUFFORCE
        self._sock.bind((0, CN_IDX_PROC))
        self._subs: list[Subscription] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.overflows = 0
        self.events_seen = 0
        self._thread = threading.Thread(target=self._run, name="procconn", daemon=True)

    def __enter__(self) -> ProcListener:
        self._control(PROC_CN_MCAST_LISTEN)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        with contextlib.suppress(OSError):
            self._control(PROC_CN_MCAST_IGNORE)
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=2)
        self._sock.close()

    def subscribe(self, accept: EventFilter) -> Subscription:
        sub = Subscription(self, accept)
        with self._lock:
            self._subs = [*self._subs, sub]
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            self._subs = [s for s in self._subs if s is not sub]

    def _control(self, op: int) -> None:
        payload = struct.pack("=I", op)
        cn = _CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, 0, 0, len(payload), 0) + payload
        hdr = _NLMSG_HDR.pack(_NLMSG_HDR.size + len(cn), _NLMSG_DONE, 0, 0, os.getpid())
        self._sock.send(hdr + cn)

    def _run(self) -> None:
        self._sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    self.overflows += 1
                    continue
                if self._stop.is_set():
                    return
                raise
            for ev in self._parse(data):
                self.events_seen += 1
                for sub in self._subs:
                    if sub.accept(ev):
                        sub.events.put(ev)

    @staticmethod
    def _parse(data: bytes) -> Iterator[ProcEvent]:
        off = 0
        while off + _EV_OFFSET + _EV_HDR.size <= len(data):
            length = _NLMSG_HDR.unpack_from(data, off)[0]
            what, _cpu, ts = _EV_HDR.unpack_from(data, off + _EV_OFFSET)
            body = off + _EV_OFFSET + _EV_HDR.size
            if what == PROC_EVENT_FORK:
                _ppid, ptgid, cpid, ctgid = struct.unpack_from("=iiii", data, body)
                if cpid == ctgid:
                    yield ProcEvent("fork", ctgid, ts, ppid=ptgid)
            elif what == PROC_EVENT_EXEC:
                pid, tgid = struct.unpack_from("=ii", data, body)
                if pid == tgid:
                    yield ProcEvent("exec", tgid, ts, read_argv(tgid))
            elif what == PROC_EVENT_EXIT:
                pid, tgid, code, _sig = struct.unpack_from("=iiII", data, body)
                if pid == tgid:
                    yield ProcEvent("exit", tgid, ts, (), code)
            if length <= 0:
                break
            off += (length + 3) & ~3


def wait_for(
    sub: Subscription, accept: EventFilter, deadline: float
) -> ProcEvent | None:
    """First event of ``sub`` that ``accept`` takes, before ``time.monotonic()`` reaches deadline."""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        ev = sub.get(left)
        if ev is not None and accept(ev):
            return ev
