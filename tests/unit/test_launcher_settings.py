"""The launcher's CORRAL_* variables: parsed once, each bad value one line naming it."""

from __future__ import annotations

import sys

import pytest

from corral.launcher.settings import LauncherSettings, SettingsError


def test_defaults_when_nothing_is_set() -> None:
    settings = LauncherSettings.from_environ({})
    assert settings.shutdown_timeout == 90.0 and settings.hello_timeout == 10.0
    assert settings.supervisor_base() == [sys.executable, "-m", "corral.supervisor"]
    assert settings.batch


def test_values_are_taken() -> None:
    settings = LauncherSettings.from_environ({
        "CORRAL_SHUTDOWN_TIMEOUT": "2.5", "CORRAL_HELLO_TIMEOUT": " 30 ",
        "CORRAL_SUP_BINARY": "/opt/sup --flag 'a b'", "CORRAL_CGROUP": "all",
        "CORRAL_LAUNCHER_SCHED": "inherit"})
    assert settings.shutdown_timeout == 2.5 and settings.hello_timeout == 30.0
    assert not settings.batch
    assert settings.supervisor_base() == ["/opt/sup", "--flag", "a b"]


@pytest.mark.parametrize(("env", "line"), [
    ({"CORRAL_SHUTDOWN_TIMEOUT": "abc"},
     "CORRAL_SHUTDOWN_TIMEOUT='abc': give a number of seconds above 0 (default 90)"),
    ({"CORRAL_SHUTDOWN_TIMEOUT": "-1"},
     "CORRAL_SHUTDOWN_TIMEOUT='-1': give a number of seconds above 0 (default 90)"),
    ({"CORRAL_HELLO_TIMEOUT": "inf"},
     "CORRAL_HELLO_TIMEOUT='inf': give a number of seconds above 0 (default 10)"),
    ({"CORRAL_CGROUP": "sometimes"}, "CORRAL_CGROUP='sometimes': use off, all, or leave it unset"),
    ({"CORRAL_LAUNCHER_SCHED": "fifo"},
     "CORRAL_LAUNCHER_SCHED='fifo': use batch or inherit (default batch)"),
    ({"CORRAL_SUP_BINARY": "/opt/sup 'unclosed"},
     "CORRAL_SUP_BINARY=\"/opt/sup 'unclosed\": No closing quotation (give a path or a "
     "shell-quoted command line)"),
])
def test_a_bad_value_is_one_line_naming_it(env: dict[str, str], line: str) -> None:
    with pytest.raises(SettingsError) as refused:
        LauncherSettings.from_environ(env)
    assert str(refused.value) == line
