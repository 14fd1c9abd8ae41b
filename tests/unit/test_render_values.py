"""Config values (corral.render.values): loading by extension, errors with file and line,
layering with provenance, ${SECRET} references found and resolved without leaking."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.errors import SpecError
from corral.render import (
    Layer,
    check_values,
    layer,
    load_values,
    parse_values,
    resolve_secrets,
    secret_references,
)

EXPECTED = {"port": 6379, "tags": ["a", "b"], "db": {"host": "10.0.0.5", "tls": True}}


@pytest.mark.parametrize(("name", "text"), [
    ("redis.toml", 'port = 6379\ntags = ["a", "b"]\n[db]\nhost = "10.0.0.5"\ntls = true\n'),
    ("redis.yaml", "port: 6379\ntags: [a, b]\ndb:\n  host: 10.0.0.5\n  tls: true\n"),
    ("redis.YML", "port: 6379\ntags: [a, b]\ndb: {host: 10.0.0.5, tls: true}\n"),
    ("redis.json", '{"port": 6379, "tags": ["a", "b"], "db": {"host": "10.0.0.5", "tls": true}}'),
])
def test_a_file_is_read_by_its_extension(tmp_path: Path, name: str, text: str) -> None:
    """TOML, YAML (.yaml, .yml) and JSON give the same values."""
    path = tmp_path / name
    path.write_text(text)
    assert load_values(path) == EXPECTED


@pytest.mark.parametrize(("name", "text", "message"), [
    ("c.toml", 'port = 1\nhost = \n', "c.toml:2: Invalid value"),
    ("c.yaml", "port: 1\n  host: [\n", "c.yaml:2: mapping values are not allowed here"),
    ("c.json", '{"port": 1,\n "host": }', "c.json:2: Expecting value"),
    ("c.json", "[1, 2]", "c.json: the top level must be a mapping of names to values, not a list"),
    ("c.yaml", "- 1\n", "c.yaml: the top level must be a mapping of names to values, not a list"),
    ("c.ini", "port=1", "c.ini: unknown config format '.ini'; use .toml, .yaml, .yml or .json"),
    ("c.toml", "when = 1979-05-27\n", "c.toml: when: a date cannot be stored"),
    ("c.yaml", "1: one\n", "c.yaml: (top): key 1 is not text"),
    ("c.yaml", "a: {b: [1, .inf]}\n", "c.yaml: a.b[1]: inf cannot be stored"),
])
def test_bad_files_name_the_file_and_line(tmp_path: Path, name: str, text: str,
                                          message: str) -> None:
    """Parse errors say file:line; values JSON cannot carry say their path."""
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(SpecError) as failed:
        load_values(path)
    assert str(failed.value).startswith(str(tmp_path / message)), str(failed.value)
    assert "\n" not in str(failed.value)


def test_a_missing_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as failed:
        load_values(tmp_path / "nope.toml")
    assert str(failed.value) == f"{tmp_path / 'nope.toml'}: cannot read: No such file or directory"


def test_an_empty_yaml_file_is_no_values() -> None:
    assert parse_values("", "yaml", "empty.yaml") == {}


def test_layering_merges_mappings_and_remembers_each_source() -> None:
    """defaults < host file < group config: mappings merge key by key, anything else is
    replaced whole, and every leaf says which layer gave it."""
    defaults = {"port": 6379, "db": {"host": "localhost", "user": "app"}, "tags": ["x"],
                "limits": {"memory": "1G"}}
    host = {"db": {"host": "10.0.0.5"}, "limits": "none"}
    group = {"tags": ["y", "z"], "db": {"pool": {"size": 5}}}
    merged = layer([Layer("default", defaults), Layer("host file /etc/r.toml", host),
                    Layer("group config v3", group)])
    assert merged.values == {"port": 6379, "tags": ["y", "z"], "limits": "none",
                             "db": {"host": "10.0.0.5", "user": "app", "pool": {"size": 5}}}
    assert merged.rows() == [
        ("db.host", "10.0.0.5", "host file /etc/r.toml"),
        ("db.pool.size", 5, "group config v3"),
        ("db.user", "app", "default"),
        ("limits", "none", "host file /etc/r.toml"),
        ("port", 6379, "default"),
        ("tags", ["y", "z"], "group config v3"),
    ]
    assert defaults["db"] == {"host": "localhost", "user": "app"}, "an input was changed"


def test_a_mapping_replacing_a_leaf_takes_over_its_provenance() -> None:
    """A mapping over text replaces it; an empty mapping over a mapping changes nothing."""
    merged = layer([Layer("default", {"db": "sqlite"}),
                    Layer("group config v1", {"db": {"host": "h"}})])
    assert merged.rows() == [("db.host", "h", "group config v1")]
    back = layer([Layer("default", {"db": {"host": "h", "port": 1}}),
                  Layer("host file f", {"db": {}})])
    assert back.rows() == [("db.host", "h", "default"), ("db.port", 1, "default")]
    filled = layer([Layer("default", {"db": {}}), Layer("group config v2", {"db": {"a": 1}})])
    assert filled.rows() == [("db.a", 1, "group config v2")]


def test_secret_references_are_found_and_resolved_per_host() -> None:
    """References are listed with their paths; resolving puts values in a copy; a secret
    that is not set is an error naming the paths, never a value."""
    values = {"db": {"password": "${DB_PASS}", "url": "pg://app:${DB_PASS}@h/${DB}"},
              "list": ["${TOKEN}", 1], "literal": "$${NOT_A_SECRET}"}
    assert secret_references(values) == {"DB_PASS": ["db.password", "db.url"], "DB": ["db.url"],
                                         "TOKEN": ["list[0]"]}
    secrets = {"DB_PASS": "p@ss", "DB": "main", "TOKEN": "t0k"}
    resolved = resolve_secrets(values, secrets)
    assert resolved == {"db": {"password": "p@ss", "url": "pg://app:p@ss@h/main"},
                        "list": ["t0k", 1], "literal": "${NOT_A_SECRET}"}
    assert values["db"]["password"] == "${DB_PASS}"
    with pytest.raises(SpecError) as failed:
        resolve_secrets(values, {"DB": "main"}, source="redis.default config")
    assert failed.value.problems == [
        "redis.default config: db.password, db.url: secret 'DB_PASS' is not set on this host; "
        "set it with: corral secret set DB_PASS -",
        "redis.default config: list[0]: secret 'TOKEN' is not set on this host; "
        "set it with: corral secret set TOKEN -"]
    assert "main" not in str(failed.value)


def test_a_malformed_reference_names_its_path() -> None:
    with pytest.raises(SpecError) as failed:
        secret_references({"a": {"b": "x${UNCLOSED"}})
    assert str(failed.value).startswith("config: a.b: '${' without a closing '}'")


def test_check_values_accepts_what_json_carries() -> None:
    check_values({"a": [1, 2.5, None, True, "x", {"b": []}]}, "here")
    with pytest.raises(SpecError) as failed:
        check_values({"a": {"b": {1, 2}}}, "here")
    assert str(failed.value).startswith("here: a.b: a set cannot be stored")
