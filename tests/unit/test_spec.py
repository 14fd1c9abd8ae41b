"""Tests of corral.spec: parsing of durations and sizes, models, validation and locations."""

from __future__ import annotations

import textwrap

import pytest
import yaml
from pydantic import ValidationError

from corral.errors import SpecError
from corral.spec import (
    HealthSpec,
    ProcessSpec,
    ServiceSpec,
    Target,
    format_duration,
    format_size,
    load_process,
    load_target,
    parse_duration,
    parse_signal,
    parse_size,
    reader,
    validate_process,
    validate_target,
)

SHA = "0123456789abcdef" * 4

FULL = f"""\
processes:
  - name: web
    command: ["python", "server.py"]
    env: {{DATABASE_URL: "${{DATABASE_URL}}", PORT: 8080}}
    resources: [{{id: "{SHA}", file: ./bundle.tar.gz}}]
    before: "tar -xf bundle.tar.gz"
    instances: 2
    receives: [traffic]
    health: {{http: {{service: traffic, path: /health}}, interval: 5s, start_period: 1m30s}}
    readiness: health
    watchdog: 250ms
    restart: {{policy: on-failure, exit_codes: {{3: never}}, backoff_max: 1h}}
    stop: {{signal: SIGINT, timeout: 8s}}
    logs: {{format: raw, max_bytes: 1MiB, keep: 2}}
    limits: {{memory: 512MiB, cpu: 150%}}
    depends_on: [db]
    umask: "027"
    rlimits: {{nofile: 4096, core: unlimited}}
  - name: db
    command: postgres -D /data
    health: {{tcp: {{port: 5432}}}}
  - name: worker
    command: [worker]
    health: {{exec: [check, --quick]}}
services:
  - name: traffic
    on: 127.0.0.1:5000
    balance: least-connections
"""


def problems(text: str, source: str = "target.yaml") -> list[str]:
    """The problem lines that loading ``text`` as a target reports."""
    with pytest.raises(SpecError) as info:
        load_target(textwrap.dedent(text), source)
    return info.value.problems


def one_problem(text: str) -> str:
    """The single problem line that loading ``text`` as a target reports."""
    found = problems(text)
    assert len(found) == 1, found
    return found[0]


