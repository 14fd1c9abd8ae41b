"""The pure parts of corral.cluster: names and keys, member records, the keyspace mirror,
the group config rules, endpoint parsing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from corral.cluster import (
    GroupConfig,
    Identity,
    InstanceStatus,
    Keyspace,
    MemberRecord,
    MemberStatus,
    default_member_name,
    parse_endpoints,
    read_endpoints_file,
    service_group,
    split_service_group,
)
from corral.cluster.census import KeyspaceView
from corral.cluster.etcd import EtcdSettings, KeyValue, WatchBatch, WatchEvent, prefix_end
from corral.cluster.keys import Key
from corral.cluster.records import check_config, refuse_unless_newer
from corral.errors import Conflict, SpecError
from corral.states import HealthState, ServiceState

ME = Identity("web1-default", "web1", "10.0.0.1")


# ---------------------------------------------------------------------------- names, keys
def test_service_group_names() -> None:
    """<process>.<group>: the last dot splits (process names may have dots)."""
    assert service_group("redis") == "redis.default"
    assert service_group("api.v2", "prod") == "api.v2.prod"
    assert split_service_group("api.v2.prod") == ("api.v2", "prod")
    for bad in ("redis", "Redis.default", "redis.", ".default", "a/b.default"):
        with pytest.raises(SpecError) as failed:
            split_service_group(bad)
        assert "write <process>.<group>, e.g. redis.default" in str(failed.value)
    with pytest.raises(SpecError):
        service_group("redis", "pro.d")


def test_default_member_name() -> None:
    assert default_member_name("web1.example.com", "default") == "web1-default"
    assert default_member_name("h", "my state") == "h-my-state"
    with pytest.raises(SpecError):
        Identity("a/b", "h", "1.2.3.4")


def test_keyspace_layout_and_parsing() -> None:
    """Every kind of key lives under /corral/<org>/ and parses back."""
    keys = Keyspace("acme")
    assert keys.member("redis.default", "m1") == "/corral/acme/members/redis.default/m1"
    assert keys.members() == "/corral/acme/members/"
    assert keys.members("redis.default") == "/corral/acme/members/redis.default/"
    assert keys.config("redis.default") == "/corral/acme/config/redis.default"
    assert keys.spec("redis.default") == "/corral/acme/spec/redis.default"
    assert keys.election("redis.default") == "/corral/acme/election/redis.default"
    assert keys.rollout("redis.default") == "/corral/acme/rollout/redis.default"
    assert keys.parse("/corral/acme/members/redis.default/m1") == \
        Key("members", "redis.default", "m1")
    assert keys.parse("/corral/acme/config/redis.default") == Key("config", "redis.default")
    assert keys.parse("/corral/acme/election/redis.default/694d7a") == \
        Key("election", "redis.default")
    for other in ("/corral/other/config/redis.default", "/corral/acme/unknown/redis.default",
                  "/corral/acme/members/redis.default", "/corral/acme/config/NOPE"):
        assert keys.parse(other) is None
    with pytest.raises(SpecError):
        Keyspace("Acme Inc")


def test_prefix_end() -> None:
    """The range end of a prefix is the prefix with its last byte incremented (UTF-8)."""
    assert prefix_end("/corral/a/") == b"/corral/a0"
    assert prefix_end("é") == b"\xc3\xaa"  # é is c3 a9
    assert prefix_end("") == b"\0"


# -------------------------------------------------------------------------- member record
def status(**fields: object) -> MemberStatus:
    return MemberStatus(**fields)  # type: ignore[arg-type]


def test_member_state_and_health_sum_up_the_instances() -> None:
    """Up if any instance is up; health is the worst of the running ones."""
    up_ok = InstanceStatus(0, ServiceState.UP, HealthState.OK)
    up_warn = InstanceStatus(1, ServiceState.UP, HealthState.WARNING)
    backoff_crit = InstanceStatus(2, ServiceState.BACKOFF, HealthState.CRITICAL)
    assert status().state == ServiceState.DOWN and status().health == HealthState.UNKNOWN
    assert status(instances=(up_ok, backoff_crit)).state == ServiceState.UP
    assert status(instances=(up_ok, backoff_crit)).health == HealthState.OK
    assert status(instances=(up_ok, up_warn)).health == HealthState.WARNING
    assert status(instances=(backoff_crit,)).state == ServiceState.BACKOFF
    starting = InstanceStatus(0, ServiceState.STARTING)
    assert status(instances=(starting, backoff_crit)).state == ServiceState.STARTING


def test_member_record_round_trip() -> None:
    """What is stored reads back the same, with state and health summed up for readers."""
    record = MemberRecord.build(ME, "web.default", MemberStatus(
        instances=(InstanceStatus(0, ServiceState.UP, HealthState.OK),),
        ports={"traffic": 30001}, spec_generation=3, config_version=7,
        exports={"port": 8080, "url": "${URL}"}, topology="leader", leader=True))
    stored = json.loads(record.encode())
    assert stored == {
        "service_group": "web.default", "member": "web1-default", "host": "web1",
        "address": "10.0.0.1", "state": "up", "health": "ok",
        "instances": [{"index": 0, "state": "up", "health": "ok"}],
        "ports": {"traffic": 30001}, "spec_generation": 3, "config_version": 7,
        "exports": {"port": 8080, "url": "${URL}"}, "topology": "leader", "leader": True,
        "corral": record.corral}
    assert MemberRecord.decode(record.encode()) == record
    newer = {**stored, "update_slot": "held"}  # a field from a newer corral
    assert MemberRecord.from_json(newer) == record


@pytest.mark.parametrize(("raw", "reason"), [
    (b"{", "not JSON"),
    (b"[]", "not a JSON object"),
    (b'{"service_group": "web.default", "member": "m"}', "host is missing"),
    (b'{"service_group": "web.default", "member": "m", "host": "h", "address": "a", '
     b'"instances": [{"index": 0, "state": "sleeping", "health": "ok"}]}',
     "instances[0].state 'sleeping' is not a known value"),
    (b'{"service_group": "web.default", "member": "m", "host": "h", "address": "a", '
     b'"ports": {"x": "80"}}', "ports must map names to numbers"),
    (b'{"service_group": "web.default", "member": "m", "host": "h", "address": "a", '
     b'"spec_generation": true}', "spec_generation has the wrong type"),
    (b'{"service_group": "Web", "member": "m", "host": "h", "address": "a"}',
     "invalid service group 'Web'"),
])
def test_bad_records_say_what_is_wrong(raw: bytes, reason: str) -> None:
    with pytest.raises(ValueError) as failed:
        MemberRecord.decode(raw)
    assert reason in str(failed.value)


# ------------------------------------------------------------------------------ the mirror
KEYS = Keyspace()


def kv(key: str, value: bytes, revision: int) -> KeyValue:
    return KeyValue(key, value, mod_revision=revision)


def record_kv(group: str, member: str, revision: int, generation: int = 1) -> KeyValue:
    record = MemberRecord(group, member, member, "10.0.0.9",
                          MemberStatus(spec_generation=generation))
    return kv(KEYS.member(group, member), record.encode(), revision)


def test_the_view_follows_resets_and_events() -> None:
    """A reset replaces everything and reports only what differs; events add, change
    and remove; each batch says which groups and configs changed."""
    view = KeyspaceView(KEYS)
    config = GroupConfig(2, {"port": 1})
    changes = view.apply(WatchBatch(10, reset=True, kvs=(
        record_kv("web.default", "a", 5), record_kv("db.default", "b", 6),
        kv(KEYS.config("web.default"), config.encode(), 7),
        kv("/corral/default/spec/web.default", b"later", 8))))
    assert changes.groups == {"web.default", "db.default"} and changes.configs == {"web.default"}
    assert view.synced and view.revision == 10
    assert view.configs["web.default"] == GroupConfig(2, {"port": 1}, 7)

    same = view.apply(WatchBatch(12, reset=True, kvs=(
        record_kv("web.default", "a", 5), record_kv("db.default", "b", 6),
        kv(KEYS.config("web.default"), config.encode(), 7))))
    assert not same

    changes = view.apply(WatchBatch(14, events=(
        WatchEvent(record_kv("web.default", "a", 13, generation=2)),
        WatchEvent(KeyValue(KEYS.member("db.default", "b"), mod_revision=14), deleted=True))))
    assert changes.groups == {"web.default", "db.default"} and not changes.configs
    assert [(r.member, r.status.spec_generation) for r in view.records()] == [("a", 2)]

    # an event older than what is held (written here first, then seen on the watch)
    assert not view.apply(WatchBatch(14, events=(WatchEvent(record_kv("web.default", "a", 13)),)))
    assert view.put_config("web.default", GroupConfig(3, {}, 20))
    assert not view.apply(WatchBatch(20, events=(
        WatchEvent(kv(KEYS.config("web.default"), GroupConfig(3, {}).encode(), 20)),)))


def test_a_bad_record_is_left_out_and_reported() -> None:
    view = KeyspaceView(KEYS)
    view.apply(WatchBatch(3, reset=True, kvs=(record_kv("web.default", "a", 2),)))
    changes = view.apply(WatchBatch(4, events=(
        WatchEvent(kv(KEYS.member("web.default", "a"), b"garbage", 4)),)))
    assert changes.groups == {"web.default"} and not list(view.records())
    assert list(view.problems.values()) == [
        "/corral/default/members/web.default/a: ignored: not JSON "
        "(Expecting value: line 1 column 1 (char 0))"]
    mismatched = record_kv("web.default", "x", 5)  # stored under another member's key
    view.apply(WatchBatch(5, events=(WatchEvent(kv(KEYS.member("web.default", "b"),
                                                   mismatched.value, 5)),)))
    assert "do not match its key" in view.problems[KEYS.member("web.default", "b")]
    view.apply(WatchBatch(6, events=(WatchEvent(
        KeyValue(KEYS.member("web.default", "a"), mod_revision=6), deleted=True),)))
    assert KEYS.member("web.default", "a") not in view.problems


def test_the_view_snapshot_loads_back() -> None:
    view = KeyspaceView(KEYS)
    view.apply(WatchBatch(9, reset=True, kvs=(
        record_kv("web.default", "a", 5),
        kv(KEYS.config("web.default"), GroupConfig(1, {"a": [1]}).encode(), 7))))
    copy = KeyspaceView(KEYS)
    copy.load(json.loads(json.dumps(view.snapshot())))
    assert copy.members == view.members and copy.configs == view.configs
    assert copy.revision == 9 and not copy.synced


# -------------------------------------------------------------------------- group configs
def test_config_rules() -> None:
    """Versions are whole numbers from 1; values are a JSON mapping with well-formed
    references; a version must be higher than the current one."""
    assert check_config("web.default", 1, {"a": "${X}"}) == GroupConfig(1, {"a": "${X}"})
    for version in (0, -1, 1.5, True, "2"):
        with pytest.raises(SpecError):
            check_config("web.default", version, {})  # type: ignore[arg-type]
    with pytest.raises(SpecError) as failed:
        check_config("web.default", 1, {"a": "${X"})
    assert str(failed.value).startswith("web.default config: a: '${' without a closing '}'")
    with pytest.raises(SpecError) as too_big:
        check_config("web.default", 1, {"blob": "x" * (1024 * 1024)})
    assert "the limit is 1048576" in str(too_big.value)
    refuse_unless_newer("web.default", None, 1)
    refuse_unless_newer("web.default", GroupConfig(4, {}), 5)
    with pytest.raises(Conflict) as refused:
        refuse_unless_newer("web.default", GroupConfig(4, {}), 4)
    assert str(refused.value) == ("web.default is at config version 4: apply a version higher "
                                  "than 4 (got 4)")


# ------------------------------------------------------------------------------ endpoints
def test_endpoints_are_normalised() -> None:
    assert parse_endpoints("10.0.0.1,10.0.0.2:2381 https://etcd.example:443") == (
        "http://10.0.0.1:2379", "http://10.0.0.2:2381", "https://etcd.example:443")
    assert parse_endpoints(["h1", "h1:2379", "[fd00::1]:2379"], tls=True) == (
        "https://h1:2379", "https://[fd00::1]:2379")
    for bad in ("ftp://h:1", "http://h:1/path", "http://:1", "h:99999", "http://u:p@h:1"):
        with pytest.raises(SpecError) as failed:
            parse_endpoints(bad)
        assert str(failed.value).startswith(f"invalid etcd endpoint {bad!r}")
    with pytest.raises(SpecError):
        parse_endpoints("  # only a comment\n")


def test_an_endpoints_file(tmp_path: Path) -> None:
    path = tmp_path / "endpoints"
    path.write_text("# peers\nhttp://10.0.0.1:2379\n\n10.0.0.2  # second\n")
    assert read_endpoints_file(path) == ("http://10.0.0.1:2379", "http://10.0.0.2:2379")
    path.write_text("bad://x\n")
    with pytest.raises(SpecError) as failed:
        read_endpoints_file(path)
    assert str(failed.value).startswith(f"{path}: invalid etcd endpoint 'bad://x'")


def test_settings_hide_the_password_and_check_pairs() -> None:
    settings = EtcdSettings(("http://h:2379",), user="corral", password="hunter2")
    assert "hunter2" not in repr(settings)
    with pytest.raises(SpecError):
        EtcdSettings(("http://h:2379",), cert=Path("c.pem"))
    with pytest.raises(SpecError):
        EtcdSettings(("http://h:2379",), user="corral")
    with pytest.raises(SpecError):
        EtcdSettings(())
