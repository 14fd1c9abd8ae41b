"""A process-tree sampler that reads no ``/proc``: each pid's usage is what the test set."""

from __future__ import annotations

from corral.monitor.sampler import TreeSampler, Usage


class FakeSampler(TreeSampler):
    """``usage(pid)`` is :attr:`readings` ``[pid]`` (None, as for a gone process, when
    unset)."""

    def __init__(self) -> None:
        super().__init__(max_open=0)
        self.readings: dict[int, Usage] = {}

    def usage(self, root: int) -> Usage | None:
        return self.readings.get(root)

    def end_round(self) -> None:
        """Nothing is kept open."""

    def forget(self, root: int) -> None:
        """Nothing is kept open (the test's readings stay)."""

    def close(self) -> None:
        """Nothing is kept open."""
