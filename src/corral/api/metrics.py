"""``GET /metrics``: the supervisor and its services in Prometheus' text exposition format.

A custom collector reads the facade at scrape time: there is no background thread, and
figures are never older than the supervisor's own (CPU and RSS of services are sampled by
the supervisor every few seconds; its own and the launcher's are read from ``/proc`` at
scrape time).  Each application gets a fresh :class:`CollectorRegistry`, so building
several apps (tests do) never pollutes prometheus-client's global registry.

A figure that is not known is left out rather than exported as zero: a stopped service
has no CPU or RSS series, and balancer series appear only once the facade can report them
(:func:`balancer_families`).

Series (labels in braces)::

    corral_service_state{service,state}          1 for the service's summary state, 0 for the others
    corral_service_desired_state{service,state}  1 for up or down (what the user wants)
    corral_service_health{service,health}        1 for the latest health result, 0 for the others
    corral_service_restarts_total{service}       restarts of all instances
    corral_service_instances{service}            instances wanted
    corral_service_running_instances{service}    instances with a live process
    corral_service_ready_instances{service}      instances in state up (ready, not unhealthy)
    corral_service_cpu_percent{service}          % of one core, whole process trees, last sample
    corral_service_resident_memory_bytes{service}
    corral_service_uptime_seconds{service}       instance 0's
    corral_process_cpu_seconds_total{process}    process = supervisor | launcher
    corral_process_resident_memory_bytes{process}
    corral_process_uptime_seconds{process}
    corral_events_total                          events recorded since this supervisor started
    corral_services{state}                       services per summary state
    corral_info{version}                         always 1
    corral_balancer_connections{service}          (when the balancer reports them)
    corral_balancer_connections_total{service}
    corral_balancer_errors_total{service}
    corral_log_dropped_bytes_total{service}       output the launcher could not write to the
    corral_log_dropped_records_total{service}     service's log file (a full disk); only once
                                                  something was dropped
    corral_output_dropped_records_total{stream}   records dropped on the launcher's stdout or
    corral_output_dropped_bytes_total{stream}     stderr (nobody reading it); likewise
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Protocol

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector, CollectorRegistry

from corral.states import HealthState, ServiceState

PREFIX = "corral"
# The classic text format (0.0.4): what every Prometheus version and scraper reads, and
# what prometheus-client itself answers a plain ``Accept``.
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
_DESIRED = ("up", "down")


class MetricsSource(Protocol):
    """What the collector reads; :class:`corral.supervisor.facade.Facade` provides it."""

    def status(self) -> dict[str, Any]: ...
    def services(self) -> list[dict[str, Any]]: ...
    def own_processes(self) -> list[dict[str, Any]]: ...
    def event_count(self) -> int: ...


class CorralCollector(Collector):
    """Turns one reading of ``source`` into metric families, once per scrape.

    Args:
        source: the facade (or a stand-in with the same read methods, in unit tests).
    """

    def __init__(self, source: MetricsSource) -> None:
        self._source = source

    def describe(self) -> Iterable[Metric]:
        # Declaring nothing keeps registration from calling collect() before the
        # supervisor is serving; the names are unique by construction.
        return []

    def collect(self) -> Iterator[Metric]:
        yield from service_families(self._source.services())
        yield from supervisor_families(self._source.status(), self._source.own_processes(),
                                       self._source.event_count())
        yield from balancer_families(self._source)
        yield from drop_families(self._source)


def _one_hot(family: GaugeMetricFamily, service: str, values: Iterable[str],
             current: str) -> None:
    for value in values:
        family.add_metric([service, value], 1.0 if value == current else 0.0)


def service_families(services: list[dict[str, Any]]) -> list[Metric]:
    """The per-service families for a list of service status objects (``docs/api.md``)."""
    state = GaugeMetricFamily(f"{PREFIX}_service_state",
                              "1 for the service's state (least healthy instance's), else 0",
                              labels=["service", "state"])
    desired = GaugeMetricFamily(f"{PREFIX}_service_desired_state",
                                "1 for the state the user wants the service in, else 0",
                                labels=["service", "state"])
    health = GaugeMetricFamily(f"{PREFIX}_service_health",
                               "1 for the latest health check result, else 0",
                               labels=["service", "health"])
    restarts = CounterMetricFamily(f"{PREFIX}_service_restarts",
                                   "Restarts of all the service's instances",
                                   labels=["service"])
    wanted = GaugeMetricFamily(f"{PREFIX}_service_instances", "Instances wanted",
                               labels=["service"])
    running = GaugeMetricFamily(f"{PREFIX}_service_running_instances",
                                "Instances with a live process", labels=["service"])
    ready = GaugeMetricFamily(f"{PREFIX}_service_ready_instances",
                              "Instances in state up (ready and not unhealthy)",
                              labels=["service"])
    cpu = GaugeMetricFamily(f"{PREFIX}_service_cpu_percent",
                            "CPU use of the instances' process trees, % of one core",
                            labels=["service"])
    rss = GaugeMetricFamily(f"{PREFIX}_service_resident_memory_bytes",
                            "Resident memory of the instances' process trees",
                            labels=["service"])
    uptime = GaugeMetricFamily(f"{PREFIX}_service_uptime_seconds",
                               "Seconds since instance 0 started", labels=["service"])
    for entry in services:
        name = str(entry["name"])
        _one_hot(state, name, [s.value for s in ServiceState], str(entry["state"]))
        _one_hot(desired, name, _DESIRED, str(entry["desired"]))
        _one_hot(health, name, [h.value for h in HealthState], str(entry["health"]))
        restarts.add_metric([name], float(entry["restarts"]))
        wanted.add_metric([name], float(entry["instances"]))
        instances = entry.get("instance_list", [])
        running.add_metric([name], float(sum(1 for i in instances if i.get("pid"))))
        ready.add_metric([name], float(sum(1 for i in instances
                                           if i.get("state") == ServiceState.UP.value)))
        # Unknown is not zero: only instances already sampled count, and a service with
        # none (stopped, or just started) has no CPU or RSS series at all.
        cpus = [float(i["cpu"]) for i in instances if i.get("cpu") is not None]
        rsss = [float(i["rss"]) for i in instances if i.get("rss") is not None]
        if cpus:
            cpu.add_metric([name], round(sum(cpus), 1))
        if rsss:
            rss.add_metric([name], sum(rsss))
        if entry.get("uptime_s") is not None:
            uptime.add_metric([name], float(entry["uptime_s"]))
    return [state, desired, health, restarts, wanted, running, ready, cpu, rss, uptime]


def supervisor_families(status: dict[str, Any], processes: list[dict[str, Any]],
                        events: int) -> list[Metric]:
    """The supervisor's own families: version, service counts, events, own processes.

    Args:
        status: ``GET /v1/status``'s object.
        processes: ``[{process, pid, cpu_seconds, rss_bytes, uptime_s}]``; a process that
            could not be read is absent from the list.
        events: events recorded since this supervisor started.
    """
    info = GaugeMetricFamily(f"{PREFIX}_info", "corral's version", labels=["version"])
    info.add_metric([str(status.get("version", ""))], 1.0)
    counts = GaugeMetricFamily(f"{PREFIX}_services", "Loaded services per state",
                               labels=["state"])
    by_state = status.get("services", {})
    for value in ServiceState:
        counts.add_metric([value.value], float(by_state.get(value.value, 0)))
    total = CounterMetricFamily(f"{PREFIX}_events",
                                "Events recorded since this supervisor started")
    total.add_metric([], float(events))
    cpu = CounterMetricFamily(f"{PREFIX}_process_cpu_seconds",
                              "CPU time (user + system) of corral's own processes",
                              labels=["process"])
    rss = GaugeMetricFamily(f"{PREFIX}_process_resident_memory_bytes",
                            "Resident memory of corral's own processes", labels=["process"])
    uptime = GaugeMetricFamily(f"{PREFIX}_process_uptime_seconds",
                               "Seconds since corral's own processes started",
                               labels=["process"])
    for proc in processes:
        label = [str(proc["process"])]
        cpu.add_metric(label, float(proc["cpu_seconds"]))
        rss.add_metric(label, float(proc["rss_bytes"]))
        uptime.add_metric(label, float(proc["uptime_s"]))
    return [info, counts, total, cpu, rss, uptime]


def balancer_families(source: object) -> list[Metric]:
    """Balancer series, read from ``source.balancer_stats()`` when the facade has it.

    The hook for the load balancer: ``balancer_stats()`` returns
    ``{service: {"connections": open now, "connections_total": accepted,
    "errors_total": failed}}``; keys that are absent are not exported.  Until the facade
    provides the method, nothing is exported (never zeros that would look like a fact).
    """
    reader = getattr(source, "balancer_stats", None)
    if not callable(reader):
        return []
    stats: Mapping[str, Mapping[str, float]] = reader() or {}
    open_now = GaugeMetricFamily(f"{PREFIX}_balancer_connections",
                                 "Connections open through the balancer", labels=["service"])
    accepted = CounterMetricFamily(f"{PREFIX}_balancer_connections",
                                   "Connections accepted by the balancer", labels=["service"])
    errors = CounterMetricFamily(f"{PREFIX}_balancer_errors",
                                 "Connections the balancer could not serve (no backend, "
                                 "connect failure)", labels=["service"])
    for service, figures in stats.items():
        if "connections" in figures:
            open_now.add_metric([service], float(figures["connections"]))
        if "connections_total" in figures:
            accepted.add_metric([service], float(figures["connections_total"]))
        if "errors_total" in figures:
            errors.add_metric([service], float(figures["errors_total"]))
    return [family for family in (open_now, accepted, errors) if family.samples]


def drop_families(source: object) -> list[Metric]:
    """Dropped output, from ``source.output_drops()`` when the facade has it: ``{"logs":
    {service: (bytes, records)}, "streams": {stream: (bytes, records)}}``."""
    reader = getattr(source, "output_drops", None)
    if not callable(reader):
        return []
    drops: Mapping[str, Mapping[str, tuple[int, int]]] = reader() or {}
    log_bytes = CounterMetricFamily(f"{PREFIX}_log_dropped_bytes",
                                    "Output not written to the service's log file (it could "
                                    "not be written: a full disk)", labels=["service"])
    log_records = CounterMetricFamily(f"{PREFIX}_log_dropped_records",
                                      "Records not written to the service's log file",
                                      labels=["service"])
    out_bytes = CounterMetricFamily(f"{PREFIX}_output_dropped_bytes",
                                    "Bytes dropped on corral's stdout or stderr (not read "
                                    "fast enough); the log files have them", labels=["stream"])
    out_records = CounterMetricFamily(f"{PREFIX}_output_dropped_records",
                                      "Records dropped on corral's stdout or stderr",
                                      labels=["stream"])
    for service, (size, records) in drops.get("logs", {}).items():
        log_bytes.add_metric([service], float(size))
        log_records.add_metric([service], float(records))
    for stream, (size, records) in drops.get("streams", {}).items():
        out_bytes.add_metric([stream], float(size))
        out_records.add_metric([stream], float(records))
    return [family for family in (log_bytes, log_records, out_bytes, out_records)
            if family.samples]


def registry_for(source: MetricsSource) -> CollectorRegistry:
    """A fresh registry holding only corral's collector (not prometheus-client's globals)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CorralCollector(source))
    return registry


def metrics_router(source: MetricsSource) -> APIRouter:
    """The ``GET /metrics`` route, reading ``source`` at every scrape."""
    router = APIRouter()
    registry = registry_for(source)

    @router.get("/metrics", tags=["metrics"], response_class=Response,
                responses={200: {"content": {CONTENT_TYPE: {}},
                                 "description": "Prometheus text exposition format"}})
    async def metrics() -> Response:
        """The supervisor, the launcher and every service, for Prometheus to scrape."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE)

    return router