# --- durations, sizes, signals ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("5s", 5.0),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("1.5s", 1.5),
        ("0", 0.0),
        ("0.1m", 6.0),
        (" 10 ", 10.0),
        (3, 3.0),
        (2.5, 2.5),
    ],
)
def test_parse_duration_accepts_numbers_and_units(text: object, seconds: float) -> None:
    """A duration is seconds as a number, or a number with ms/s/m/h, possibly combined."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["-1s", -1, "5x", "", "soon", "1h-30m", "1.s", True, None, 1e30])
def test_parse_duration_rejects_negative_and_garbage(bad: object) -> None:
    """A negative, unreadable or absurd duration is a ValueError."""
    with pytest.raises(ValueError, match=r"negative|invalid|duration|too long"):
        parse_duration(bad)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (8.0, "8s"),
        (0.25, "250ms"),
        (3600, "1h"),
        (90, "1m30s"),
        (0, "0s"),
        (1.5, "1.5s"),
        (0.0005, "0.5ms"),
        (5400.5, "1h30m0.5s"),
    ],
)
def test_format_duration_is_short_and_readable(seconds: float, text: str) -> None:
    """format_duration writes the shortest combination of h, m, s and ms."""
    assert format_duration(seconds) == text


@pytest.mark.parametrize("seconds", [0.001, 0.1, 0.3, 1.1, 59.999, 61.25, 86400.0, 12345.678901])
def test_format_duration_round_trips(seconds: float) -> None:
    """parse_duration reads what format_duration writes back to the same float."""
    value = parse_duration(seconds)
    assert parse_duration(format_duration(value)) == value


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512MiB", 512 * 2**20),
        ("10MiB", 10 * 2**20),
        ("1GiB", 2**30),
        ("64KiB", 65536),
        ("100MB", 100_000_000),
        ("1G", 2**30),
        ("10mib", 10 * 2**20),
        ("1.5KiB", 1536),
        ("4096", 4096),
        (4096, 4096),
    ],
)
def test_parse_size_accepts_binary_and_decimal_units(text: object, size: int) -> None:
    """A size is bytes, or a number with KiB/MiB/GiB (binary), KB/MB/GB (decimal) or K/M/G (binary)."""
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["-1", -5, "10XB", "lots", "", True, 1.5, None])
def test_parse_size_rejects_negative_and_garbage(bad: object) -> None:
    """A negative or unreadable size is a ValueError."""
    with pytest.raises(ValueError, match=r"negative|invalid size"):
        parse_size(bad)


@pytest.mark.parametrize(
    ("size", "text"),
    [(10 * 2**20, "10MiB"), (4096, "4KiB"), (2**30, "1GiB"), (1000, "1000B"), (0, "0B")],
)
def test_format_size_uses_the_largest_exact_binary_unit(size: int, text: str) -> None:
    """format_size picks the largest binary unit that divides the size, else bytes."""
    assert format_size(size) == text
    assert parse_size(text) == size


@pytest.mark.parametrize("given", ["TERM", "SIGTERM", "sigterm", "15", 15, " term "])
def test_parse_signal_normalises_to_the_bare_name(given: object) -> None:
    """A signal may be given as a name with or without SIG, in any case, or as a number."""
    assert parse_signal(given) == "TERM"


@pytest.mark.parametrize("bad", ["FOO", "SIG", "999", "", True])
def test_parse_signal_rejects_unknown_signals(bad: object) -> None:
    """A signal the host does not know is a ValueError."""
    with pytest.raises(ValueError, match="unknown signal"):
        parse_signal(bad)


# --- models and defaults --------------------------------------------------------------------------


def test_process_defaults() -> None:
    """A process with only a name and a command gets the documented defaults."""
    p = ProcessSpec(name="web", command=["x"])
    assert (p.instances, p.readiness, p.env, p.depends_on, p.health) == (1, "started", {}, [], None)
    assert (p.restart.policy, p.restart.cooldown, p.restart.exit_codes) == ("always", 60.0, {})
    assert (p.restart.backoff_min, p.restart.backoff_max, p.restart.max_restarts) == (
        0.5,
        300.0,
        None,
    )
    assert (p.stop.signal, p.stop.timeout) == ("TERM", 8.0)
    assert (p.logs.format, p.logs.max_bytes, p.logs.keep) == ("stamped", 10 * 2**20, 5)
    assert (p.limits.memory, p.limits.cpu, p.limits.grace) == (None, None, 10.0)
    assert p.to_dict() == {"name": "web", "command": ["x"]}


def test_health_and_service_defaults() -> None:
    """Health checks and services get the documented defaults."""
    h = HealthSpec.model_validate({"tcp": {"port": 80}})
    assert (h.kind, h.interval, h.timeout, h.retries, h.start_period) == ("tcp", 5.0, 2.0, 3, 0.0)
    assert h.restart_on_unhealthy is True
    s = ServiceSpec.model_validate({"name": "traffic", "on": ":5000"})
    assert (s.balance, s.mode, s.drain_timeout) == ("round-robin", "proxy", 30.0)
    assert (s.bind_host, s.port) == ("0.0.0.0", 5000)


def test_durations_and_sizes_are_numbers_inside_and_text_outside() -> None:
    """Durations are float seconds and sizes int bytes as attributes, human text when dumped."""
    p = validate_process(
        {
            "name": "x",
            "command": "y",
            "stop": {"timeout": 90},
            "logs": {"max_bytes": "64KiB"},
            "limits": {"cpu": 150, "memory": 2**30},
        },
        "cli",
    )
    assert (p.stop.timeout, p.logs.max_bytes, p.limits.cpu) == (90.0, 65536, 150.0)
    assert p.to_dict()["stop"] == {"timeout": "1m30s"}
    assert p.to_dict()["logs"] == {"max_bytes": "64KiB"}
    assert p.to_dict()["limits"] == {"memory": "1GiB", "cpu": "150%"}


def test_argv_of_a_string_command_runs_the_shell() -> None:
    """A string command runs as /bin/sh -c; a list command is the argv itself."""
    assert ProcessSpec(name="a", command="echo hi | wc").argv == ["/bin/sh", "-c", "echo hi | wc"]
    assert ProcessSpec(name="a", command=["echo", "hi"]).argv == ["echo", "hi"]


def test_models_are_frozen() -> None:
    """A spec cannot be changed in place."""
    p = ProcessSpec(name="a", command="x")
    with pytest.raises(ValidationError):
        p.instances = 3


def test_full_example_loads_with_normalised_values() -> None:
    """The design's example loads; signals, umask, env numbers, rlimits and paths are normalised."""
    target = load_target(FULL, "target.yaml")
    web = target.process("web")
    assert web is not None and target.process("nope") is None
    assert web.stop.signal == "INT" and web.umask == "027"
    assert web.env == {"DATABASE_URL": "${DATABASE_URL}", "PORT": "8080"}
    assert web.rlimits == {"nofile": 4096, "core": -1}
    assert web.resources[0].file == "bundle.tar.gz"
    assert web.restart.exit_codes == {3: "never"}
    assert web.health is not None and web.health.kind == "http"
    assert (web.watchdog, web.health.start_period) == (0.25, 90.0)
    assert target.services[0].on == "127.0.0.1:5000"


