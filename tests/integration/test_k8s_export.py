"""`corral export k8s`, and the health endpoint its probes use.

The manifests are validated against the Kubernetes schemas of several current releases
(`kubernetes-validate` ships them: no network).  Then the StatefulSet's own container is
run as the kubelet would run it, here: its command and environment, each volume mounted
where the manifest says (rewritten to a temporary directory), the ConfigMap and the Secret
laid out as the kubelet projects them, and its probes sent, without a token, to the paths
and port the manifest names.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import PY, Corral, python_cmd, wait_for
from .test_remote import free_port, start_remote
from .test_watch import Projected

kubernetes_validate = pytest.importorskip("kubernetes_validate")
from kubernetes_validate import utils as kv_utils  # noqa: E402

#: The three newest releases whose schemas the package ships.
RELEASES = [".".join(v.split(".")[:2]) for v in kv_utils.all_versions()[-3:]]

TARGET = """\
processes:
  - name: web
    command: {web}
    env: {{PASSWORD: "${{DB_PASS}}"}}
    instances: 2
    receives: [front]
    stop: {{timeout: 20s}}
  - name: worker
    command: "exec sleep 1000"
services:
  - name: front
    on: ":{port}"
"""
SERVE = python_cmd("import http.server, os\n"
                   "http.server.HTTPServer(('127.0.0.1', int(os.environ['SERVICE_PORT_FRONT'])),"
                   " http.server.SimpleHTTPRequestHandler).serve_forever()")


def export(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, "-m", "corral", "export", "k8s", *args], capture_output=True,
                          text=True, env=env or dict(os.environ), timeout=60)


def documents(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


@pytest.fixture
def target_file(tmp_path: Path) -> Path:
    path = tmp_path / "target.yaml"
    path.write_text(TARGET.format(web=json.dumps(SERVE), port=free_port()))
    return path


def test_manifests_validate_against_current_kubernetes_releases(target_file: Path) -> None:
    """1. Export a target file (two processes, a service, a secret) as group `shop`, three
       replicas.
    2. Every document validates, strictly (unknown fields refused), against the schemas
       of the three newest releases the validator ships; a broken copy does not.
    3. What is there: the ConfigMap holding the file as written, a Secret without values,
       a StatefulSet of 3 whose container runs `corral sup run` with the target, its
       watch, the secrets directory and the public health endpoint, the probes on it,
       volumes mounted as directories (no subPath: updates reach the pod), a headless
       Service, a Service per corral service, a PodDisruptionBudget."""
    result = export("--target", str(target_file), "--group", "shop", "--replicas", "3",
                    "--image", "registry.example/shop:1.4")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    docs = documents(result.stdout)
    assert len(RELEASES) == 3
    for release in RELEASES:
        for doc in docs:
            kubernetes_validate.validate(doc, release, strict=True)
    broken = json.loads(json.dumps(by_kind(docs, "StatefulSet")[0]))
    broken["spec"]["template"]["spec"]["containers"][0]["comand"] = ["x"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, RELEASES[-1], strict=True)

    assert [d["kind"] for d in docs] == ["ConfigMap", "Secret", "StatefulSet", "Service",
                                         "Service", "PodDisruptionBudget"]
    assert by_kind(docs, "ConfigMap")[0]["data"]["target.yaml"] == target_file.read_text()
    secret = by_kind(docs, "Secret")[0]
    assert secret["metadata"]["name"] == "corral-shop-secrets" and "data" not in secret
    assert "kubectl create secret generic corral-shop-secrets --from-literal=DB_PASS=" \
        in result.stdout
    sts = by_kind(docs, "StatefulSet")[0]
    assert sts["metadata"]["name"] == "corral-shop" and sts["spec"]["replicas"] == 3
    assert sts["spec"]["serviceName"] == "corral-shop-members"
    pod = sts["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "registry.example/shop:1.4"
    command = container["command"]
    assert command[:3] == ["corral", "sup", "run"]
    for flag in ("--watch-target", "--health-public"):
        assert flag in command
    assert command[command.index("--target") + 1] == "/etc/corral/target/target.yaml"
    assert command[command.index("--secrets-dir") + 1] == "/etc/corral/secrets"
    assert container["readinessProbe"]["httpGet"]["path"] == "/v1/health"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v1/health/live"
    assert all("subPath" not in m for m in container["volumeMounts"])
    assert pod["terminationGracePeriodSeconds"] > 20 + 8  # the services' stop timeouts
    services = by_kind(docs, "Service")
    assert services[0]["spec"]["clusterIP"] == "None"
    front = services[1]
    assert front["metadata"]["name"] == "front"
    port = int(target_file.read_text().rsplit(":", 1)[1].strip().strip('"'))
    assert front["spec"]["ports"] == [{"port": port, "targetPort": port, "protocol": "TCP"}]
    pdb = by_kind(docs, "PodDisruptionBudget")[0]
    assert pdb["spec"]["maxUnavailable"] == 1


def test_warnings_and_bad_options_are_one_line_each(tmp_path: Path, target_file: Path) -> None:
    """A service bound to loopback (other pods could not reach it) is a warning on stderr,
    the manifests still print; a bad group, --secret-values with --target, and an invalid
    target are one line each and exit non-zero."""
    loopback = tmp_path / "loopback.yaml"
    loopback.write_text("processes: []\nservices:\n  - name: front\n    on: 127.0.0.1:8000\n")
    result = export("--target", str(loopback))
    assert result.returncode == 0 and "kind: StatefulSet" in result.stdout
    assert result.stderr == ("corral: warning: service front listens on 127.0.0.1:8000, which "
                             "other pods cannot reach through its Kubernetes Service; use "
                             ":8000 (all addresses)\n")
    bad = export("--target", str(target_file), "--group", "Shop_1")
    assert bad.returncode == 100 and len(bad.stderr.splitlines()) == 1
    assert bad.stderr.startswith("corral: --group 'Shop_1': use lower-case letters")
    both = export("--target", str(target_file), "--secret-values")
    assert both.returncode == 100
    assert both.stderr.startswith("corral: --secret-values reads the values from the running")
    invalid = tmp_path / "invalid.yaml"
    invalid.write_text("processes:\n  - name: web\n    comand: [x]\n")
    refused = export("--target", str(invalid))
    assert refused.returncode == 1 and refused.stdout == ""
    assert f"{invalid}:3: processes[0].comand: unknown field" in refused.stderr


def test_export_of_the_running_supervisor_with_secret_values(corral: Corral) -> None:
    """Without --target, the running supervisor's target is exported (its canonical YAML in
    the ConfigMap); --secret-values puts the stored values in the Secret."""
    corral.ok("secret", "set", "DB_PASS", "s3cret value")
    corral.ok("svc", "load", "app", "--env", "PASSWORD=${DB_PASS}", "--",
              *python_cmd("import time\nwhile True: time.sleep(1)"))
    result = export("--secret-values", env=corral.env)
    assert result.returncode == 0, result.stderr
    docs = documents(result.stdout)
    target = by_kind(docs, "ConfigMap")[0]["data"]["target.yaml"]
    assert target == corral.ok("target", "get")
    data = by_kind(docs, "Secret")[0]["data"]
    assert base64.b64decode(data["DB_PASS"]).decode() == "s3cret value"
    for release in RELEASES:
        for doc in docs:
            kubernetes_validate.validate(doc, release, strict=True)


class KubeletPod:
    """The exported StatefulSet's container, run the way the kubelet would run it."""

    def __init__(self, manifests: list[dict[str, Any]], root: Path, secret: str) -> None:
        sts = by_kind(manifests, "StatefulSet")[0]
        pod = sts["spec"]["template"]["spec"]
        container = pod["containers"][0]
        self.api_port = free_port()
        mounts = {m["mountPath"]: root / m["name"] for m in container["volumeMounts"]}
        config = by_kind(manifests, "ConfigMap")[0]["data"]
        self.config = Projected(mounts["/etc/corral/target"], config)
        self.secrets = Projected(mounts["/etc/corral/secrets"], {"DB_PASS": secret})
        mounts["/var/lib/corral"].mkdir()

        def local(arg: str) -> str:
            for path, there in mounts.items():
                if arg == path or arg.startswith(path + "/"):
                    return str(there) + arg[len(path):]
            return arg.replace("0.0.0.0:9631", f"127.0.0.1:{self.api_port}")
        assert container["command"][0] == "corral"
        argv = [PY, "-m", "corral", *map(local, container["command"][1:])]
        env = {e["name"]: local(e["value"]) for e in container["env"]}
        self.env = {**os.environ, **env}
        self.out = root / "pod.out"
        with self.out.open("wb") as sink:
            self.proc = subprocess.Popen(argv, env=self.env, stdout=sink,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        self.readiness = container["readinessProbe"]["httpGet"]["path"]
        self.liveness = container["livenessProbe"]["httpGet"]["path"]

    def probe(self, path: str) -> tuple[int, Any]:
        """An HTTPS GET without a token or certificate check, as the kubelet probes."""
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        conn = http.client.HTTPSConnection("127.0.0.1", self.api_port, context=context,
                                           timeout=10)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, json.loads(response.read())
        finally:
            conn.close()

    def corral(self, *args: str) -> str:
        result = subprocess.run([PY, "-m", "corral", *args], capture_output=True, text=True,
                                env=self.env, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture
def kubelet_pod(tmp_path: Path, target_file: Path) -> Iterator[KubeletPod]:
    result = export("--target", str(target_file))
    assert result.returncode == 0, result.stderr
    pod = KubeletPod(documents(result.stdout), tmp_path / "pod", "from the Secret")
    try:
        yield pod
    finally:
        pod.stop()


def test_the_exported_pod_runs_and_its_probes_answer(kubelet_pod: KubeletPod) -> None:
    """1. The container's command runs with its volumes and environment: the services of
       the ConfigMap's target start, with DB_PASS from the Secret's file.
    2. Its readiness probe (no token) answers 200 once they are ready; liveness 200.
    3. The ConfigMap changes (worker gets two instances): the pod applies it, no restart.
    4. SIGTERM (the pod's deletion) stops it with exit code 0."""
    pod = kubelet_pod
    wait_for(lambda: pod.proc.poll() is not None or pod.probe(pod.readiness)[0] == 200, 60,
             "the readiness probe to pass")
    assert pod.proc.poll() is None, pod.out.read_text()
    status, body = pod.probe(pod.readiness)
    assert status == 200 and body["status"] == "ok" and sorted(body["services"]) == ["web", "worker"]
    assert pod.probe(pod.liveness) == (200, {"status": "ok"})
    assert "DB_PASS" in pod.corral("secret", "ls")
    text = pod.config.path.joinpath("target.yaml").read_text()
    pod.config.update({"target.yaml": text.replace('"exec sleep 1000"',
                                                   '"exec sleep 1000"\n    instances: 2')})
    wait_for(lambda: pod.probe(pod.readiness)[1]["services"]["worker"]["instances"] == 2, 30,
             "worker scaled by the new ConfigMap")
    assert pod.stop() == 0


def test_health_is_200_when_ready_503_naming_what_is_not(corral_factory: Any) -> None:
    """1. corral runs with --listen-http and --health-public.
    2. Without a token, GET /v1/health answers 200 `ok` with a service up, 200 `warning`
       when a check says warning, 503 `critical` naming a service in backoff (and why),
       and 200 again once that service is stopped (only what should be up counts).
    3. Other routes still need the token."""
    remote = start_remote(corral_factory(), "--health-public")
    corral = remote.corral
    corral.ok("svc", "load", "web", "--", *python_cmd("import time\nwhile True: time.sleep(1)"))
    corral.wait_state("web", "up")
    assert remote.request("GET", "/v1/health")[1]["status"] == "ok"
    flag = corral.state_dir.parent / "flag"
    flag.write_text("0")
    spec = corral.state_dir.parent / "job.yaml"
    # Habitat's exec codes: exit 1 is a warning.  Warning is never ready, so the check
    # passes first (the instance gets up), then says warning.
    spec.write_text("name: job\ncommand: [sleep, '1000']\n"
                    f"health: {{exec: [sh, -c, 'exit $(cat {flag})'], interval: 200ms,"
                    " exec_codes: habitat}\n")
    corral.ok("svc", "load", "-f", str(spec))
    corral.wait_state("job", "up")
    flag.write_text("1")
    wait_for(lambda: remote.request("GET", "/v1/health")[1]["status"] == "warning",
             what="warning")
    status, body = remote.request("GET", "/v1/health")
    assert status == 200 and body["warning"] == ["job"] and body["not_ready"] == []
    spec.write_text("name: bad\ncommand: [sh, -c, 'exit 3']\nrestart: {policy: never}\n")
    corral.ok("svc", "load", "-f", str(spec))
    corral.wait_state("bad", "down")
    status, body = remote.request("GET", "/v1/health")
    assert status == 503 and body["status"] == "critical" and body["not_ready"] == ["bad"]
    assert body["services"]["bad"]["ready"] == 0
    assert body["services"]["bad"]["reason"].startswith("down: exited with code 3")
    corral.ok("svc", "stop", "bad")
    status, body = remote.request("GET", "/v1/health")
    assert status == 200 and body["status"] == "warning" and "bad" not in body["services"]
    assert remote.request("GET", "/v1/health/live") == (200, {"status": "ok"})
    assert remote.request("GET", "/v1/status")[0] == 401
    assert remote.request("GET", "/v1/services")[0] == 401
