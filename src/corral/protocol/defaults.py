"""Defaults that more than one part of corral applies, defined once.  STDLIB ONLY.

The spec fills them in for a field a user leaves out.  The launcher applies the same ones to
a request that leaves the field out, and to a child it finds with no record of how to stop
it; the balancer's port allocator uses the port range when ``CORRAL_PORT_RANGE`` is unset.
They live here because the launcher and the balancer may not import the spec.
"""

from __future__ import annotations

#: How a process is stopped: this signal to its process group, then KILL after the timeout.
STOP_SIGNAL = "TERM"
STOP_TIMEOUT = 8.0

#: A process's log file is rotated at this size, and this many rotated files are kept.
LOG_MAX_BYTES = 10 * 1024 * 1024
LOG_KEEP = 5

#: Where the ports handed to the instances that receive a service come from (inclusive).
PORT_RANGE = (30000, 39999)

#: How long a service's open connections may finish once it stops taking new ones.
DRAIN_TIMEOUT = 30.0