def test_to_yaml_round_trips_and_is_stable() -> None:
    """load -> to_yaml -> load gives an equal target, and to_yaml of that is the same text."""
    target = load_target(FULL, "target.yaml")
    text = target.to_yaml()
    again = load_target(text, "canonical.yaml")
    assert again == target
    assert again.to_yaml() == text
    assert "backoff_min" not in text and "services:" in text


def test_to_dict_round_trips_through_model_validate() -> None:
    """Each process's to_dict() validates back to an equal ProcessSpec."""
    for p in load_target(FULL, "target.yaml").processes:
        assert ProcessSpec.model_validate(p.to_dict()) == p


def test_to_yaml_omits_empty_sections() -> None:
    """A target without services writes no services key; an empty target writes an empty mapping."""
    assert "services" not in Target(processes=[ProcessSpec(name="a", command="x")]).to_yaml()
    assert Target().to_yaml() == "{}\n"
    assert load_target(Target().to_yaml(), "t") == Target()


@pytest.mark.parametrize("text", ["", "# nothing\n", "processes:\nservices:\n"])
def test_empty_document_is_an_empty_target(text: str) -> None:
    """An empty document, or empty sections, give an empty target."""
    assert load_target(text, "t.yaml") == Target()


def test_load_process_reads_one_process() -> None:
    """load_process reads the spec file of ``svc load -f``."""
    p = load_process("name: api\ncommand: [api, --port, '80']\ninstances: 3\n", "spec.yaml")
    assert (p.name, p.argv, p.instances) == ("api", ["api", "--port", "80"], 3)


def test_yaml_on_key_is_not_a_boolean() -> None:
    """``on:`` stays a key (YAML 1.1 would read it as true), and yes/no still work for booleans."""
    target = load_target(
        "services: [{name: s, on: ':80'}]\n"
        "processes: [{name: p, command: x, health: {tcp: {port: 1}, restart_on_unhealthy: no}}]\n",
        "t.yaml",
    )
    assert target.services[0].on == ":80"
    health = target.processes[0].health
    assert health is not None and health.restart_on_unhealthy is False


# --- validation: every problem names file, line and field -----------------------------------------

