"""``corral sup run | status | restart | upgrade | stop | rotate-token``: the supervisor itself.

``sup run`` resolves the state directory and *execs* ``python -m corral.launcher`` (it imports
nothing of the launcher); the others talk to ``/v1/status`` and ``/v1/supervisor/*``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time

from corral.cli.common import CommandContext, add_parser
from corral.cli.errors import EXIT_OK, CliError, UsageError
from corral.cli.render import supervisor_lines

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing slows every command's start
if TYPE_CHECKING:
    from typing import Any

    from corral.cluster.options import ClusterOptions

STOP_WAIT = 120.0
UPGRADE_WAIT = 60.0
_POLL = 0.1


def register(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``sup`` and its sub-commands."""
    sup = add_parser(subparsers, "sup", "run and control the supervisor",
                     "Run the launcher and supervisor, or ask the running one for its status,\n"
                     "to restart (services keep running) or to stop (services stop too).",
                     """
  corral sup run --state-dir /srv/corral
  corral sup status
  corral sup restart
  corral sup upgrade
  corral sup stop --timeout 300
  corral sup rotate-token""", parents)
    verbs = sup.add_subparsers(dest="sup_verb", metavar="SUBCOMMAND", required=True)

    p = add_parser(verbs, "run", "run a launcher and supervisor in the foreground",
                   "Resolve the state directory, then replace this process with the launcher\n"
                   "(python -m corral.launcher), which starts the supervisor and keeps it\n"
                   "running. Use it as a systemd ExecStart= or a container ENTRYPOINT.\n"
                   "Under systemd (NOTIFY_SOCKET set) it reports READY=1 once services were\n"
                   "started, a one-line STATUS=, STOPPING=1 and WATCHDOG=1 pings.\n"
                   "--target is checked as `target set` checks it (secrets, resources,\n"
                   "users, addresses): any problem is printed and nothing starts (exit 86).\n"
                   "Once up, one line on stderr says what started and where the API is.",
                   """
  corral sup run
  corral sup run --state-dir /srv/corral --target /etc/corral/target.yaml
  corral sup run --target target.yaml --secrets-file secrets.env
  corral sup run --override-name staging --listen-http 0.0.0.0:9631
  corral sup run --target /etc/corral/target/target.yaml --watch-target \\
                 --secrets-dir /etc/corral/secrets \\
                 --listen-http 0.0.0.0:9631 --health-public     # a Kubernetes pod
  corral sup run --log-stdout          # services' output on stdout too: web[0] O hello""",
                   parents)
    p.add_argument("--listen-http", metavar="ADDR",
                   help="also serve the API on TCP ADDR (host:port), with TLS and a token")
    p.add_argument("--metrics-public", action="store_true",
                   help="let GET /metrics through the --listen-http address without a token")
    p.add_argument("--health-public", action="store_true",
                   help="let GET /v1/health (and /v1/health/live) through the --listen-http "
                        "address without a token (for load balancers and kubelet probes)")
    p.add_argument("--target", metavar="FILE", help="desired state to apply at start")
    p.add_argument("--log-stdout", action=argparse.BooleanOptionalAction,
                   help="also write every service's output to stdout, one line a record "
                        "prefixed 'service[instance] O|E', for docker logs, kubectl logs "
                        "and journalctl (default: on as PID 1 or under systemd, where "
                        "INVOCATION_ID or NOTIFY_SOCKET is set; a process's "
                        "logs.stdout overrides it); records nobody reads are dropped and "
                        "counted, never waited for")
    p.add_argument("--watch-target", action="store_true",
                   help="re-apply the --target file whenever it changes (a Kubernetes "
                        "ConfigMap, a mounted volume); a bad file is refused in an event "
                        "and running services keep running")
    p.add_argument("--secrets-dir", metavar="DIR",
                   help="read each file in DIR as a secret (name = file name) and watch it: "
                        "a changed file rolls out like `corral secret set` (a Kubernetes "
                        "Secret mounted as files)")
    p.add_argument("--secrets-file", metavar="ENV_FILE",
                   help="store the secrets in ENV_FILE (NAME=value lines; # comments and "
                        "blank lines allowed) before the target is checked")
    c = p.add_argument_group(
        "service groups across hosts",
        "Join an etcd cluster: each loaded process registers as a member of its service\n"
        "group (<process>.<cluster group>), shown by `corral census` on every host.\n"
        "Without --cluster the groups are this host's only. The etcd password comes\n"
        "from $CORRAL_CLUSTER_PASSWORD or --cluster-password-file. E.g.:\n"
        "  corral sup run --cluster http://10.0.0.1:2379,http://10.0.0.2:2379 "
        "--advertise 10.0.0.5\n"
        "  corral sup run --cluster-file /etc/corral/etcd-endpoints --cluster-ca ca.pem \\\n"
        "                 --cluster-user corral --cluster-password-file /run/secrets/etcd")
    c.add_argument("--cluster", metavar="URL[,URL...]",
                   help="etcd endpoints (http(s)://host:port; host:port gets http, or https "
                        "with --cluster-ca/--cluster-cert)")
    c.add_argument("--cluster-file", metavar="PATH",
                   help="read the etcd endpoints from PATH (one or more a line, # comments); "
                        "re-read when it changes (a mounted ConfigMap)")
    c.add_argument("--cluster-ca", metavar="PEM", help="CA of the etcd servers' certificates")
    c.add_argument("--cluster-cert", metavar="PEM", help="client certificate for etcd")
    c.add_argument("--cluster-key", metavar="PEM", help="the client certificate's key")
    c.add_argument("--cluster-user", metavar="USER",
                   help="etcd user (password: $CORRAL_CLUSTER_PASSWORD or "
                        "--cluster-password-file)")
    c.add_argument("--cluster-password-file", metavar="FILE",
                   help="read the etcd user's password from FILE")
    c.add_argument("--org", metavar="NAME",
                   help="the organisation: the keyspace /corral/NAME/ (default: default)")
    c.add_argument("--advertise", metavar="ADDR",
                   help="the address other hosts reach this one at (default: the address "
                        "of the default route's interface)")
    c.add_argument("--cluster-ttl", metavar="SECONDS",
                   help="lease TTL: how soon a dead host leaves the census (default: 5)")
    c.add_argument("--member-name", metavar="NAME",
                   help="this supervisor's member name (default: <host>-<state name>)")
    p.set_defaults(handler=cmd_run)

    p = add_parser(verbs, "status", "show the supervisor's status",
                   "Show the launcher and supervisor pids, the state directory, the uptime\n"
                   "and how many services are up.",
                   """
  corral sup status
  corral sup status --json | jq .supervisor_pid""", parents)
    p.add_argument("--json", action="store_true", help="print the API's JSON object")
    p.set_defaults(handler=cmd_status)

    p = add_parser(verbs, "restart", "restart the supervisor (services keep running)",
                   "Ask the launcher to start a new supervisor, which reattaches to the running\n"
                   "services without restarting them. This is how an upgrade takes effect.",
                   """
  pip install -U corral && corral sup restart""", parents)
    p.set_defaults(handler=cmd_restart)

    p = add_parser(verbs, "upgrade", "upgrade launcher, supervisor and balancer in place",
                   "After installing a new corral: the launcher checks the installed code\n"
                   "(python -m corral.launcher --check-upgrade), then re-executes itself with\n"
                   "it, keeping its pid, every service (same pids, no line of output lost),\n"
                   "their log files and held sockets; a supervisor of the new code starts and\n"
                   "reattaches, and hands the balancer's listening sockets to a new balancer,\n"
                   "so no connection is refused. Installed code that fails its check or\n"
                   "speaks another launcher protocol major version is refused in one line\n"
                   "and nothing changes. Waits until every part runs the installed release.",
                   """
  pip install -U corral && corral sup upgrade
  corral sup upgrade --json | jq .versions
  corral sup upgrade --timeout 300""", parents)
    p.add_argument("--timeout", type=float, default=UPGRADE_WAIT, metavar="SECONDS",
                   help=f"how long to wait for every part to run the installed release "
                        f"(default {UPGRADE_WAIT:g})")
    p.add_argument("--json", action="store_true",
                   help="print the status after the upgrade, with 'upgraded': {from, to}")
    p.set_defaults(handler=cmd_upgrade)

    p = add_parser(verbs, "stop", "stop every service, the supervisor and the launcher",
                   "Stop the services (in reverse load order, each within its stop timeout),\n"
                   "then the supervisor and the launcher. Waits until the API stops answering.",
                   """
  corral sup stop
  corral sup stop --no-wait
  corral sup stop --timeout 300""", parents)
    p.add_argument("--no-wait", action="store_true", help="return once the stop is accepted")
    p.add_argument("--timeout", type=float, default=STOP_WAIT, metavar="SECONDS",
                   help=f"how long to wait for the stop (default {STOP_WAIT:g})")
    p.set_defaults(handler=cmd_stop)

    p = add_parser(verbs, "rotate-token", "replace the remote API token",
                   "Replace the token of the --listen-http listener: the old one stops working\n"
                   "at once, the new one works at once (no restart). Prints the new client auth\n"
                   "file (as corral print-auth does) for every client to save. Run through\n"
                   "--remote NAME, it also rewrites that client's auth file.",
                   """
  corral sup rotate-token --name web1 > web1.yaml
  corral --remote web1 sup rotate-token""", parents)
    p.add_argument("--name", metavar="NAME",
                   help="the remote's name on the client (default: the host's name)")
    p.add_argument("--host", metavar="HOST[:PORT]", help="the address clients dial")
    p.add_argument("--json", action="store_true", help="print the API's JSON object")
    p.set_defaults(handler=cmd_rotate_token)


