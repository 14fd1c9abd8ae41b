"""Who a process may run as, from the user corral runs as (corral.supervisor.identity).

The tests run as root; a corral that is not root is tested end to end in
tests/integration/test_ops_truth.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from corral.spec import ProcessSpec
from corral.supervisor.identity import identity, identity_problems

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="these cases are root's")


def spec(**fields: object) -> ProcessSpec:
    return ProcessSpec.model_validate({"name": "web", "command": ["run"], **fields})


def test_unknown_users_and_groups_are_problems_at_their_field() -> None:
    problems = identity_problems(3, spec(user="no-such-user-here", group="no-such-group"))
    assert problems == [
        (("processes", 3, "user"), "user 'no-such-user-here' does not exist on this host"),
        (("processes", 3, "group"), "group 'no-such-group' does not exist on this host")]


def test_root_may_run_anyone_with_any_limit_under_the_kernels_ceiling() -> None:
    assert identity_problems(0, spec(user="nobody", group="nogroup",
                                     rlimits={"nofile": 4096, "core": "unlimited"})) == []
    assert identity(spec(user="nobody")) == ("nobody", None)
    ceiling = int(Path("/proc/sys/fs/nr_open").read_text())
    assert identity_problems(0, spec(rlimits={"nofile": ceiling + 1})) == [
        (("processes", 0, "rlimits", "nofile"),
         f"{ceiling + 1} is above the kernel's ceiling fs.nr_open = {ceiling}")]
