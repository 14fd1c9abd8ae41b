"""A service's status row: resource figures are unknown until an instance is sampled."""

from __future__ import annotations

from corral.spec import ProcessSpec
from corral.states import ServiceState
from corral.supervisor.instance import Instance, Service


def test_cpu_and_memory_are_unknown_before_the_first_sample() -> None:
    service = Service(spec=ProcessSpec(name="web", command=["sleep", "1000"]))
    inst = Instance(service="web", index=0, state=ServiceState.UP, pid=1234,
                    started_at=1.0, spawns=1)
    service.instances[0] = inst
    row = service.as_dict(10.0)
    assert row["cpu"] is None and row["rss"] is None
    assert row["instance_list"][0]["cpu"] is None and row["instance_list"][0]["rss"] is None
    inst.cpu, inst.rss = 2.5, 4096
    row = service.as_dict(10.0)
    assert row["cpu"] == 2.5 and row["rss"] == 4096
