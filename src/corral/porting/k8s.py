"""Kubernetes manifests that run a corral target in a cluster, without an operator.

PURE: :func:`manifests` takes a validated target (and its YAML text) and returns the
manifests as one multi-document YAML text, plus warnings for what will not work in a pod.
``corral export k8s`` prints them.  What they make, for a service group ``G``::

    ConfigMap   corral-G-target    target.yaml: the target, as given
    Secret      corral-G-secrets   one key per secret the target uses (values only
                                   with --secret-values: else add them, see the comment)
    StatefulSet corral-G           N pods; corral is each pod's PID 1:
                                     corral sup run --target /etc/corral/target/target.yaml
                                       --watch-target --secrets-dir /etc/corral/secrets
                                       --listen-http 0.0.0.0:9631 --health-public
                                   state on a volume claim per pod (/var/lib/corral);
                                   readiness GET /v1/health, liveness and start-up
                                   GET /v1/health/live, over HTTPS on 9631
    Service     corral-G-members   headless: one DNS name per member (not-ready included)
    Service     <service>          one per corral service, on its port
    PodDisruptionBudget corral-G   at most one member down at a time

The ConfigMap and the Secret are mounted as directories, never with ``subPath``, so the
kubelet's updates (a ``..data`` symlink swap) reach the pod: corral re-applies a changed
target (health-gated) and rolls out a changed secret, without a pod restart.
"""

from __future__ import annotations

import base64
import ipaddress
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from corral import __version__
from corral.spec.models import Target
from corral.store.subst import references

API_PORT = 9631
STATE_ROOT = "/var/lib/corral"
STATE_DIR = f"{STATE_ROOT}/state"
TARGET_DIR = "/etc/corral/target"
SECRETS_DIR = "/etc/corral/secrets"
TARGET_KEY = "target.yaml"
#: A ConfigMap holds at most 1 MiB.
MAX_CONFIGMAP = 1024 * 1024
#: A group name: it goes into object names (corral-<group>-members: a DNS label).
_GROUP = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


@dataclass(frozen=True)
class Options:
    """What ``corral export k8s`` was asked for.

    ``group`` names the service group the pods form (``corral-<group>``); ``replicas``
    how many members; ``image`` an image with corral and the target's programs in it;
    ``storage`` each member's state volume; ``secret_values`` the secrets' values to
    put in the Secret (none: the Secret lists no values, and a comment says which).
    """

    group: str = "default"
    replicas: int = 1
    image: str = f"corral:{__version__}"
    storage: str = "1Gi"
    secret_values: Mapping[str, str] | None = field(default=None, repr=False)


class ExportError(ValueError):
    """The target or the options cannot be turned into manifests (the message says why)."""


def label(text: str) -> str:
    """``text`` as a DNS-1035 label (lower case, ``-`` for anything else, starts with a
    letter, at most 63 characters)."""
    name = re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", text.lower())).strip("-")
    if not name or not name[0].isalpha():
        name = "svc-" + name
    return name[:63].rstrip("-")


def check_group(group: str) -> str:
    """``group`` if it can name the objects (``corral-<group>-members`` is the longest),
    else :class:`ExportError`."""
    longest = 63 - len("corral--members")
    if not _GROUP.fullmatch(group) or len(group) > longest:
        raise ExportError(f"--group {group!r}: use lower-case letters, digits and '-', "
                          f"starting and ending with a letter or digit, at most {longest} "
                          "characters")
    return group


def secret_names(target: Target) -> list[str]:
    """Every secret the target's processes refer to, sorted."""
    return sorted({name for spec in target.processes for name in references(spec)})


def warnings(target: Target) -> list[str]:
    """What will not work as written once the target runs in a pod."""
    out = []
    for svc in target.services:
        host = svc.bind_host
        loopback = host == "localhost"
        try:
            loopback = loopback or ipaddress.ip_address(host).is_loopback
        except ValueError:
            pass
        if loopback:
            out.append(f"service {svc.name} listens on {svc.on}, which other pods cannot reach "
                       f"through its Kubernetes Service; use :{svc.port} (all addresses)")
    for spec in target.processes:
        if spec.resources:
            files = ", ".join(r.file for r in spec.resources)
            out.append(f"process {spec.name} uses resources ({files}), which a new pod's store "
                       "does not have; put the files in the image or fetch them in its "
                       "before: script")
    return out


def manifests(target: Target, text: str, options: Options,
              source: str = "") -> tuple[str, list[str]]:
    """The manifests (one YAML text, documents separated by ``---``) and the warnings.

    Args:
        target: the validated target.
        text: its YAML, as it goes into the ConfigMap.
        options: see :class:`Options`.
        source: where the target came from, named in the header comment.

    Raises:
        ExportError: the group name, the replica count or the target's size cannot be used.
    """
    base = f"corral-{check_group(options.group)}"
    if options.replicas < 0:
        raise ExportError(f"--replicas {options.replicas}: must be 0 or more")
    if len(text.encode()) > MAX_CONFIGMAP:
        raise ExportError(f"the target is {len(text.encode())} bytes; a ConfigMap holds at most "
                          f"{MAX_CONFIGMAP} (1 MiB)")
    selector = {"app.kubernetes.io/name": "corral", "app.kubernetes.io/instance": base}
    labels = {**selector, "app.kubernetes.io/version": __version__}
    secrets = secret_names(target)
    docs: list[tuple[str, dict[str, Any]]] = [
        ("", _config_map(base, labels, text)),
    ]
    if secrets:
        docs.append(_secret(base, labels, secrets, options.secret_values))
    docs.append(("", _stateful_set(base, labels, selector, target, options, bool(secrets))))
    docs.append(("", _members(base, labels, selector)))
    taken: set[str] = {f"{base}-members"}
    for svc in target.services:
        name = label(svc.name)
        if name in taken:
            raise ExportError(f"service {svc.name}: its Kubernetes name {name!r} is taken by "
                              "another object of this export; rename one of them")
        taken.add(name)
        docs.append(("", _service(name, svc.name, svc.port, labels, selector)))
    docs.append(("", {
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": {"name": base, "labels": labels},
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector}}}))
    where = f" from {source}" if source else ""
    out = [f"# corral export k8s{where}: corral {__version__}, service group "
           f"{options.group}; apply with: kubectl apply -f FILE\n"]
    for comment, doc in docs:
        out.append("---\n" + comment + yaml.dump(doc, Dumper=_Dumper, sort_keys=False,
                                                  allow_unicode=True, width=100))
    return "".join(out), warnings(target)


