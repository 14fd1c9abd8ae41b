"""A stand-in supervisor for the cluster tests: joins etcd, registers one member, waits.

    python etcd_member.py ENDPOINTS MEMBER SERVICE_GROUP SPEC_GENERATION TTL

It prints one JSON line ``{"lease": "<hex>"}`` once its record is in etcd, then keeps
its lease alive until it is killed (the tests kill it with SIGKILL, as a crash would).
"""

from __future__ import annotations

import asyncio
import json
import sys

from corral.cluster import EtcdBackend, EtcdSettings, Identity, InstanceStatus, MemberStatus
from corral.cluster.census import LinkStatus
from corral.cluster.etcd import EtcdClient
from corral.cluster.records import GroupConfig
from corral.states import HealthState, ServiceState


class Quiet:
    def census_changed(self, service_groups: frozenset[str]) -> None:
        pass

    def config_changed(self, service_group: str, config: GroupConfig | None) -> None:
        pass

    def link_changed(self, link: LinkStatus) -> None:
        pass


async def main(endpoints: str, member: str, group: str, generation: int, ttl: int) -> None:
    settings = EtcdSettings(tuple(endpoints.split(",")))
    backend = EtcdBackend(settings, Identity(member, f"host-{member}", "127.0.0.1"), ttl=ttl)
    await backend.start(Quiet())
    status = MemberStatus(instances=(InstanceStatus(0, ServiceState.UP, HealthState.OK),),
                          ports={"traffic": 7000}, spec_generation=generation)
    backend.register(group, status)
    reader = EtcdClient(settings)
    key = backend.keys.member(group, member)
    while True:  # until our own record (this generation, our lease) is stored
        kv = await reader.get(key)
        lease = backend.link().lease_id
        if kv is not None and lease and kv.lease == lease \
                and json.loads(kv.value)["spec_generation"] == generation:
            break
        await asyncio.sleep(0.02)
    print(json.dumps({"lease": f"{lease:x}"}), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])))
