"""Health checks that run nothing: each instance's check answers what the test set."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from corral.health.probes import Result
from corral.spec import HealthSpec
from corral.states import HealthState

OK = Result(HealthState.OK, "ok")


class FakeProbes:
    """A probe function (``Supervisor(probe=...)``) whose answer per instance is set by
    the test: :meth:`answer` ``("web", 0, Result(...))``; ok until then.

    Attributes:
        calls: per ``(service, index)``, how many checks ran.
    """

    def __init__(self) -> None:
        self._answers: dict[tuple[str, int], Result] = {}
        self.calls: dict[tuple[str, int], int] = {}

    def answer(self, service: str, index: int, result: Result) -> None:
        """Every check of instance ``index`` of ``service`` answers ``result`` from now on."""
        self._answers[(service, index)] = result

    async def __call__(self, spec: HealthSpec, env: Mapping[str, str], cwd: str | None,
                       **_: Any) -> Result:
        key = (env["CORRAL_SERVICE"], int(env["CORRAL_INSTANCE"]))
        self.calls[key] = self.calls.get(key, 0) + 1
        return self._answers.get(key, OK)
