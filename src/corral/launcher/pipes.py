"""Spare output pipes, made before a spawn needs them.  STDLIB ONLY.

Every service process gets two pipes (stdout, stderr), each enlarged to 1 MiB with its
read end non-blocking: six system calls, ~40 µs right after the launcher wakes from idle,
which is when a restart makes them.  :class:`SparePipes` makes one spawn's worth at the
end of a loop turn, when nothing waits, so that the next spawn (a crashed service's
restart, most of the time) takes them ready-made.  A spawn finding none makes its own.

Example::

    spares = SparePipes()
    spares.refill()              # at the end of a loop turn
    read_end, write_end = spares.take()
"""

from __future__ import annotations

import os

from .output import enlarge_pipe

#: One spawn's worth (stdout and stderr): a restart storm takes the first ones ready-made
#: and makes the rest itself.
SPARES = 2


class SparePipes:
    """A few pipes ready for a child's output: close-on-exec, 1 MiB, read end non-blocking
    (the write end stays blocking: it becomes the child's stdout or stderr)."""

    def __init__(self) -> None:
        self._ready: list[tuple[int, int]] = []

    def __len__(self) -> int:
        return len(self._ready)

    def take(self) -> tuple[int, int]:
        """``(read end, write end)`` of a spare pipe, or of one made now if none is left.

        Error handling: OSError (EMFILE, ENFILE) when a pipe has to be made and cannot."""
        if self._ready:
            return self._ready.pop()
        return _new_pipe()

    def refill(self) -> None:
        """Make spares up to :data:`SPARES`; quietly fewer when out of descriptors (the
        spawn that needs one then says so)."""
        while len(self._ready) < SPARES:
            try:
                self._ready.append(_new_pipe())
            except OSError:
                return


def _new_pipe() -> tuple[int, int]:
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    enlarge_pipe(read_end)
    os.set_blocking(read_end, False)
    return read_end, write_end
