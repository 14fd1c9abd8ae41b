"""The embedded default (corral.cluster.LocalBackend): census of this host's members,
listener calls only on real changes, group configs with the version rule, kept on disk."""

from __future__ import annotations

import asyncio
import json
import stat
from pathlib import Path

import pytest

from corral.cluster import (
    ClusterBackend,
    GroupConfig,
    Identity,
    InstanceStatus,
    LinkStatus,
    LocalBackend,
    MemberStatus,
)
from corral.errors import Conflict, CorralError, SpecError
from corral.states import HealthState, ServiceState

ME = Identity("h1-default", "h1", "10.0.0.1")


class Listener:
    def __init__(self) -> None:
        self.calls: list[tuple[object, ...]] = []

    def census_changed(self, service_groups: frozenset[str]) -> None:
        self.calls.append(("census", service_groups))

    def config_changed(self, service_group: str, config: GroupConfig | None) -> None:
        self.calls.append(("config", service_group, config.version if config else None))

    def link_changed(self, link: LinkStatus) -> None:
        self.calls.append(("link", link.connected))


async def settle() -> None:
    """Let the listener calls the backend scheduled run."""
    for _ in range(3):
        await asyncio.sleep(0)


def up(generation: int = 1) -> MemberStatus:
    return MemberStatus(instances=(InstanceStatus(0, ServiceState.UP, HealthState.OK),),
                        spec_generation=generation)


def test_census_and_listener_calls() -> None:
    """Registering shows the member at once; the listener hears about real changes
    only, after the call returns."""
    async def scenario() -> None:
        backend: ClusterBackend = LocalBackend(ME)
        listener = Listener()
        await backend.start(listener)
        await settle()
        assert listener.calls == [("link", True)]
        listener.calls.clear()
        backend.register("web.default", up())
        assert listener.calls == []  # scheduled, not called from inside register
        await settle()
        assert listener.calls == [("census", frozenset({"web.default"}))]
        backend.register("web.default", up())  # unchanged
        backend.register("db.default", up())
        backend.register("web.default", up(2))
        await settle()
        assert listener.calls[1:] == [("census", frozenset({"db.default"})),
                                      ("census", frozenset({"web.default"}))]
        census = backend.census()
        assert [(m.record.service_group, m.record.member, m.local, m.alive)
                for m in census.members] == [("db.default", "h1-default", True, True),
                                             ("web.default", "h1-default", True, True)]
        assert not census.stale
        assert census.live("web.default")[0].record.status.spec_generation == 2
        backend.withdraw("db.default")
        backend.withdraw("db.default")
        await settle()
        assert listener.calls[3:] == [("census", frozenset({"db.default"}))]
        assert backend.link() == LinkStatus("local", True, "h1-default")
        view = census.group("web.default")[0].view()
        assert view["address"] == "10.0.0.1" and view["member"] == "h1-default"
        await backend.close()
    asyncio.run(scenario())


def test_group_configs_follow_the_version_rule_and_survive_a_restart(tmp_path: Path) -> None:
    """1. Apply v1: stored 0600 and announced; 2. the same again is a no-op; a lower or
    equal version is refused naming the current; 3. a new backend on the same state
    directory has it."""
    async def scenario() -> None:
        backend = LocalBackend(ME, tmp_path)
        listener = Listener()
        await backend.start(listener)
        applied = await backend.apply_config("web.default", 1, {"port": 80, "pw": "${PW}"})
        assert applied == GroupConfig(1, {"port": 80, "pw": "${PW}"})
        assert await backend.apply_config("web.default", 1, {"port": 80, "pw": "${PW}"}) \
            is applied
        with pytest.raises(Conflict) as refused:
            await backend.apply_config("web.default", 1, {"port": 81})
        assert str(refused.value) == ("web.default is at config version 1: apply a version "
                                      "higher than 1 (got 1)")
        with pytest.raises(SpecError):
            await backend.apply_config("web.default", 2, {"bad": "${X"})
        await backend.apply_config("web.default", 3, {"port": 81})
        await settle()
        assert listener.calls == [("link", True), ("config", "web.default", 1),
                                  ("config", "web.default", 3)]
        path = tmp_path / "cluster" / "config.json"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert json.loads(path.read_text())["configs"] == {
            "web.default": {"version": 3, "values": {"port": 81}}}

        again = LocalBackend(ME, tmp_path)
        heard = Listener()
        await again.start(heard)
        assert again.group_config("web.default") == GroupConfig(3, {"port": 81})
        assert again.group_config("db.default") is None
        await settle()
        assert heard.calls == [("link", True), ("config", "web.default", 3)]
    asyncio.run(scenario())


def test_a_damaged_config_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "cluster").mkdir()
    (tmp_path / "cluster" / "config.json").write_text("{not json")

    async def scenario() -> None:
        with pytest.raises(CorralError) as failed:
            await LocalBackend(ME, tmp_path).start(Listener())
        assert str(failed.value).startswith(f"{tmp_path}/cluster/config.json: cannot read the "
                                            "group configs: ")
    asyncio.run(scenario())