P = "processes:\n  - name: web\n    command: [run]\n"  # problems in the 4th line on


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            "    restart: {policy: sometimes}\n",
            "target.yaml:4: processes[0].restart.policy: must be one of always, on-failure, never",
        ),
        (
            "    restart:\n      policy: always\n      backof_max: 1h\n",
            "target.yaml:6: processes[0].restart.backof_max: unknown field 'backof_max' (allowed: "
            "policy, exit_codes, cooldown, backoff_min, backoff_max, max_restarts)",
        ),
        (
            "    restart: {backoff_max: 25h}\n",
            "target.yaml:4: processes[0].restart.backoff_max: must be at most 24h",
        ),
        (
            "    restart: {backoff_min: 10s, backoff_max: 5s}\n",
            "target.yaml:4: processes[0].restart.backoff_max: must be at least backoff_min (10s)",
        ),
        (
            "    restart: {max_restarts: -1}\n",
            "target.yaml:4: processes[0].restart.max_restarts: must be at least 0",
        ),
        (
            "    restart: {exit_codes: {1: sometimes}}\n",
            "target.yaml:4: processes[0].restart.exit_codes[1]: must be one of always, never",
        ),
        (
            "    restart: {cooldown: soon}\n",
            "target.yaml:4: processes[0].restart.cooldown: invalid duration 'soon': use a number "
            "and ms, s, m or h (250ms, 1h30m)",
        ),
        (
            "    stop: {signal: FOO}\n",
            "target.yaml:4: processes[0].stop.signal: unknown signal 'FOO' (e.g. TERM, INT, HUP, "
            "QUIT, KILL)",
        ),
        (
            "    stop: {timeout: -1s}\n",
            "target.yaml:4: processes[0].stop.timeout: must not be negative, got '-1s'",
        ),
        (
            "    logs: {max_bytes: 1KiB}\n",
            "target.yaml:4: processes[0].logs.max_bytes: must be at least 4096",
        ),
        ("    logs: {keep: 101}\n", "target.yaml:4: processes[0].logs.keep: must be at most 100"),
        (
            "    logs: {format: json}\n",
            "target.yaml:4: processes[0].logs.format: must be one of stamped, raw",
        ),
        (
            "    limits: {cpu: lots}\n",
            "target.yaml:4: processes[0].limits.cpu: invalid percentage 'lots': use a number like "
            "150 or '150%'",
        ),
        (
            "    limits: {memory: 0}\n",
            "target.yaml:4: processes[0].limits.memory: must be greater than 0",
        ),
        (
            "    instances: 1001\n",
            "target.yaml:4: processes[0].instances: must be at most 1000",
        ),
        ("    instances: many\n", "target.yaml:4: processes[0].instances: must be an integer"),
        (
            "    readiness: health\n",
            "target.yaml:4: processes[0].readiness: readiness 'health' needs a health check",
        ),
        (
            "    readiness: ready\n",
            "target.yaml:4: processes[0].readiness: must be one of started, health, notify",
        ),
        (
            "    depends_on: [web]\n",
            "target.yaml:4: processes[0].depends_on[0]: a process cannot depend on itself",
        ),
        (
            "    env:\n      GOOD: x\n      1BAD: y\n",
            "target.yaml:6: processes[0].env.1BAD: invalid variable name '1BAD': use A-Z a-z 0-9 _,"
            " not starting with a digit",
        ),
        ("    env: {A: [1]}\n", "target.yaml:4: processes[0].env.A: must be a string"),
        (
            "    umask: 022\n",
            'target.yaml:4: processes[0].umask: must be a quoted octal string like "022" (YAML '
            "reads 022 as a number)",
        ),
        (
            "    umask: '088'\n",
            "target.yaml:4: processes[0].umask: invalid umask '088': use octal digits like \"022\""
            ' or "077"',
        ),
        (
            "    rlimits: {NOFILE: 10}\n",
            "target.yaml:4: processes[0].rlimits.NOFILE: must be one of nofile, nproc, core, as, "
            "fsize, stack, memlock, cpu",
        ),
        (
            "    resources: [{id: abc, file: x}]\n",
            "target.yaml:4: processes[0].resources[0].id: must be a sha256 (64 lower-case hex "
            "digits, as printed by corral resource up) or a secret holding one: ${NAME}",
        ),
        (
            f"    resources: [{{id: {SHA}, file: /etc/passwd}}]\n",
            "target.yaml:4: processes[0].resources[0].file: must be a relative file path, got "
            "'/etc/passwd'",
        ),
        (
            f"    resources: [{{id: {SHA}, file: a/../../x}}]\n",
            "target.yaml:4: processes[0].resources[0].file: must stay inside the working "
            "directory, got 'a/../../x'",
        ),
        (
            f"    resources:\n      - {{id: {SHA}, file: a}}\n      - {{id: {SHA}, file: ./a}}\n",
            "target.yaml:6: processes[0].resources[1].file: file 'a' is placed twice",
        ),
        (
            "    health: {tcp: {port: 1}, exec: [x]}\n",
            "target.yaml:4: processes[0].health: give exactly one of http, tcp or exec (got tcp, "
            "exec)",
        ),
        (
            "    health: {interval: 1s}\n",
            "target.yaml:4: processes[0].health: give exactly one of http, tcp or exec",
        ),
        (
            "    health: {http: {port: 80, service: s}}\n",
            "target.yaml:4: processes[0].health.http: give exactly one of port or service",
        ),
        (
            "    health: {http: {port: 80, path: health}}\n",
            "target.yaml:4: processes[0].health.http.path: must start with '/', got 'health'",
        ),
        (
            "    health: {tcp: {port: 70000}}\n",
            "target.yaml:4: processes[0].health.tcp.port: must be at most 65535",
        ),
        ("    health: {exec: []}\n", "target.yaml:4: processes[0].health.exec: must not be empty"),
        (
            "    health: {exec: [x], retries: 0}\n",
            "target.yaml:4: processes[0].health.retries: must be at least 1",
        ),
        (
            "    health:\n      http: {service: traffic}\n",
            "target.yaml:5: processes[0].health.http.service: service 'traffic' is not one this "
            "process receives",
        ),
        ("    restart: always\n", "target.yaml:4: processes[0].restart: must be a mapping"),
    ],
)
def test_process_problem_names_file_line_and_field(extra: str, expected: str) -> None:
    """Each invalid process field is reported as <file>:<line>: <field path>: <message>."""
    assert one_problem(P + extra) == expected


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        (
            "  - name: Web\n    command: x\n",
            "target.yaml:2: processes[0].name: invalid name 'Web': use at most 64 of a-z 0-9 _ . - "
            "starting with a letter or digit",
        ),
        (
            "  - name: " + "a" * 65 + "\n    command: x\n",
            "target.yaml:2: processes[0].name: invalid name '" + "a" * 65 + "': use at most 64 of "
            "a-z 0-9 _ . - starting with a letter or digit",
        ),
        ("  - command: x\n", "target.yaml:2: processes[0].name: required field is missing"),
        (
            "  - name: a\n    command: []\n",
            "target.yaml:3: processes[0].command: must be a non-empty list of strings, or a "
            "non-empty string for /bin/sh -c",
        ),
        (
            "  - name: a\n    command: [sleep, 10]\n",
            "target.yaml:3: processes[0].command: item 1 must be a string, not int",
        ),
        ("  - just a string\n", "target.yaml:2: processes[0]: must be a mapping"),
    ],
)
def test_process_entry_problems(entry: str, expected: str) -> None:
    """Bad names, missing fields and bad commands name the entry's line and field."""
    assert one_problem("processes:\n" + entry) == expected


