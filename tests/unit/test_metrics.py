"""The Prometheus collector: families built from a stand-in facade (pure, no sockets)."""

from __future__ import annotations

from typing import Any

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from corral.api.metrics import registry_for

WEB = {"name": "web", "state": "up", "desired": "up", "pid": 1234, "instances": 2,
       "restarts": 3, "cpu": 12.5, "rss": 52_428_800, "health": "ok", "uptime_s": 42.0,
       "instance_list": [
           {"index": 0, "state": "up", "pid": 1234, "cpu": 10.0, "rss": 50_000_000},
           {"index": 1, "state": "unhealthy", "pid": 1235, "cpu": 2.5, "rss": 2_428_800}]}
# Just started: running, not sampled yet (the service-level sums would read 0).
FRESH = {"name": "fresh", "state": "starting", "desired": "up", "pid": 99, "instances": 1,
         "restarts": 0, "cpu": None, "rss": 0, "health": "unknown", "uptime_s": 0.1,
         "instance_list": [{"index": 0, "state": "starting", "pid": 99, "cpu": None,
                            "rss": None}]}
DB = {"name": "db", "state": "down", "desired": "down", "pid": None, "instances": 1,
      "restarts": 0, "cpu": None, "rss": None, "health": "unknown", "uptime_s": None,
      "instance_list": [{"index": 0, "state": "down", "pid": None}]}


class FakeSource:
    """The facade's read methods, with fixed answers."""

    def __init__(self, services: list[dict[str, Any]], events: int = 7) -> None:
        self._services = services
        self._events = events
        self.reads = 0

    def status(self) -> dict[str, Any]:
        return {"version": "9.9.9", "services": {"total": 2, "up": 1, "down": 1}}

    def services(self) -> list[dict[str, Any]]:
        self.reads += 1
        return self._services

    def own_processes(self) -> list[dict[str, Any]]:
        return [{"process": "supervisor", "pid": 10, "cpu_seconds": 1.5,
                 "rss_bytes": 30_000_000, "uptime_s": 60.0},
                {"process": "launcher", "pid": 9, "cpu_seconds": 0.25,
                 "rss_bytes": 10_000_000, "uptime_s": 61.0}]

    def event_count(self) -> int:
        return self._events


class WithBalancer(FakeSource):
    def balancer_stats(self) -> dict[str, dict[str, float]]:
        return {"web": {"connections": 4, "connections_total": 100, "errors_total": 2},
                "db": {"connections": 0}}


def scrape(source: object) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Render the registry as Prometheus would read it, then parse it back."""
    text = generate_latest(registry_for(source)).decode()  # type: ignore[arg-type]
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def test_service_state_desired_and_health_are_one_hot() -> None:
    """Each service has one series per state, health and desired value; only the current is 1."""
    m = scrape(FakeSource([WEB, DB]))
    states = {k[1][1][1]: v for k, v in m.items()
              if k[0] == "corral_service_state" and ("service", "web") in k[1]}
    assert states == {"starting": 0, "up": 1, "unhealthy": 0, "stopping": 0, "down": 0,
                      "backoff": 0, "failed": 0}
    assert m[("corral_service_desired_state", (("service", "db"), ("state", "down")))] == 1
    assert m[("corral_service_desired_state", (("service", "db"), ("state", "up")))] == 0
    assert m[("corral_service_health", (("health", "ok"), ("service", "web")))] == 1
    assert m[("corral_service_health", (("health", "unknown"), ("service", "web")))] == 0


def test_service_counts_and_resources() -> None:
    """Restarts, wanted/running/ready instances, CPU, RSS and uptime come from the status."""
    m = scrape(FakeSource([WEB, DB]))
    web = (("service", "web"),)
    assert m[("corral_service_restarts_total", web)] == 3
    assert m[("corral_service_instances", web)] == 2
    assert m[("corral_service_running_instances", web)] == 2
    assert m[("corral_service_ready_instances", web)] == 1  # the unhealthy one is not ready
    assert m[("corral_service_cpu_percent", web)] == 12.5
    assert m[("corral_service_resident_memory_bytes", web)] == 52_428_800
    assert m[("corral_service_uptime_seconds", web)] == 42.0


def test_unknown_figures_are_absent_not_zero() -> None:
    """A service with no live process (or not sampled yet) has no CPU or RSS series."""
    m = scrape(FakeSource([DB, FRESH]))
    assert ("corral_service_resident_memory_bytes", (("service", "fresh"),)) not in m
    assert ("corral_service_cpu_percent", (("service", "fresh"),)) not in m
    db = (("service", "db"),)
    assert ("corral_service_cpu_percent", db) not in m
    assert ("corral_service_resident_memory_bytes", db) not in m
    assert ("corral_service_uptime_seconds", db) not in m
    assert m[("corral_service_running_instances", db)] == 0


def test_supervisor_and_launcher_figures() -> None:
    """Own processes, the event counter, per-state service counts and the version."""
    m = scrape(FakeSource([WEB, DB], events=7))
    assert m[("corral_process_cpu_seconds_total", (("process", "supervisor"),))] == 1.5
    assert m[("corral_process_resident_memory_bytes", (("process", "launcher"),))] == 10e6
    assert m[("corral_process_uptime_seconds", (("process", "launcher"),))] == 61.0
    assert m[("corral_events_total", ())] == 7
    assert m[("corral_services", (("state", "up"),))] == 1
    assert m[("corral_services", (("state", "failed"),))] == 0
    assert m[("corral_info", (("version", "9.9.9"),))] == 1


def test_balancer_series_only_when_the_facade_reports_them() -> None:
    """Without ``balancer_stats`` no balancer series exist; with it, only the keys given."""
    assert not any(name.startswith("corral_balancer") for name, _ in scrape(FakeSource([WEB])))
    m = scrape(WithBalancer([WEB, DB]))
    assert m[("corral_balancer_connections", (("service", "web"),))] == 4
    assert m[("corral_balancer_connections_total", (("service", "web"),))] == 100
    assert m[("corral_balancer_errors_total", (("service", "web"),))] == 2
    assert m[("corral_balancer_connections", (("service", "db"),))] == 0
    assert ("corral_balancer_errors_total", (("service", "db"),)) not in m


def test_registry_is_fresh_and_read_at_scrape_time() -> None:
    """Two registries do not share collectors, and every scrape reads the source again."""
    source = FakeSource([WEB])
    registry = registry_for(source)  # type: ignore[arg-type]
    assert source.reads == 0  # registering reads nothing
    generate_latest(registry)
    generate_latest(registry)
    assert source.reads == 2
    other = generate_latest(registry_for(FakeSource([DB]))).decode()  # type: ignore[arg-type]
    assert 'service="web"' not in other
