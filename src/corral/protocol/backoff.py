"""Retry delays that double.  STDLIB ONLY, so the launcher, the balancer, the supervisor,
the cluster client and the CLI wait alike after a failure that may pass.

A service's restarts are not this: they follow its ``restart`` spec, with jitter
(:mod:`corral.supervisor.policy`).  This is for corral's own retries: restarting the
supervisor or the balancer while it dies young, reconnecting to the balancer or to etcd,
resuming a cut stream, accepting again after running out of file descriptors.
"""

from __future__ import annotations


def doubled(delay: float, low: float, high: float) -> float:
    """The wait after one more failure: ``low`` after the first (``delay`` 0, or anything
    below ``low``), then twice the last wait, never more than ``high``."""
    return min(high, max(low, delay * 2))