@pytest.mark.parametrize(
    ("on", "message"),
    [
        ("127.0.0.1", "must be host:port, e.g. 127.0.0.1:5000 or :5000, not '127.0.0.1'"),
        ("127.0.0.1:0", "port must be a number from 1 to 65535, not '0'"),
        ("127.0.0.1:http", "port must be a number from 1 to 65535, not 'http'"),
        ("example.com:80", "host must be an IP address, localhost, * or empty, not 'example.com'"),
        ("::1:80", "write an IPv6 address in brackets, e.g. [::1]:80"),
    ],
)
def test_service_address_problems(on: str, message: str) -> None:
    """A service's ``on`` must be host:port with an IP, localhost or wildcard host."""
    text = f"services:\n  - name: s\n    on: '{on}'\n"
    assert one_problem(text) == f"target.yaml:3: services[0].on: {message}"


@pytest.mark.parametrize(
    "on", ["127.0.0.1:80", "localhost:80", ":80", "*:80", "[::1]:80", "0.0.0.0:80"]
)
def test_service_address_forms(on: str) -> None:
    """IPv4, bracketed IPv6, localhost and the wildcard forms are accepted."""
    assert ServiceSpec(name="s", on=on).port == 80


def test_duplicate_names_and_port_clashes_are_reported() -> None:
    """Duplicate process and service names, and two services on one address, are problems."""
    found = problems(
        """\
        processes:
          - {name: a, command: x}
          - {name: a, command: y}
        services:
          - {name: s, on: "*:80"}
          - {name: s, on: "127.0.0.2:81"}
          - {name: t, on: "127.0.0.1:80"}
          - {name: u, on: "localhost:81"}
          - {name: v, on: "127.0.0.1:81"}
        """
    )
    assert found == [
        "target.yaml:3: processes[1].name: duplicate name 'a' (also processes[0])",
        "target.yaml:6: services[1].name: duplicate name 's' (also services[0])",
        "target.yaml:7: services[2].on: address 127.0.0.1:80 clashes with services[0] (s, *:80)",
        "target.yaml:9: services[4].on: address 127.0.0.1:81 clashes with services[3] "
        "(u, localhost:81)",
    ]


