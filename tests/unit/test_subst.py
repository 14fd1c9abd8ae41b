"""Tests of ${NAME} substitution (corral.store.subst): grammar, fields, errors, no leaks."""

from __future__ import annotations

import pytest

from corral.errors import SpecError
from corral.spec import ProcessSpec
from corral.store import subst

VALUES = {"DB_PASS": "pa$$w0rd ${X}", "USER": "app", "EMPTY": "", "X": "should-not-expand"}


def spec(**fields: object) -> ProcessSpec:
    return ProcessSpec.model_validate({"name": "web", "command": ["run"], **fields})


# ------------------------------------------------------------------------------ grammar
@pytest.mark.parametrize(("text", "expected"), [
    ("plain", "plain"),
    ("${USER}", "app"),
    ("u=${USER}, p=${DB_PASS}", "u=app, p=pa$$w0rd ${X}"),
    ("${USER}${USER}", "appapp"),
    ("$${USER}", "${USER}"),
    ("$$${USER}", "$${USER}"),
    ("$$", "$$"),
    ("$HOME and $1 and $", "$HOME and $1 and $"),
    ("a$${b", "a${b"),
    ("${EMPTY}x", "x"),
    ("}{$}", "}{$}"),
    ("héllo ${USER} ✓", "héllo app ✓"),
])
def test_expand(text: str, expected: str) -> None:
    """References are replaced, $${ is a literal ${, any other $ is left to the program."""
    assert subst.expand(text, VALUES) == expected


def test_substitution_is_one_pass() -> None:
    """A value that contains ${X} is not expanded again."""
    out = subst.substitute(spec(env={"P": "${DB_PASS}"}), VALUES, "web")
    assert out.env["P"] == "pa$$w0rd ${X}"


@pytest.mark.parametrize(("text", "why"), [
    ("${", "without a closing"),
    ("abc ${USER", "without a closing"),
    ("${}", "invalid secret name ''"),
    ("${1ABC}", "invalid secret name '1ABC'"),
    ("${A-B}", "invalid secret name 'A-B'"),
    ("${ USER }", "invalid secret name ' USER '"),
    ("${USER:-x}", "invalid secret name 'USER:-x'"),
])
def test_bad_references_are_problems(text: str, why: str) -> None:
    """A ${ with a bad name or no closing brace is an error naming the process and field."""
    problems = subst.missing(spec(env={"K": text}), VALUES)
    assert len(problems) == 1
    assert problems[0].startswith("web.env.K: ") and why in problems[0]
    assert "$${" in problems[0]  # the message says how to write a literal
    with pytest.raises(SpecError):
        subst.substitute(spec(env={"K": text}), VALUES, "web")


# ------------------------------------------------------------------------------- fields
def test_every_field_is_substituted() -> None:
    """command items, env values, cwd and before are substituted; env keys are not."""
    s = spec(command=["/bin/${USER}", "--pass=${DB_PASS}", "x"], env={"U": "${USER}"},
             cwd="/srv/${USER}", before="echo ${USER}")
    out = subst.substitute(s, VALUES, "web")
    assert out.command == ["/bin/app", "--pass=pa$$w0rd ${X}", "x"]
    assert out.env == {"U": "app"}
    assert out.cwd == "/srv/app"
    assert out.before == "echo app"
    assert s.command == ["/bin/${USER}", "--pass=${DB_PASS}", "x"]  # the input is untouched


def test_a_shell_command_string_is_substituted() -> None:
    """A string command (run by /bin/sh -c) is substituted as one field."""
    out = subst.substitute(spec(command="exec server --user ${USER} $HOME"), VALUES, "web")
    assert out.command == "exec server --user app $HOME"


