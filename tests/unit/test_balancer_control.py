"""Control protocol message parsing: every malformed field is named."""

from __future__ import annotations

from typing import Any

import pytest

from corral.balancer.control import ControlError, parse_services


def service(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"name": "web", "host": "127.0.0.1", "port": 5000,
                            "backends": [{"id": "web/0", "host": "127.0.0.1", "port": 30000}]}
    base.update(over)
    return base


def test_parses_a_whole_set_with_defaults() -> None:
    """Balance defaults to round-robin, drain_timeout to 30 s, backend state to active."""
    [svc] = parse_services({"services": [service()]})
    assert (svc.name, svc.host, svc.port, svc.balance, svc.drain_timeout) == \
        ("web", "127.0.0.1", 5000, "round-robin", 30.0)
    assert svc.backends[0].state == "active" and svc.backends[0].port == 30000


def test_parses_least_connections_and_draining() -> None:
    [svc] = parse_services({"services": [service(
        balance="least-connections", drain_timeout=2,
        backends=[{"id": "a", "host": "::1", "port": 1, "state": "draining"}])]})
    assert svc.balance == "least-connections" and svc.drain_timeout == 2.0
    assert svc.backends[0].state == "draining"


@pytest.mark.parametrize(("message", "where"), [
    ({}, "services: expected a list"),
    ({"services": [42]}, "services[0]: expected an object"),
    ({"services": [service(port=0)]}, "services[0].port"),
    ({"services": [service(port="80")]}, "services[0].port: expected int"),
    ({"services": [service(port=True)]}, "services[0].port: expected int"),
    ({"services": [service(name=None)]}, "services[0].name"),
    ({"services": [service(balance="random")]}, "services[0].balance"),
    ({"services": [service(drain_timeout=-1)]}, "services[0].drain_timeout"),
    ({"services": [service(backends={})]}, "services[0].backends: expected a list"),
    ({"services": [service(backends=[{"id": "a", "host": "h"}])]},
     "services[0].backends[0].port: missing"),
    ({"services": [service(backends=[{"id": "a", "host": "h", "port": 1, "state": "up"}])]},
     "services[0].backends[0].state"),
    ({"services": [service(backends=[{"id": "a", "host": "h", "port": 1}] * 2)]},
     "duplicate backend ids"),
    ({"services": [service(), service()]}, "duplicate service names"),
])
def test_malformed_fields_are_named(message: dict[str, Any], where: str) -> None:
    """Each malformed request is refused with the path of the bad field."""
    with pytest.raises(ControlError, match=where.replace("[", r"\[").replace("]", r"\]")):
        parse_services(message)


def test_empty_set_is_valid() -> None:
    """An empty set removes every service."""
    assert parse_services({"services": []}) == []