def test_unknown_references_are_reported() -> None:
    """depends_on naming an unknown process and receives naming an unknown service are problems."""
    found = problems(
        """\
        processes:
          - name: a
            command: x
            depends_on: [b, ghost]
            receives: [nowhere]
          - {name: b, command: x}
        """
    )
    assert found == [
        "target.yaml:4: processes[0].depends_on[1]: unknown process 'ghost'",
        "target.yaml:5: processes[0].receives[0]: unknown service 'nowhere'",
    ]


def test_dependency_cycles_are_named() -> None:
    """A dependency cycle is reported once, naming its processes in order."""
    found = problems(
        """\
        processes:
          - {name: a, command: x, depends_on: [b]}
          - {name: b, command: x, depends_on: [c]}
          - {name: c, command: x, depends_on: [a]}
          - {name: d, command: x, depends_on: [a, e]}
          - {name: e, command: x, depends_on: [d]}
        """
    )
    assert found == [
        "target.yaml:2: processes[0].depends_on: dependency cycle: a -> b -> c -> a",
        "target.yaml:5: processes[3].depends_on: dependency cycle: d -> e -> d",
    ]


def test_several_problems_are_reported_together() -> None:
    """Field problems in several entries and cross-entry problems come in one error, in file order."""
    with pytest.raises(SpecError) as info:
        load_target(
            textwrap.dedent(
                """\
                processes:
                  - name: a
                    command: x
                    restart: {policy: sometimes}
                    depends_on: [b]
                  - name: b
                    command: x
                    instances: -1
                    colour: red
                  - {name: a, command: y}
                  - {name: c, command: y, depends_on: [ghost]}
                """
            ),
            "target.yaml",
        )
    err = info.value
    assert err.problems == [
        "target.yaml:4: processes[0].restart.policy: must be one of always, on-failure, never",
        "target.yaml:8: processes[1].instances: must be at least 0",
        "target.yaml:9: processes[1].colour: unknown field 'colour' (allowed: name, command, env, "
        "cwd, resources, before, instances, receives, health, readiness, start_seconds, "
        "start_timeout, watchdog, restart, stop, "
        "logs, limits, hooks, rollout_timeout, replace, depends_on, user, group, umask, rlimits, "
        "cluster, config, templates, binds, binding_mode, exports)",
        "target.yaml:10: processes[2].name: duplicate name 'a' (also processes[0])",
        "target.yaml:11: processes[3].depends_on[0]: unknown process 'ghost'",
    ]
    assert err.message == "5 problems in target.yaml:\n" + "\n".join(err.problems)
    assert err.code == "invalid_spec"


def test_single_problem_message_is_the_line_itself() -> None:
    """With one problem, the message is that problem's line, without a count."""
    with pytest.raises(SpecError) as info:
        load_target(P + "    instances: x\n", "t.yaml")
    assert str(info.value) == "t.yaml:4: processes[0].instances: must be an integer"


def test_dict_input_has_no_line_numbers() -> None:
    """Problems in dict input name the source and the field, without a line."""
    with pytest.raises(SpecError) as info:
        validate_process({"name": "x", "command": "y", "restart": {"policy": "no"}, "on": 1}, "cli")
    assert info.value.problems == [
        "cli: restart.policy: must be one of always, on-failure, never",
        "cli: on: unknown field 'on' (allowed: name, command, env, cwd, resources, before, "
        "instances, receives, health, readiness, start_seconds, start_timeout, watchdog, "
        "restart, stop, logs, limits, hooks, "
            "rollout_timeout, replace, "
        "depends_on, user, group, umask, rlimits, cluster, config, templates, binds, "
        "binding_mode, exports)",
    ]
    with pytest.raises(SpecError, match=r"^api: processes\[1\].name: duplicate name 'x'"):
        validate_target({"processes": [{"name": "x", "command": "a"}] * 2}, "api")