def test_other_fields_are_left_alone() -> None:
    """Hooks, health checks and names are not substitution fields."""
    s = spec(hooks={"init": "echo ${USER}"}, health={"exec": ["check", "${USER}"]})
    assert subst.references(s) == {}
    out = subst.substitute(s, VALUES, "web")
    assert out.hooks.init == "echo ${USER}" and out.health is not None
    assert out.health.exec == ["check", "${USER}"]


def test_a_spec_without_references_is_returned_as_is() -> None:
    """Nothing to substitute: the very same object comes back."""
    s = spec(env={"A": "b"}, cwd="/tmp")
    assert subst.substitute(s, {}, "web") is s


def test_an_escape_alone_still_makes_a_copy() -> None:
    """$${ with no secret at all still becomes ${ in the spec to spawn."""
    out = subst.substitute(spec(command=["echo", "$${HOME}"]), {}, "web")
    assert out.command == ["echo", "${HOME}"]


@pytest.mark.parametrize(("fields", "where"), [
    ({"command": ["${EMPTY}", "x"]}, "web.command[0]"),
    ({"command": "${EMPTY}"}, "web.command"),
    ({"cwd": "${EMPTY}"}, "web.cwd"),
    ({"before": "${EMPTY}"}, "web.before"),
])
def test_a_field_that_a_secret_empties_is_refused(fields: dict[str, object], where: str) -> None:
    """A required field that is empty once substituted is an error, not an empty argv."""
    with pytest.raises(SpecError) as caught:
        subst.substitute(spec(**fields), VALUES, "web")
    assert str(caught.value).startswith(where + ": is empty")


# --------------------------------------------------------------------------- references
def test_references_name_every_field_once() -> None:
    """references() maps each secret to the fields using it, in order of first use."""
    s = spec(command=["run", "${USER}", "${USER}"], env={"A": "${DB_PASS}${USER}", "B": "x"},
             cwd="/${DB_PASS}", before="${USER} ${USER}")
    assert subst.references(s) == {
        "USER": ["command[1]", "command[2]", "env.A", "before"],
        "DB_PASS": ["env.A", "cwd"]}


def test_references_skip_escapes_and_tolerate_bad_syntax() -> None:
    """An escaped $${X} is no reference; a field with bad syntax gives what precedes it."""
    s = spec(env={"A": "$${NOPE}", "B": "${USER} ${bad name}", "C": "${DB_PASS}"})
    assert subst.references(s) == {"USER": ["env.B"], "DB_PASS": ["env.C"]}


# ------------------------------------------------------------------------------ missing
def test_missing_secrets_name_the_process_field_and_fix() -> None:
    """Each missing secret is one problem naming the field and how to set it."""
    s = spec(env={"DATABASE_URL": "postgres://app:${DB_PASS}@db/app"}, cwd="${HOME_DIR}")
    assert subst.missing(s, ["USER"]) == [
        "web.env.DATABASE_URL: secret 'DB_PASS' is not set; set it with: "
        "corral secret set DB_PASS -",
        "web.cwd: secret 'HOME_DIR' is not set; set it with: corral secret set HOME_DIR -"]
    assert subst.missing(s, ["DB_PASS", "HOME_DIR"]) == []


def test_substitute_reports_every_problem_with_the_source() -> None:
    """Several problems come together, each prefixed by the source (a file name)."""
    s = spec(command=["${A}"], env={"K": "${B}"})
    with pytest.raises(SpecError) as caught:
        subst.substitute(s, {}, "target.yaml")
    err = caught.value
    assert err.problems == [
        "target.yaml: web.command[0]: secret 'A' is not set; set it with: corral secret set A -",
        "target.yaml: web.env.K: secret 'B' is not set; set it with: corral secret set B -"]
    assert str(err).startswith("2 problems in target.yaml:\n")


def test_no_value_appears_in_any_error() -> None:
    """Errors name secrets and fields, never a value, even with other secrets set."""
    s = spec(command=["${DB_PASS}", "${MISSING}"], env={"K": "${USER} ${bad"})
    with pytest.raises(SpecError) as caught:
        subst.substitute(s, VALUES, "web")
    text = str(caught.value) + repr(caught.value) + " ".join(caught.value.problems)
    for value in ("pa$$w0rd", "should-not-expand"):
        assert value not in text