def _config_map(base: str, labels: dict[str, str], text: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": f"{base}-target", "labels": labels},
            "data": {TARGET_KEY: text}}


def _secret(base: str, labels: dict[str, str], names: list[str],
            values: Mapping[str, str] | None) -> tuple[str, dict[str, Any]]:
    doc: dict[str, Any] = {"apiVersion": "v1", "kind": "Secret",
                           "metadata": {"name": f"{base}-secrets", "labels": labels},
                           "type": "Opaque"}
    if values is not None:
        doc["data"] = {n: base64.b64encode(values[n].encode()).decode() for n in names}
        return "", doc
    example = " ".join(f"--from-literal={n}=..." for n in names)
    comment = (f"# The target uses the secrets {', '.join(names)}: give them values, e.g.\n"
               f"#   kubectl create secret generic {base}-secrets {example}\n"
               "# (or export with --secret-values). Each key becomes a file corral reads.\n")
    return comment, doc


def _stateful_set(base: str, labels: dict[str, str], selector: dict[str, str],
                  target: Target, options: Options, has_secrets: bool) -> dict[str, Any]:
    command = ["corral", "sup", "run", "--state-dir", STATE_DIR,
               "--target", f"{TARGET_DIR}/{TARGET_KEY}", "--watch-target",
               "--listen-http", f"0.0.0.0:{API_PORT}", "--health-public"]
    if has_secrets:
        command += ["--secrets-dir", SECRETS_DIR]
    # Services stop one after another (dependents first), each within its stop timeout.
    stopping = sum(spec.stop.timeout for spec in target.processes)
    grace = max(30, math.ceil(stopping) + 15)
    mounts = [{"name": "state", "mountPath": STATE_ROOT},
              {"name": "target", "mountPath": TARGET_DIR, "readOnly": True}]
    volumes: list[dict[str, Any]] = [{"name": "target", "configMap": {"name": f"{base}-target"}}]
    if has_secrets:
        mounts.append({"name": "secrets", "mountPath": SECRETS_DIR, "readOnly": True})
        volumes.append({"name": "secrets", "secret": {"secretName": f"{base}-secrets",
                                                      "defaultMode": 0o400}})
    ports: list[dict[str, Any]] = [{"name": "api", "containerPort": API_PORT,
                                    "protocol": "TCP"}]
    ports += [{"containerPort": svc.port, "protocol": "TCP"} for svc in target.services]

    def probe(path: str, period: int, failures: int) -> dict[str, Any]:
        return {"httpGet": {"path": path, "port": "api", "scheme": "HTTPS"},
                "periodSeconds": period, "timeoutSeconds": 3, "failureThreshold": failures}

    container = {
        "name": "corral", "image": options.image, "imagePullPolicy": "IfNotPresent",
        "command": command,
        "env": [{"name": "CORRAL_HOME", "value": STATE_DIR},
                # The launcher's bound on a graceful stop, under the pod's grace period.
                {"name": "CORRAL_SHUTDOWN_TIMEOUT", "value": str(grace - 5)}],
        "ports": ports,
        "startupProbe": probe("/v1/health/live", 2, 60),
        "readinessProbe": probe("/v1/health", 5, 2),
        "livenessProbe": probe("/v1/health/live", 10, 6),
        "volumeMounts": mounts,
    }
    return {
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": base, "labels": labels},
        "spec": {
            "serviceName": f"{base}-members", "replicas": options.replicas,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"terminationGracePeriodSeconds": grace,
                         "containers": [container], "volumes": volumes}},
            "volumeClaimTemplates": [{
                "metadata": {"name": "state", "labels": labels},
                "spec": {"accessModes": ["ReadWriteOnce"],
                         "resources": {"requests": {"storage": options.storage}}}}],
        },
    }


def _members(base: str, labels: dict[str, str], selector: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": f"{base}-members", "labels": labels},
            "spec": {"clusterIP": "None", "publishNotReadyAddresses": True,
                     "selector": selector,
                     "ports": [{"name": "api", "port": API_PORT, "targetPort": "api",
                                "protocol": "TCP"}]}}


def _service(name: str, corral_name: str, port: int, labels: dict[str, str],
             selector: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name,
                         "labels": {**labels, "corral/service": _label_value(corral_name)}},
            "spec": {"selector": selector,
                     "ports": [{"port": port, "targetPort": port, "protocol": "TCP"}]}}


def _label_value(text: str) -> str:
    """``text`` as a label value: at most 63 characters, starting and ending with a letter
    or digit (corral names already use only allowed characters)."""
    return text[:63].rstrip("-_.")


class _Dumper(yaml.SafeDumper):
    """Block style; multi-line text (the target) as a literal block; no anchors (the
    shared label dicts are written out each time, as people write manifests)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _text(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _text)