def test_yaml_syntax_errors_name_the_line() -> None:
    """A YAML syntax error is one problem with the file and line."""
    with pytest.raises(SpecError) as info:
        load_target("processes:\n  - name: a\n    command: [x\n", "t.yaml")
    assert info.value.problems[0].startswith("t.yaml:")
    assert "invalid YAML:" in info.value.message
    with pytest.raises(SpecError, match=r"^t.yaml:2: invalid YAML: .*another document"):
        load_target("a: 1\n---\nb: 2\n", "t.yaml")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("- a\n", "t.yaml:1: the top level must be a mapping, not a list"),
        ("hello\n", "t.yaml:1: the top level must be a mapping, not a str"),
        ("processes: {}\n", "t.yaml:1: processes: must be a list"),
        (
            "process: []\n",
            "t.yaml:1: process: unknown field 'process' (allowed: processes, services)",
        ),
    ],
)
def test_top_level_must_be_a_target_mapping(text: str, expected: str) -> None:
    """A target's top level must be a mapping of processes and services."""
    with pytest.raises(SpecError) as info:
        load_target(text, "t.yaml")
    assert info.value.problems == [expected]


def test_load_process_rejects_an_empty_document() -> None:
    """A process spec file must not be empty."""
    with pytest.raises(
        SpecError, match=r"^spec\.yaml: the top level must be a mapping, not an empty"
    ):
        load_process("", "spec.yaml")


def test_service_address_must_be_text() -> None:
    """A bare port number is not an address: the error says to write host:port."""
    assert one_problem("services: [{name: s, on: 80}]") == (
        "target.yaml:1: services[0].on: must be host:port, e.g. 127.0.0.1:5000 or :5000, not 80"
    )


def test_service_bind_host_and_clashes() -> None:
    """bind_host strips IPv6 brackets and maps wildcards; a wildcard clashes with any host."""
    v6 = ServiceSpec(name="a", on="[::1]:80")
    assert (v6.bind_host, v6.port) == ("::1", 80)
    assert ServiceSpec(name="b", on="*:80").clashes_with(v6)
    assert not ServiceSpec(name="c", on="127.0.0.1:80").clashes_with(v6)
    assert not ServiceSpec(name="d", on="127.0.0.1:81").clashes_with(
        ServiceSpec(name="e", on=":80")
    )


def test_constructing_an_invalid_target_directly_raises() -> None:
    """Cross-field checks also run when a Target is built in code (as a pydantic ValidationError)."""
    p = ProcessSpec(name="a", command="x", depends_on=["ghost"])
    with pytest.raises(ValidationError, match="unknown process 'ghost'"):
        Target(processes=[p])


def test_a_character_yaml_does_not_allow_is_one_line_with_its_line_number() -> None:
    with pytest.raises(SpecError) as info:
        load_target("processes:\n  - \x07\n", "target.yaml")
    assert info.value.message == \
        "target.yaml:2: invalid YAML: character #x0007 is not allowed in YAML"


@pytest.mark.parametrize("text", [
    "processes:\n  - name: web\n    command: [python3, -m, http.server, '8000']\n",
    "a: 1\nb: 1.5\nc: true\nd: false\ne: null\nf: ~\ng: ''\nh: 0x1F\ni: 1e3\nj: .inf\n",
    "on: yes\noff: no\nk: 2026-11-22\nl: 12:30\nm: -7\nn: +3\no: 0o17\np: 1_000\n",
    "env: {A: '1', B: \"two\", C: x y}\nlist: [1, two, 3.0, null, true]\n",
    "text: |\n  line one\n  line two\nfolded: >\n  a\n  b\n",
    "nested:\n  - - 1\n    - 2\n  - {x: [a, {y: z}]}\n",
    "quoted: '123'\nplain: 123\nneg: -0.5\nsci: 6.02e+23\nnan: .nan\n",
    "",
    "# only a comment\n",
])
def test_the_fast_yaml_reader_agrees_with_pyyaml(text: str) -> None:
    """`reader.plain_data` reads these documents itself and builds what `yaml.load` would."""
    expected = yaml.load(text, Loader=reader.FastLoader)  # a SafeLoader subclass
    got = reader.plain_data(text)
    assert got is not reader.UNUSUAL, "the fast reader handed a plain document over"
    assert _same(got, expected)