# ----------------------------------------------------------------------- resource ids
SHA = "ab" * 32


def test_a_resource_id_can_come_from_a_secret() -> None:
    """resources[i].id may be ${NAME} (Launcho's deploy flow); it is a reference and is
    substituted with the sha256 the secret holds."""
    s = spec(resources=[{"id": "${BUNDLE_ID}", "file": "b.tgz"}, {"id": SHA, "file": "c"}])
    assert subst.references(s) == {"BUNDLE_ID": ["resources[0].id"]}
    out = subst.substitute(s, {"BUNDLE_ID": "cd" * 32}, "web")
    assert [r.id for r in out.resources] == ["cd" * 32, SHA]
    assert [r.file for r in out.resources] == ["b.tgz", "c"]
    assert subst.missing(s, []) == [
        "web.resources[0].id: secret 'BUNDLE_ID' is not set; set it with: "
        "corral secret set BUNDLE_ID -"]


def test_a_secret_that_is_no_resource_id_is_refused_without_its_value() -> None:
    """A secret holding something else than a sha256 is an error that does not show it."""
    s = spec(resources=[{"id": "${BUNDLE_ID}", "file": "b.tgz"}])
    with pytest.raises(SpecError) as caught:
        subst.substitute(s, {"BUNDLE_ID": "not-a-hash-hunter2"}, "web")
    assert str(caught.value).startswith("web.resources[0].id: the secret it names")
    assert "hunter2" not in str(caught.value)


# ------------------------------------------------------------- corral's own variables
def test_own_names_are_the_instance_and_the_ports_of_received_services() -> None:
    """CORRAL_SERVICE, CORRAL_INSTANCE and a SERVICE_PORT_* per proxied received service."""
    web = spec(receives=["web", "api-v2", "sock"])
    assert subst.own_names(web, proxied=["web", "api-v2"]) == [
        "CORRAL_SERVICE", "CORRAL_INSTANCE", "SERVICE_PORT_WEB", "SERVICE_PORT_API_V2"]
    assert subst.port_variable("api-v2") == "SERVICE_PORT_API_V2"


def test_own_variables_are_not_secrets() -> None:
    """${CORRAL_INSTANCE} and ${SERVICE_PORT_WEB} are no missing secrets and no secret
    references; they expand to the instance's values, over a secret of the same name."""
    web = spec(command=["run", "--port=${SERVICE_PORT_WEB}", "--id=${CORRAL_INSTANCE}"],
               receives=["web"])
    own = subst.own_names(web, ["web"])
    assert subst.missing(web, [], own) == []
    assert subst.references(web) == {}
    values = {"CORRAL_INSTANCE": "not this"}
    out = subst.substitute(web, values, "web", {"SERVICE_PORT_WEB": "31000",
                                                "CORRAL_INSTANCE": "2"})
    assert out.command == ["run", "--port=31000", "--id=2"]


def test_a_name_that_is_neither_says_so() -> None:
    """A corral-looking name that is not one of this process's variables, nor a secret,
    is the problem, and the message lists the variables it has."""
    web = spec(env={"P": "${SERVICE_PORT_API}", "Q": "${NOPE}"}, receives=["web"])
    problems = subst.missing(web, [], subst.own_names(web, ["web"]))
    assert problems == [
        "web.env.P: 'SERVICE_PORT_API' is neither a secret nor one of corral's variables for "
        "this process (CORRAL_SERVICE, CORRAL_INSTANCE, SERVICE_PORT_WEB); set a secret with: "
        "corral secret set SERVICE_PORT_API -",
        "web.env.Q: secret 'NOPE' is not set; set it with: corral secret set NOPE -"]
