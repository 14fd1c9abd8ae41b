"""The launcher's ``CORRAL_*`` environment, read and checked once at start.  STDLIB ONLY.

A value the launcher would only read later (the shutdown bound when it stops, the Hello
timeout when a supervisor starts) is checked here, before anything is started: a bad one
is one line and exit 2 at ``sup run``, never an exception in the middle of a shutdown that
leaves the services running.

| variable | meaning | default |
|---|---|---|
| ``CORRAL_SHUTDOWN_TIMEOUT`` | seconds the supervisor has to stop the services before the launcher stops what is left | 90 |
| ``CORRAL_HELLO_TIMEOUT`` | seconds a new supervisor has to say ``Hello`` | 10 |
| ``CORRAL_SUP_BINARY`` | the supervisor's command line (a path or a shell-quoted command) | this Python's ``corral.supervisor`` |
| ``CORRAL_CGROUP`` | ``off``, ``all`` or unset (only the instances that ask) | unset |
| ``CORRAL_LAUNCHER_SCHED`` | ``batch`` (the launcher runs ``SCHED_BATCH``, see :mod:`.sched`) or ``inherit`` (it keeps the policy it was started with) | ``batch`` |
"""

from __future__ import annotations

import math
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from corral.protocol import messages as m

from .cgroup import ENV_CGROUP

ENV_SHUTDOWN_TIMEOUT = "CORRAL_SHUTDOWN_TIMEOUT"
ENV_SCHED = "CORRAL_LAUNCHER_SCHED"
SHUTDOWN_TIMEOUT = 90.0
CGROUP_CHOICES = ("", "off", "no", "0", "false", "all")


class SettingsError(ValueError):
    """A ``CORRAL_*`` variable the launcher cannot use; the message is the one line."""


@dataclass(frozen=True)
class LauncherSettings:
    """What the launcher's environment says, checked."""

    shutdown_timeout: float = SHUTDOWN_TIMEOUT
    hello_timeout: float = m.HELLO_TIMEOUT
    sup_argv: tuple[str, ...] = ()  # empty: this Python's supervisor
    batch: bool = True  # run SCHED_BATCH (see .sched); False: keep the policy it got

    @classmethod
    def from_environ(cls, env: Mapping[str, str]) -> LauncherSettings:
        """Read ``env``.

        Raises:
            SettingsError: a variable is set to something the launcher cannot use.
        """
        sup = env.get(m.ENV_SUP_BINARY, "").strip()
        try:
            sup_argv = tuple(shlex.split(sup))
        except ValueError as exc:
            raise SettingsError(f"{m.ENV_SUP_BINARY}={sup!r}: {exc} (give a path or a "
                                "shell-quoted command line)") from None
        choice = env.get(ENV_CGROUP, "").strip()
        if choice.lower() not in CGROUP_CHOICES:
            raise SettingsError(f"{ENV_CGROUP}={choice!r}: use off, all, or leave it unset")
        sched = env.get(ENV_SCHED, "").strip()
        if sched.lower() not in ("", "batch", "inherit"):
            raise SettingsError(f"{ENV_SCHED}={sched!r}: use batch or inherit (default batch)")
        return cls(
            shutdown_timeout=_seconds(env, ENV_SHUTDOWN_TIMEOUT, SHUTDOWN_TIMEOUT),
            hello_timeout=_seconds(env, m.ENV_HELLO_TIMEOUT, m.HELLO_TIMEOUT),
            sup_argv=sup_argv, batch=sched.lower() != "inherit")

    def supervisor_base(self) -> list[str]:
        """The supervisor's command before its options."""
        return list(self.sup_argv) or [sys.executable, "-m", "corral.supervisor"]


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise SettingsError(f"{name}={text!r}: give a number of seconds above 0 "
                            f"(default {default:g})")
    return value