def _same(got: object, expected: object) -> bool:
    """Equal, of the same types all the way down, NaN equal to NaN."""
    if type(got) is not type(expected):
        return False
    if isinstance(got, dict) and isinstance(expected, dict):
        return list(got) == list(expected) and all(_same(got[k], expected[k]) for k in got)
    if isinstance(got, list) and isinstance(expected, list):
        return len(got) == len(expected) and all(map(_same, got, expected))
    if isinstance(got, float) and got != got:
        return expected != expected
    return got == expected


@pytest.mark.parametrize("text", [
    "x: !!str 5\n",                 # a tag
    "base: &b {a: 1}\nuse: *b\n",    # anchors and aliases
    "a: 1\na: 2\n",                 # a key given twice: the slow path names both lines
    "--- 1\n--- 2\n",               # several documents: yaml.load says why it refuses
    "? [a, b]\n: 1\n",              # a list as a key
    "<<: {a: 1}\nb: 2\n",            # a merge key
])
def test_the_fast_yaml_reader_hands_unusual_documents_over(text: str) -> None:
    """What `reader.plain_data` does not handle itself goes to PyYAML, never half-read."""
    assert reader.plain_data(text) is reader.UNUSUAL


def test_a_key_given_twice_is_refused_with_both_lines() -> None:
    """YAML loaders keep the last of two equal keys silently: a second `hooks:` would drop
    the first one's init hook without a word."""
    text = ("processes:\n  - name: db\n    command: [postgres]\n    hooks: {init: initdb}\n"
            "    user: postgres\n    hooks: {reload_signal: HUP}\n")
    with pytest.raises(SpecError) as info:
        load_target(text, "pg.yaml")
    assert info.value.message == \
        "pg.yaml:6: processes[0].hooks: given twice (also on line 4); merge the two"
    with pytest.raises(SpecError):
        load_process("name: a\ncommand: x\ncommand: y\n", "a.yaml")


def test_start_and_exec_code_defaults() -> None:
    """A started process is ready after 1 s, a start fails after 60 s, and an exec check
    fails on any non-zero exit unless Habitat's codes are asked for."""
    p = validate_process({"name": "x", "command": "y", "health": {"exec": ["true"]}}, "cli")
    assert (p.start_seconds, p.start_timeout) == (1.0, 60.0)
    assert p.health is not None and p.health.exec_codes == "standard"
    q = validate_process({"name": "x", "command": "y", "start_seconds": 0,
                          "start_timeout": "5m",
                          "health": {"exec": ["true"], "exec_codes": "habitat"}}, "cli")
    assert (q.start_seconds, q.start_timeout) == (0.0, 300.0)
    assert q.health is not None and q.health.exec_codes == "habitat"
    with pytest.raises(SpecError) as info:
        validate_process({"name": "x", "command": "y", "start_timeout": 0,
                          "health": {"exec": ["true"], "exec_codes": "nagios"}}, "cli")
    assert info.value.problems == [
        "cli: health.exec_codes: must be one of standard, habitat",
        "cli: start_timeout: must be greater than 0",
    ]


def test_group_fields_are_checked_with_where() -> None:
    """``config`` values JSON cannot carry, a bind that is not a service group, a template
    read from cwd that its own output would overwrite: one line each, with the field."""
    text = (P + "    cwd: /srv/app\n    templates: [app.conf]\n"
            "    binds: {db: postgres}\n    config: {when: 2024-01-01}\n")
    with pytest.raises(SpecError) as info:
        load_target(text, "t.yaml")
    assert sorted(p.split(": ", 1)[1] for p in info.value.problems) == [
        "processes[0].binds.db: 'postgres' is not a service group (<process>.<cluster group>, "
        "e.g. postgres.default)",
        "processes[0].config.when: a date cannot be stored; use text, a number, true/false, "
        "a list or a mapping",
        "processes[0].templates[0]: 'app.conf' is read from cwd and would be overwritten by "
        "its own output: name it app.conf.j2",
    ]
    spec = load_target(P + "    templates: [conf/app.conf.j2]\n    binding_mode: relaxed\n",
                       "t.yaml").processes[0]
    assert spec.template_files == {"conf/app.conf.j2": "conf/app.conf"}
    assert spec.binding_mode == "relaxed" and spec.uses_groups
