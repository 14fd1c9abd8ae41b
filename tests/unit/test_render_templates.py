"""Templates, exports and binds (corral.render): what a template sees, strict errors with
file, line and key, exports evaluated against a member's cfg, CORRAL_BIND_* values."""

from __future__ import annotations

import pytest

from corral.errors import TemplateError
from corral.render import (
    Context,
    bind_env,
    bind_view,
    compute_exports,
    env_name,
    member_address,
    render_templates,
    service_view,
)

PG1 = {"member": "pg1", "host": "db1", "address": "10.0.0.5", "ports": {"traffic": 30001},
       "exports": {"port": 5432, "user": "app"}, "leader": True, "state": "up"}
PG2 = {"member": "pg2", "host": "db2", "address": "10.0.0.6", "ports": {"traffic": 30002},
       "exports": {"port": 5433, "user": "app"}, "leader": False, "state": "up"}
WEB = {"member": "web1", "host": "h1", "address": "10.0.0.1", "ports": {}, "exports": {}}


def context(cfg: dict[str, object] | None = None) -> Context:
    return Context(
        cfg=cfg if cfg is not None else {"port": 8080, "db": {"name": "main"}},
        sys={"host": "h1", "address": "10.0.0.1", "member": "web1"},
        svc=service_view("web.default", [WEB], "web1"),
        bind=bind_view({"db": ("pg.default", [PG2, PG1])}))


def test_a_template_sees_cfg_sys_svc_and_bind() -> None:
    """Every name renders; members come sorted by member name; includes work."""
    templates = {
        "app.conf": ("listen {{ sys.address }}:{{ cfg.port }}\n"
                     "{% for m in bind.db.members %}server {{ m.address }}:{{ m.exports.port }}"
                     "\n{% endfor %}"
                     "me={{ svc.me.member }} first={{ svc.first.host }} n={{ svc.members|length }}"
                     "\n{% include 'part.inc' %}"),
        "part.inc": "db={{ cfg.db.name }} leader={{ svc.leader }} bound={{ bind.db.group }}\n",
    }
    out = render_templates(templates, context())
    assert out["app.conf"] == ("listen 10.0.0.1:8080\nserver 10.0.0.5:5432\n"
                               "server 10.0.0.6:5433\nme=web1 first=h1 n=1\n"
                               "db=main leader=None bound=pg.default\n")
    assert list(out) == ["app.conf", "part.inc"]


@pytest.mark.parametrize(("source", "message"), [
    ("a\n{{ cfg.db.port }}\n", "t.conf:2: cfg.db has no key 'port' (it has: name)"),
    ("{{ cfg.nope.x }}", "t.conf:1: cfg has no key 'nope' (it has: db, port)"),
    ("\n\n{{ bind.db.members[0].exports.password }}",
     "t.conf:3: bind.db.members[0].exports has no key 'password' (it has: port, user)"),
    ("{{ bind.cache.members }}", "t.conf:1: bind has no key 'cache' (it has: db)"),
    ("{{ bind.db.members[7] }}", "t.conf:1: bind.db.members has no item 7 (it has 2)"),
    ("{{ undefined_name }}", "t.conf:1: 'undefined_name' is undefined"),
    ("x\n{% if %}", "t.conf:2: Expected an expression, got 'end of statement block'"),
    ("{{ cfg.port / 0 }}", "t.conf:1: ZeroDivisionError: division by zero"),
])
def test_a_missing_key_or_bad_template_names_file_line_and_key(source: str,
                                                               message: str) -> None:
    with pytest.raises(TemplateError) as failed:
        render_templates({"t.conf": source}, context())
    assert str(failed.value) == message
    assert failed.value.file == "t.conf"


def test_an_error_in_an_included_file_names_that_file() -> None:
    with pytest.raises(TemplateError) as failed:
        render_templates({"main.conf": "ok\n{% include 'inc' %}",
                          "inc": "one\ntwo {{ cfg.missing }}"}, context())
    assert (failed.value.file, failed.value.line) == ("inc", 2)


