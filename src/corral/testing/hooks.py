"""Hooks that run nothing (``init``, ``post_run``, ``post_stop``): each run is recorded,
and ends as the test said."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from corral.supervisor.hooks import HookResult


class FakeHooks:
    """A hook runner (``Supervisor(run_hook=...)``): records each run as
    ``(hook, service, index)`` in :attr:`runs`; a hook succeeds unless its name is in
    :attr:`failing`."""

    def __init__(self) -> None:
        self.runs: list[tuple[str, str, int]] = []
        self.failing: set[str] = set()

    async def __call__(self, hook: str, command_line: str, *, env: Mapping[str, str],
                       **_: Any) -> HookResult:
        self.runs.append((hook, env["CORRAL_SERVICE"], int(env["CORRAL_INSTANCE"])))
        if hook in self.failing:
            return HookResult(False, f"hook {hook} exited 1", [])
        return HookResult(True, f"hook {hook} succeeded in 0.00s", [])

    def take(self) -> list[tuple[str, str, int]]:
        """The runs since the last call; forgets them."""
        taken, self.runs = self.runs, []
        return taken