def launcher_argv(args: argparse.Namespace, ctx: CommandContext) -> list[str]:
    """The launcher's command line for ``sup run`` (``--state-dir`` always resolved)."""
    argv = [sys.executable, "-m", "corral.launcher", "--state-dir", str(ctx.state_dir)]
    if args.target:
        argv += ["--target", args.target]
    if args.secrets_file:
        argv += ["--secrets-file", args.secrets_file]
    if args.listen_http:
        argv += ["--listen-http", args.listen_http]
    if args.metrics_public:
        argv.append("--metrics-public")
    if args.health_public:
        argv.append("--health-public")
    if args.watch_target:
        argv.append("--watch-target")
    if args.secrets_dir:
        argv += ["--secrets-dir", args.secrets_dir]
    if args.log_stdout is not None:
        argv.append("--log-stdout" if args.log_stdout else "--no-log-stdout")
    return argv + cluster_options(args).argv()


def cluster_options(args: argparse.Namespace) -> ClusterOptions:
    """The cluster flags as :class:`corral.cluster.ClusterOptions`."""
    from corral.cluster.options import FLAGS, ClusterOptions
    return ClusterOptions(**{attr: getattr(args, flag[2:].replace("-", "_"))
                             for flag, attr in FLAGS})


def check_cluster(args: argparse.Namespace, ctx: CommandContext) -> None:
    """Raise :class:`CliError` (one line) for cluster flags that cannot be used, or an etcd
    that cannot be reached with them (no endpoint answers, credentials or TLS refused)."""
    import asyncio

    from corral.errors import CorralError
    options = cluster_options(args)
    try:
        options.check(os.environ)
        if not options.joins:
            return
        backend = options.backend(ctx.state_dir, os.environ)

        async def probe() -> None:
            try:
                await backend.probe()
            finally:
                await backend.close()
        asyncio.run(probe())
    except CorralError as exc:
        raise CliError(f"cannot join the cluster: {exc.message.splitlines()[0]}") from None