def test_errors_never_show_values() -> None:
    """A resolved secret in cfg does not appear in an error about a sibling key."""
    with pytest.raises(TemplateError) as failed:
        render_templates({"t": "{{ cfg.db.user }}"},
                         context({"db": {"password": "hunter2-secret"}}))
    assert "hunter2" not in str(failed.value)
    assert str(failed.value) == "t:1: cfg.db has no key 'user' (it has: password)"


def test_compiled_templates_are_reused_only_for_the_same_sources() -> None:
    """Rendering again with other values, or with a changed source under the same name
    (a template edited, an included file changed), gives what each asks for; an error
    is raised again on every render."""
    first = {"main": "{% include 'inc' %}", "inc": "port={{ cfg.port }}"}
    assert render_templates(first, context({"port": 1})) == {"main": "port=1", "inc": "port=1"}
    assert render_templates(first, context({"port": 2}))["main"] == "port=2"
    edited = {**first, "inc": "listen={{ cfg.port }}"}
    assert render_templates(edited, context({"port": 3}))["main"] == "listen=3"
    for _ in range(2):
        with pytest.raises(TemplateError, match="t:1: cfg has no key 'nope'"):
            render_templates({"t": "{{ cfg.nope }}"}, context({"port": 1}))
    assert compute_exports({"p": "cfg.port"}, {"port": 4}) == {"p": 4}
    assert compute_exports({"p": "cfg.port"}, {"port": 5}) == {"p": 5}


def test_exports_are_evaluated_against_cfg() -> None:
    """Expressions see cfg; references stay references; results are plain JSON values."""
    cfg = {"port": 5432, "db": {"user": "app", "password": "${DB_PASS}"}, "hosts": ["a"]}
    exports = compute_exports({"port": "cfg.port", "user": "cfg.db.user",
                               "password": "cfg.db.password", "url": "'pg://' ~ cfg.db.user",
                               "db": "cfg.db", "hosts": "cfg.hosts", "next": "cfg.port + 1"},
                              cfg)
    assert exports == {"port": 5432, "user": "app", "password": "${DB_PASS}",
                       "url": "pg://app", "db": {"user": "app", "password": "${DB_PASS}"},
                       "hosts": ["a"], "next": 5433}
    assert type(exports["db"]) is dict and type(exports["hosts"]) is list


@pytest.mark.parametrize(("exports", "message"), [
    ({"port": "cfg.prot"}, "exports.port: cfg has no key 'prot' (it has: port)"),
    ({"port": "cfg."}, "exports.port: expected name or number in 'cfg.'"),
    ({"port": "range"}, "exports: port: a type cannot be stored; use text, a number, "
                        "true/false, a list or a mapping"),
])
def test_bad_exports_name_the_export(exports: dict[str, str], message: str) -> None:
    with pytest.raises(TemplateError) as failed:
        compute_exports(exports, {"port": 1})
    assert str(failed.value) == message


def test_bind_env_lists_live_members_as_host_port() -> None:
    """CORRAL_BIND_<NAME>_ADDRS: the exported port first, else the first named port; an
    IPv6 address in brackets; an empty value for a bind without members."""
    binds = {"db": ("pg.default", [PG2, PG1]), "cache-1": ("redis.default", []),
             "v6": ("x.default", [{"member": "m", "address": "fd00::1",
                                   "ports": {"b": 2, "a": 1}}])}
    assert bind_env(binds) == {"CORRAL_BIND_DB_ADDRS": "10.0.0.5:5432,10.0.0.6:5433",
                               "CORRAL_BIND_CACHE_1_ADDRS": "",
                               "CORRAL_BIND_V6_ADDRS": "[fd00::1]:1"}
    assert member_address({"address": "10.0.0.9"}) == "10.0.0.9"
    assert member_address({"address": "h", "exports": {"port": "80"}}) == "h:80"
    assert env_name("my.db") == "CORRAL_BIND_MY_DB_ADDRS"


def test_service_view_picks_me_first_and_leader() -> None:
    view = service_view("pg.default", [PG2, PG1], "pg2")
    assert [m["member"] for m in view["members"]] == ["pg1", "pg2"]
    assert view["me"] is PG2 and view["first"] is PG1 and view["leader"] is PG1
    empty = service_view("pg.default", [], "pg9")
    assert empty["me"] is None and empty["first"] is None and empty["leader"] is None
