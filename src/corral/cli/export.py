"""``corral export k8s``: manifests that run the target in a Kubernetes cluster.

The target comes from the running supervisor (``GET /v1/target``) unless ``--target FILE``
is given, in which case no supervisor is needed.  The manifests themselves are made by
:mod:`corral.porting.k8s` (pure); this module fetches, validates and prints.  Warnings
(what will not work as written in a pod) go to stderr, the manifests to stdout.
"""

from __future__ import annotations

import argparse

from corral.cli.common import CommandContext, add_parser, non_negative_int
from corral.cli.errors import EXIT_OK, CliError, UsageError

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing slows every command's start
if TYPE_CHECKING:
    from typing import Any


def register(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``export`` and its sub-commands."""
    export = add_parser(subparsers, "export", "print the target as another tool's files",
                        "Turn corral's target into what another platform runs.",
                        "  corral export k8s > corral.yaml", parents)
    kinds = export.add_subparsers(dest="export_kind", metavar="KIND", required=True)
    p = add_parser(kinds, "k8s", "Kubernetes manifests: a StatefulSet with corral as PID 1",
                   "Print Kubernetes manifests that run the target: a StatefulSet whose pods run\n"
                   "corral as PID 1, the target from a ConfigMap (re-applied when it changes),\n"
                   "the secrets it uses from a Secret mounted as files, a headless Service for\n"
                   "the members, a Service per corral service, a PodDisruptionBudget, and\n"
                   "readiness and liveness probes on corral's health endpoint. The target is the\n"
                   "running supervisor's, or --target FILE's.",
                   """
  corral export k8s --image registry.example/shop:1.4 > shop.yaml && kubectl apply -f shop.yaml
  corral export k8s --target target.yaml --group web --replicas 3
  corral export k8s --secret-values | kubectl apply -f -     # secret values included""",
                   parents)
    p.add_argument("--group", default="default", metavar="G",
                   help="the service group the pods form; names the objects corral-G-... "
                        "(default: default)")
    p.add_argument("--replicas", type=non_negative_int, default=1, metavar="N",
                   help="members (pods) of the group (default: 1)")
    p.add_argument("--image", metavar="IMAGE",
                   help="an image with corral and the target's programs (default: "
                        "corral:VERSION, the Dockerfile's image)")
    p.add_argument("--storage", default="1Gi", metavar="SIZE",
                   help="each member's state volume (default: 1Gi)")
    p.add_argument("--target", metavar="FILE",
                   help="export this target file instead of the running supervisor's")
    p.add_argument("--secret-values", action="store_true",
                   help="put the secrets' values (from the running supervisor) in the Secret")
    p.set_defaults(handler=cmd_k8s)


def _target_text(args: argparse.Namespace, ctx: CommandContext) -> tuple[str, str]:
    """The target's YAML and where it came from."""
    if args.target:
        try:
            with open(args.target, encoding="utf-8") as f:
                return f.read(), args.target
        except OSError as exc:
            raise CliError(f"cannot read {args.target}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise CliError(f"{args.target} is not UTF-8 text") from None
    _, answer = ctx.client().request("GET", "/v1/target")
    return str(answer.get("yaml") or ""), "the running supervisor's target"


def cmd_k8s(args: argparse.Namespace, ctx: CommandContext) -> int:
    """Fetch (or read) the target, make the manifests, print them."""
    from corral import __version__
    from corral.errors import SpecError
    from corral.porting import k8s
    from corral.spec.loading import load_target

    if args.secret_values and args.target:
        raise UsageError("--secret-values reads the values from the running supervisor; "
                         "it does not go with --target FILE")
    try:
        k8s.check_group(args.group)
    except k8s.ExportError as exc:
        raise UsageError(str(exc)) from None
    text, source = _target_text(args, ctx)
    try:
        target = load_target(text, args.target or "<target>")
    except SpecError as exc:
        raise CliError(exc.message.splitlines()[0], exc.problems) from None
    values = None
    names = k8s.secret_names(target)
    if args.secret_values and names:
        _, answer = ctx.client().request("POST", "/v1/secrets/get", {"names": names})
        values = answer.get("secrets", {})
    options = k8s.Options(group=args.group, replicas=args.replicas,
                          image=args.image or f"corral:{__version__}", storage=args.storage,
                          secret_values=values)
    try:
        text, warnings = k8s.manifests(target, text, options, source)
    except k8s.ExportError as exc:
        raise CliError(str(exc)) from None
    ctx.stdout.write(text)
    ctx.stdout.flush()
    for line in warnings:
        ctx.stderr.write(f"corral: warning: {line}\n")
    return EXIT_OK
