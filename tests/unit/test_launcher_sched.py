"""The launcher's SCHED_BATCH policy: taken only over the default one, handed back before
an upgrade's exec, never the children's (see ``tests/integration/test_spawn.py``)."""

from __future__ import annotations

import os
import subprocess
import sys


def _policy_after_lowering(*prefix: str) -> str:
    code = ("import os; from corral.launcher import sched; "
            "lowered = sched.lower_wakeups(); "
            "print(lowered, os.sched_getscheduler(0) == os.SCHED_BATCH, sched.for_children() "
            "is not None); sched.restore(); print(os.sched_getscheduler(0))")
    return subprocess.run([*prefix, sys.executable, "-c", code], capture_output=True,
                          text=True, check=True).stdout


def test_the_launcher_lowers_the_default_policy_and_restores_it() -> None:
    assert _policy_after_lowering() == f"True True True\n{os.SCHED_OTHER}\n"


def test_a_launcher_started_under_another_policy_keeps_it() -> None:
    """``chrt --idle``: the user chose; nothing is changed, and children inherit it."""
    assert _policy_after_lowering("chrt", "--idle", "0") == f"False False False\n{os.SCHED_IDLE}\n"
