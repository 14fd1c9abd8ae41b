"""How an exec check's exit status reads (corral.health.probes.exec_state)."""

from __future__ import annotations

import pytest

from corral.health.probes import exec_state
from corral.states import HealthState as H


@pytest.mark.parametrize(("code", "state"), [(0, H.OK), (1, H.CRITICAL), (2, H.CRITICAL),
                                             (3, H.CRITICAL), (127, H.CRITICAL),
                                             (-1, H.CRITICAL)])
def test_standard_codes_fail_on_anything_but_zero(code: int, state: H) -> None:
    """By default a command is read as systemd, Docker and Kubernetes read it."""
    assert exec_state(code, "standard") is state


@pytest.mark.parametrize(("code", "state"), [(0, H.OK), (1, H.WARNING), (2, H.CRITICAL),
                                             (3, H.UNKNOWN), (4, H.UNKNOWN),
                                             (-1, H.UNKNOWN)])
def test_habitat_codes(code: int, state: H) -> None:
    """`exec_codes: habitat`: 1 warning, 2 critical, anything else unknown."""
    assert exec_state(code, "habitat") is state
