"""Watch a directory for changes: inotify on the asyncio loop, a stat-free poll as fallback.

Why a directory and never a file: Kubernetes updates a mounted ConfigMap or Secret by
writing a new hidden directory and renaming a ``..data`` symlink over the old one, and
editors save by writing a new file and renaming it over the old one; a watch on the file
itself would follow the old inode and miss both.  A watch on the directory sees the
rename.  Only the directory's own entries are watched (inotify is not recursive), so a
state directory beside the watched file (logs, sockets) does not wake us.

What the caller gets is "something changed here, look again" (``on_change()``), after the
burst has been quiet for ``settle`` seconds; it re-reads what it cares about and compares,
so a spurious call costs a read.  inotify through ``ctypes`` (glibc's wrappers; no
dependency).  When a watch cannot be set (the directory does not exist yet, inotify is
unavailable or out of watches) or is lost (the directory was removed or replaced),
``on_change()`` is called every :data:`POLL` seconds instead, while the watch is tried again.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path

#: Seconds between looks while no inotify watch holds the directory.
POLL = 2.0

_IN_MODIFY = 0x2
_IN_ATTRIB = 0x4
_IN_CLOSE_WRITE = 0x8
_IN_MOVED_FROM = 0x40
_IN_MOVED_TO = 0x80
_IN_CREATE = 0x100
_IN_DELETE = 0x200
_IN_DELETE_SELF = 0x400
_IN_MOVE_SELF = 0x800
_IN_Q_OVERFLOW = 0x4000
_IN_IGNORED = 0x8000
_IN_ONLYDIR = 0x1000000
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
_MASK = (_IN_MODIFY | _IN_ATTRIB | _IN_CLOSE_WRITE | _IN_MOVED_FROM | _IN_MOVED_TO
         | _IN_CREATE | _IN_DELETE | _IN_DELETE_SELF | _IN_MOVE_SELF | _IN_ONLYDIR)
_LOST = _IN_DELETE_SELF | _IN_MOVE_SELF | _IN_IGNORED
_HEADER = struct.Struct("iIII")


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.inotify_init1  # noqa: B018 (raises AttributeError where there is none)
    except (OSError, AttributeError):
        return None
    return libc


class DirWatch:
    """Calls ``on_change()`` when an entry of ``directory`` may have changed.

    Args:
        directory: the directory to watch (it need not exist yet).
        on_change: called on the event loop, after the changes settled.
        settle: seconds without a new event before ``on_change`` is called.
    """

    def __init__(self, directory: Path, on_change: Callable[[], None],
                 settle: float = 0.1) -> None:
        self.directory = directory
        self._on_change = on_change
        self._settle = settle
        self._loop = asyncio.get_running_loop()
        self._libc = _libc()
        self._fd = -1
        self._watching = False
        self._timer: asyncio.TimerHandle | None = None
        self._poll: asyncio.TimerHandle | None = None
        self._closed = False
        if self._libc is not None:
            fd = self._libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
            if fd >= 0:
                self._fd = fd
                self._loop.add_reader(fd, self._readable)
        if not self._add_watch():
            self._poll = self._loop.call_later(POLL, self._tick)

    @property
    def watching(self) -> bool:
        """True while inotify holds the directory (else it is polled)."""
        return self._watching

    def _add_watch(self) -> bool:
        if self._fd < 0 or self._libc is None:
            return False
        wd = self._libc.inotify_add_watch(self._fd, os.fsencode(self.directory), _MASK)
        self._watching = wd >= 0
        return self._watching

    def _tick(self) -> None:
        """No watch: look again (and try to set the watch) every :data:`POLL` seconds."""
        self._poll = None
        if self._closed:
            return
        if not self._add_watch():
            self._poll = self._loop.call_later(POLL, self._tick)
        self._on_change()

    def _readable(self) -> None:
        lost = False
        while True:
            try:
                data = os.read(self._fd, 64 * 1024)
            except (BlockingIOError, InterruptedError):
                break
            if not data:
                break
            offset = 0
            while offset + _HEADER.size <= len(data):
                _, mask, _, length = _HEADER.unpack_from(data, offset)
                offset += _HEADER.size + length
                lost = lost or bool(mask & _LOST)
        if lost and self._watching:
            self._watching = False  # removed or replaced: poll until it is back
            if self._poll is None:
                self._poll = self._loop.call_later(POLL, self._tick)
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(self._settle, self._changed)

    def _changed(self) -> None:
        self._timer = None
        if not self._closed:
            self._on_change()

    def close(self) -> None:
        """Stop watching (idempotent)."""
        self._closed = True
        for handle in (self._timer, self._poll):
            if handle is not None:
                handle.cancel()
        if self._fd >= 0:
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1


class Rerun:
    """Runs ``work`` when called, one run at a time: calls that come while it runs make
    one more run after it, not one each (a burst of changes is looked at once more).

    ``work`` returns False when no further run makes sense (the supervisor is shutting
    down); calls made meanwhile are then dropped.
    """

    def __init__(self, work: Callable[[], Awaitable[bool | None]]) -> None:
        self._work = work
        self._task: asyncio.Task[None] | None = None
        self._again = False

    def __call__(self) -> None:
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        self._again = True
        while self._again:
            self._again = False
            if await self._work() is False:
                return

    def cancel(self) -> None:
        """Stop the run under way, if any."""
        if self._task is not None:
            self._task.cancel()
