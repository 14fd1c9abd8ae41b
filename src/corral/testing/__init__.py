"""Fakes for testing corral's supervisor core without processes or sockets.

- :class:`FakeClock` and :class:`FakeLoop`: time that moves only when the test says so,
  for the supervisor's clock and for the event loop's timers.
- :class:`FakeLauncher`: answers Spawn, Terminate, Signal and List as the launcher does,
  records every request, and reports an ``Exited`` when the test kills a child.
- :class:`FakeProbes` (health checks), :class:`FakeHooks` (``init``, ``post_run``,
  ``post_stop``) and :class:`FakeSampler` (CPU and memory readings): answers the test
  sets.
- :class:`Harness`: the real :class:`corral.supervisor.loop.Supervisor` built on all of
  them.
"""

from __future__ import annotations

from .clock import FakeClock, FakeLoop
from .harness import Harness
from .health import FakeProbes
from .hooks import FakeHooks
from .launcher import FakeLauncher
from .sampler import FakeSampler

__all__ = ["FakeClock", "FakeHooks", "FakeLauncher", "FakeLoop", "FakeProbes", "FakeSampler", "Harness"]