def check_target(path: str) -> None:
    """Raise :class:`CliError` naming every problem of the target file at ``path``."""
    from corral.errors import SpecError  # only `sup run --target` pays for pydantic
    from corral.spec.loading import load_target
    try:
        with open(path) as f:
            text = f.read()
    except OSError as exc:
        raise CliError(f"cannot read target {path}: {exc.strerror}") from None
    try:
        load_target(text, path)
    except SpecError as exc:
        raise CliError(exc.message.splitlines()[0], exc.problems) from None


def check_secrets_dir(path: str) -> None:
    """Raise :class:`CliError` if the ``--secrets-dir`` cannot be listed."""
    try:
        os.listdir(path)
    except OSError as exc:
        raise CliError(f"cannot read secrets directory {path}: "
                       f"{exc.strerror or exc}") from None
def check_secrets_file(path: str) -> None:
    """Raise :class:`CliError` for an unreadable ``--secrets-file`` or its first bad line."""
    from corral.errors import SpecError
    from corral.store.secrets import parse_env_file
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise CliError(f"cannot read secrets file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise CliError(f"cannot read secrets file {path}: it is not UTF-8 text") from None
    try:
        parse_env_file(text, path)
    except SpecError as exc:
        raise CliError(exc.message) from None


def cmd_run(args: argparse.Namespace, ctx: CommandContext) -> int:
    """Exec the launcher; never returns (raises :class:`CliError` if the exec fails).

    A ``--target`` file and a ``--secrets-file`` are read here first, so a bad file is
    one clear error and nothing starts.  What needs the state directory (secrets set,
    resources uploaded, addresses free, users) the first supervisor checks before it
    starts anything; it exits 86 on a problem, and so does the launcher.
    """
    if args.listen_http:
        from corral.cli.common import split_host_port
        split_host_port(args.listen_http, "--listen-http")
    if getattr(args, "remote", None):
        raise UsageError("sup run starts a supervisor on this host; --remote does not apply "
                         "(run it on the remote host itself)")
    if args.metrics_public and not args.listen_http:
        raise UsageError("--metrics-public applies to the --listen-http address; give both "
                         "(the local socket never asks for a token)")
    if args.health_public and not args.listen_http:
        raise UsageError("--health-public applies to the --listen-http address; give both "
                         "(the local socket never asks for a token)")
    if args.watch_target and not args.target:
        raise UsageError("--watch-target watches the --target file; give both "
                         "(e.g. --target /etc/corral/target.yaml --watch-target)")
    if args.target:
        check_target(args.target)
    if args.secrets_dir:
        check_secrets_dir(args.secrets_dir)
    if args.secrets_file:
        check_secrets_file(args.secrets_file)
    check_cluster(args, ctx)
    argv = launcher_argv(args, ctx)
    ctx.stdout.flush()
    ctx.stderr.flush()
    try:
        os.execv(argv[0], argv)
    except OSError as exc:
        raise CliError(f"cannot start the launcher ({argv[0]}): {exc.strerror or exc}") from None


def cmd_status(args: argparse.Namespace, ctx: CommandContext) -> int:
    """``GET /v1/status``."""
    _, status = ctx.client().request("GET", "/v1/status")
    if args.json:
        ctx.out(json.dumps(status, indent=2))
    else:
        for line in supervisor_lines(status):
            ctx.out(line)
    return EXIT_OK


def cmd_restart(args: argparse.Namespace, ctx: CommandContext) -> int:
    """``POST /v1/supervisor/restart``."""
    ctx.client().request("POST", "/v1/supervisor/restart")
    ctx.out("restarting (services keep running)")
    return EXIT_OK


def cmd_upgrade(args: argparse.Namespace, ctx: CommandContext) -> int:
    """``POST /v1/supervisor/upgrade``, then poll ``/v1/status`` until the launcher (same
    pid), a new supervisor and the balancer (if one runs) all run the installed release."""
    client = ctx.client()
    _, before = client.request("GET", "/v1/status")
    _, started = client.request("POST", "/v1/supervisor/upgrade", timeout=None)
    release = started["to"]["corral"]
    had_balancer = bool((before.get("balancer") or {}).get("pid"))
    deadline = time.monotonic() + args.timeout
    status: dict[str, Any] = {}
    while True:
        if client.answers():
            with contextlib.suppress(CliError):
                _, status = client.request("GET", "/v1/status")
        versions = status.get("versions") or {}
        new_supervisor = status.get("supervisor_pid") not in (None, started["supervisor_pid"])
        if new_supervisor and versions.get("launcher") == started["from"].get("launcher") \
                and versions.get("launcher") != release:
            raise CliError(f"the launcher could not start corral {release} and went back to "
                           f"corral {versions.get('launcher')} (pid {status.get('launcher_pid')} "
                           "kept, services untouched); its reason is in logs/.launcher.log in the "
                           "state directory")
        if (new_supervisor
                and versions.get("launcher") == release
                and versions.get("supervisor") == release
                and (not had_balancer or versions.get("balancer") == release)):
            break
        if time.monotonic() >= deadline:
            raise CliError(f"not every part runs corral {release} after {args.timeout:g}s "
                           f"(now: {_parts(versions)}); check: corral sup status")
        time.sleep(_POLL)
    if status.get("launcher_pid") != started["launcher_pid"]:
        raise CliError(f"the launcher's pid changed ({started['launcher_pid']} -> "
                       f"{status.get('launcher_pid')}): it did not upgrade in place")
    if args.json:
        ctx.out(json.dumps({**status, "upgraded": {"from": started["from"],
                                                   "to": started["to"]}}, indent=2))
        return EXIT_OK
    was = started["from"]
    ctx.out(f"upgraded to corral {release}: launcher {was.get('launcher') or '?'} -> "
            f"{release} (pid {status['launcher_pid']} kept), supervisor "
            f"{was.get('supervisor')} -> {release} (pid {started['supervisor_pid']} -> "
            f"{status['supervisor_pid']})"
            + (f", balancer {was.get('balancer') or '?'} -> {release}" if had_balancer else "")
            + f"; {(status.get('services') or {}).get('total', 0)} services kept running")
    return EXIT_OK


def _parts(versions: dict[str, Any]) -> str:
    return ", ".join(f"{part} {versions.get(part) or '?'}"
                     for part in ("launcher", "supervisor", "balancer"))


def cmd_rotate_token(args: argparse.Namespace, ctx: CommandContext) -> int:
    """``POST /v1/auth/token``; print the new auth file, or update ``--remote``'s own."""
    from corral.cli.print_auth import print_auth

    client = ctx.client()
    _, auth = client.request("POST", "/v1/auth/token")
    if client.auth is not None:
        client.auth.save(auth)  # else this very client is locked out by its own rotation
        ctx.out(f"token rotated: the old one no longer works; updated {client.auth.path} "
                "(other clients need the new file: corral print-auth)")
        return EXIT_OK
    print_auth(ctx, auth, args)
    ctx.stderr.write("token rotated: the old one no longer works; give clients the new "
                     "auth file above\n")
    return EXIT_OK


def cmd_stop(args: argparse.Namespace, ctx: CommandContext) -> int:
    """``POST /v1/supervisor/stop``, then poll until ``api.sock`` stops answering."""
    client = ctx.client()
    client.request("POST", "/v1/supervisor/stop")
    if args.no_wait:
        ctx.out("stopping")
        return EXIT_OK
    deadline = time.monotonic() + args.timeout
    while client.answers():
        if time.monotonic() >= deadline:
            raise CliError(f"the supervisor still answers after {args.timeout:g}s; it may still "
                           "be stopping services (check: corral sup status)")
        time.sleep(_POLL)
    ctx.out("stopped")
    return EXIT_OK
