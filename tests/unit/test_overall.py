"""corral's health as a probe sees it, when start-up is over, and systemd's STATUS line:
pure functions of the service records (corral.supervisor.overall)."""

from __future__ import annotations

from corral.spec import validate_process
from corral.states import Desired, HealthState, ServiceState
from corral.supervisor import overall
from corral.supervisor.instance import Instance, Service


def service(name: str, *states: ServiceState, health: HealthState | None = None,
            desired: Desired = Desired.UP, checked: bool = False) -> Service:
    spec = {"name": name, "command": ["x"], "instances": len(states) or 1}
    if checked:
        spec["health"] = {"tcp": {"port": 1}}
    svc = Service(spec=validate_process(spec, "<test>"), desired=desired)
    for i, state in enumerate(states):
        svc.instances[i] = Instance(service=name, index=i, state=state,
                                    pid=100 + i if state is not ServiceState.DOWN else None,
                                    health=health or HealthState.UNKNOWN, reason="why")
    return svc


def test_up_services_without_checks_are_ok() -> None:
    report = overall.health([service("web", ServiceState.UP, ServiceState.UP)])
    assert report["status"] == "ok" and report["not_ready"] == []
    assert report["services"]["web"] == {"status": "ok", "ready": 2, "instances": 2,
                                         "reason": ""}


def test_a_check_that_has_not_passed_yet_is_not_ready_and_warning_is_healthy() -> None:
    unknown = service("db", ServiceState.UP, checked=True)
    warned = service("web", ServiceState.UP, health=HealthState.WARNING, checked=True)
    report = overall.health([unknown, warned])
    assert report["status"] == "critical" and report["not_ready"] == ["db"]
    assert report["warning"] == ["web"]
    assert report["services"]["db"]["reason"] == "health unknown"
    assert overall.health([warned])["status"] == "warning"


def test_one_instance_down_makes_the_service_critical_with_its_reason() -> None:
    report = overall.health([service("web", ServiceState.UP, ServiceState.BACKOFF)])
    assert report["not_ready"] == ["web"]
    assert report["services"]["web"]["ready"] == 1
    assert report["services"]["web"]["reason"] == "backoff: why"


def test_only_services_that_should_be_up_count() -> None:
    stopped = service("old", ServiceState.DOWN, desired=Desired.DOWN)
    none = service("none")
    none.spec = none.spec.model_copy(update={"instances": 0})
    assert overall.health([stopped, none]) == {"status": "ok", "not_ready": [],
                                               "warning": [], "services": {}}


def test_started_once_every_wanted_instance_has_a_pid_or_a_failed_try() -> None:
    spawning = service("web", ServiceState.STARTING)
    spawning.instances[0].pid = None
    assert not overall.started([spawning])
    assert not overall.started([service("web")])  # no record yet: reconcile has not run
    assert overall.started([service("web", ServiceState.STARTING)])  # has its pid
    assert overall.started([service("web", ServiceState.BACKOFF),
                            service("db", ServiceState.FAILED),
                            service("old", desired=Desired.DOWN)])


def test_summary_is_one_line_of_counts() -> None:
    assert overall.summary([]) == "no services"
    assert overall.summary([service("web", ServiceState.UP)]) == "1 service: 1 up"
    assert overall.summary([service("web", ServiceState.UP, ServiceState.UP),
                            service("db", ServiceState.BACKOFF)]) == \
        "2 services, 3 instances: 2 up, 1 backoff"
    assert overall.summary([service("web")]) == "1 service, 0 instances"
