"""``python -m corral.launcher --state-dir D [supervisor options]``: run the launcher.

Normally started by ``corral sup run``, which execs it so that the launcher is the
foreground process (a systemd unit's main process, or a container's PID 1).  A launcher
upgrading in place execs it again with the same arguments and ``CORRAL_UPGRADE_STATE_FD``
(see :mod:`.upgrade`).

``python -m corral.launcher --check-upgrade`` imports every part of this corral and prints
``{"protocol": ..., "corral": ..., "states": [...]}``: how a launcher checks the installed
code before it upgrades into it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from typing import Any

from corral.protocol import paths

from . import upgrade
from .console import Console
from .pid1 import Launcher
from .settings import LauncherSettings, SettingsError
from .startup import take_lock

# What --check-upgrade imports besides the launcher: the supervisor and the balancer the
# upgraded launcher will start (by name: the launcher itself never imports them).
CHECKED_PARTS = ("corral.daemon", "corral.balancer.control", "corral.balancer.proxy")

# sup run's cluster flags (see corral.cluster.options): passed on to every supervisor as
# given (`sup run` made their file paths absolute).
CLUSTER_FLAGS = ("--cluster", "--cluster-file", "--cluster-ca", "--cluster-cert",
                 "--cluster-key", "--cluster-user", "--cluster-password-file", "--org",
                 "--advertise", "--cluster-ttl", "--member-name")


def log_stdout_default() -> bool:
    """Where a platform collects the main process's stdout: as PID 1 (a container), or
    under systemd (``INVOCATION_ID`` or ``NOTIFY_SOCKET`` set), services' records go there
    too unless ``--no-log-stdout`` says otherwise."""
    return (os.getpid() == 1 or bool(os.environ.get("INVOCATION_ID"))
            or bool(os.environ.get("NOTIFY_SOCKET")))


def check_upgrade() -> int:
    """``--check-upgrade``: import every part, print the version report."""
    for name in CHECKED_PARTS:
        importlib.import_module(name)
    print(json.dumps(upgrade.check_report()))
    return 0


def main(argv: list[str] | None = None) -> int:
    if (sys.argv[1:] if argv is None else argv) == ["--check-upgrade"]:
        return check_upgrade()
    parser = argparse.ArgumentParser(prog="corral-launcher")
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--target", help="target file the supervisor applies at start")
    parser.add_argument("--secrets-file",
                        help="NAME=value file the supervisor stores before the target")
    parser.add_argument("--listen-http", help="also serve the API on this TCP address")
    parser.add_argument("--metrics-public", action="store_true",
                        help="serve /metrics on the TCP address without a token")
    parser.add_argument("--health-public", action="store_true",
                        help="serve /v1/health on the TCP address without a token")
    parser.add_argument("--watch-target", action="store_true",
                        help="re-apply the --target file whenever it changes")
    parser.add_argument("--secrets-dir", help="read (and watch) each file here as a secret")
    for flag in CLUSTER_FLAGS:
        parser.add_argument(flag, help="passed on to the supervisor (see corral sup run -h)")
    parser.add_argument("--log-stdout", action=argparse.BooleanOptionalAction,
                        help="also write every service's records to stdout (default: on as "
                             "PID 1 or under systemd)")
    args = parser.parse_args(argv)
    try:
        settings = LauncherSettings.from_environ(os.environ)
    except SettingsError as exc:
        print(f"corral: {exc}", file=sys.stderr)
        return 2
    # From here on nothing is printed with a blocking or raising write (see .console).
    console = Console()
    console.install()
    state_dir = paths.resolve_state_dir(args.state_dir)
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        paths.logs_dir(state_dir).mkdir(exist_ok=True, mode=0o750)
    except OSError as exc:
        print(f"corral: cannot create state directory {state_dir}: {exc.strerror}",
              file=sys.stderr)
        return 1
    resume: dict[str, Any] | None = None
    os.environ.pop(upgrade.ENV_FALLBACK, None)  # the bootstrap's, not the services'
    state_fd = os.environ.pop(upgrade.ENV_STATE_FD, "")
    if state_fd.isdigit():
        try:
            resume = upgrade.read_state(int(state_fd))
        except (OSError, ValueError) as exc:
            print(f"corral-launcher: cannot read the upgrade's hand-over state ({exc}); "
                  "starting afresh", file=sys.stderr)
    lock = resume["lock_fd"] if resume is not None and resume.get("lock_fd") is not None \
        else take_lock(state_dir)
    sup_args: list[str] = []
    first: list[str] = []
    if args.target:
        first += ["--target", os.path.abspath(args.target)]
    if args.secrets_file:
        first += ["--secrets-file", os.path.abspath(args.secrets_file)]
    if args.listen_http:
        sup_args += ["--listen-http", args.listen_http]
    if args.metrics_public:  # like --listen-http: given to every supervisor, not the first
        sup_args.append("--metrics-public")
    if args.health_public:
        sup_args.append("--health-public")
    if args.watch_target and args.target:  # every supervisor watches, not only the first
        sup_args += ["--watch-target", os.path.abspath(args.target)]
    if args.secrets_dir:
        sup_args += ["--secrets-dir", os.path.abspath(args.secrets_dir)]
    for flag in CLUSTER_FLAGS:
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None:
            sup_args += [flag, value]
    if args.cluster or args.cluster_file:
        # Only the first supervisor refuses to start without etcd; a later one (a restart,
        # an upgrade) must keep the services whatever etcd does.
        first.append("--cluster-probe")
    log_stdout = log_stdout_default() if args.log_stdout is None else args.log_stdout
    launcher = Launcher(state_dir, sup_args, first if resume is None else [], log_stdout,
                        console, settings)
    launcher.lock_fd = lock
    try:
        return launcher.run(resume)
    finally:
        os.close(lock)


if __name__ == "__main__":
    sys.exit(main())
