"""``GET /metrics`` on a real supervisor: Prometheus text that follows the services."""

from __future__ import annotations

import http.client
import socket
import time
from pathlib import Path

import psutil
from prometheus_client.parser import text_string_to_metric_families

from .conftest import Corral, python_cmd, wait_for

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class UnixConnection(http.client.HTTPConnection):
    """``http.client`` over the supervisor's ``api.sock``."""

    def __init__(self, path: Path, timeout: float = 10) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = str(path)

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


def get(corral: Corral, path: str) -> tuple[int, str, str]:
    """``GET path`` over the local socket: (status, content type, body)."""
    conn = UnixConnection(corral.state_dir / "api.sock")
    try:
        conn.request("GET", path)
        answer = conn.getresponse()
        return answer.status, answer.getheader("content-type", ""), answer.read().decode()
    finally:
        conn.close()


def scrape(corral: Corral) -> Samples:
    status, kind, text = get(corral, "/metrics")
    assert status == 200, text
    assert kind.startswith("text/plain; version=0.0.4"), kind
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_follow_services_and_own_processes(corral: Corral) -> None:
    """1. a running and a stopped service show their state, desired state and instances;
    2. the supervisor's and launcher's own CPU, RSS and uptime are there;
    3. CPU and RSS of the running service appear once sampled, and never for the stopped one;
    4. a restart shows in restarts_total and in the event counter."""
    corral.ok("svc", "load", "web", "--", *python_cmd("import time; time.sleep(600)"))
    corral.ok("svc", "load", "idle", "--", *python_cmd("import time; time.sleep(600)"))
    corral.ok("svc", "stop", "idle")
    corral.wait_state("web", "up")

    m = scrape(corral)
    web, idle = (("service", "web"),), (("service", "idle"),)
    assert m[("corral_service_state", (("service", "web"), ("state", "up")))] == 1
    assert m[("corral_service_state", (("service", "idle"), ("state", "down")))] == 1
    assert m[("corral_service_state", (("service", "idle"), ("state", "up")))] == 0
    assert m[("corral_service_desired_state", (("service", "idle"), ("state", "down")))] == 1
    assert m[("corral_service_running_instances", web)] == 1
    assert m[("corral_service_ready_instances", web)] == 1
    assert m[("corral_service_ready_instances", idle)] == 0
    assert m[("corral_services", (("state", "up"),))] == 1
    sup = corral.sup_status()
    assert sup["supervisor_pid"] and sup["launcher_pid"]
    # Both were started by this test process, so each one's uptime (in seconds, of that
    # very process: not the host's, not since the epoch) is below this process's age.
    own_age = time.time() - psutil.Process().create_time()
    for process in ("supervisor", "launcher"):
        label = (("process", process),)
        assert m[("corral_process_resident_memory_bytes", label)] > 1_000_000
        assert m[("corral_process_cpu_seconds_total", label)] > 0
        assert 0 < m[("corral_process_uptime_seconds", label)] < own_age

    sampled = wait_for(lambda: (s := scrape(corral))
                       and ("corral_service_cpu_percent", web) in s and s,
                       what="web's CPU and RSS to be sampled (CPU % takes two samples)")
    assert sampled[("corral_service_resident_memory_bytes", web)] > 1_000_000
    assert ("corral_service_cpu_percent", web) in sampled
    assert ("corral_service_resident_memory_bytes", idle) not in sampled
    assert ("corral_service_cpu_percent", idle) not in sampled

    events_before = sampled[("corral_events_total", ())]
    restarts_before = sampled[("corral_service_restarts_total", web)]
    corral.ok("svc", "restart", "web")
    after = scrape(corral)
    assert after[("corral_service_restarts_total", web)] == restarts_before + 1
    assert after[("corral_events_total", ())] > events_before


def test_metrics_route_is_documented(corral: Corral) -> None:
    """``/metrics`` is in the OpenAPI document, and answers text even with no service."""
    status, _, body = get(corral, "/openapi.json")
    assert status == 200 and '"/metrics"' in body
    m = scrape(corral)
    assert m[("corral_services", (("state", "up"),))] == 0
    assert not any(name.startswith("corral_service_") for name, _ in m)
