"""Binds between service groups on one host (the embedded default): a consumer waits for
its producer (strict) or starts at once (relaxed), sees the producer's live members in its
templates and in ``CORRAL_BIND_<NAME>_ADDRS``, is re-rendered when they come and go, and
a template that uses an export the producer lacks fails naming the key."""

from __future__ import annotations

import json
from pathlib import Path

from .conftest import Corral, wait_for
from .groups import GroupProcess, events, pid, wait_file

MEMBERS = ("{% for m in bind.db.members %}db={{ m.address }}:{{ m.exports.port }}\n"
           "{% else %}db=none\n{% endfor %}")


def producer(root: Path) -> GroupProcess:
    return GroupProcess("db", root, config={"port": 5432}, exports={"port": "cfg.port"})


def consumer(root: Path, name: str = "web", *, mode: str = "strict",
             template: str = MEMBERS) -> GroupProcess:
    return GroupProcess(name, root, templates={"db.conf.j2": template},
                        binds={"db": "db.default"}, extra={"binding_mode": mode},
                        reconfigure="cat db.conf >> hook.log")


def address(c: Corral) -> str:
    data = json.loads(c.ok("census", "--json", "db.default"))
    return str(data["groups"]["db.default"][0]["address"])


def test_strict_bind_waits_then_follows_the_producer(corral: Corral, tmp_path: Path) -> None:
    """A strict consumer waits for a live producer member, starts with its address and
    exported port, and is reconfigured in place when the producer goes and comes back."""
    web = consumer(tmp_path)
    web.load(corral)
    waiting = wait_for(lambda: "waiting for bind db" in (s := corral.status("web"))["reason"]
                       and s, what="web to wait for its bind")
    assert waiting["pid"] is None and web.file("db.conf") is None
    db = producer(tmp_path)
    db.load(corral)
    corral.wait_state("web", "up")
    where = f"{address(corral)}:5432"
    assert web.file("db.conf") == f"db={where}\n"
    env = wait_for(web.env, what="web's environment")
    assert env == {"CORRAL_BIND_DB_ADDRS": where}
    before = pid(corral, "web")
    census = json.loads(corral.ok("census", "--json", "db.default"))
    assert census["groups"]["db.default"][0]["exports"] == {"port": 5432}

    corral.ok("svc", "stop", "db")
    wait_file(web, "db.conf", "db=none")
    wait_for(lambda: "db=none" in (web.file("hook.log") or ""), what="the reconfigure hook")
    assert pid(corral, "web") == before
    corral.ok("svc", "start", "db")
    wait_for(lambda: web.file("db.conf") == f"db={where}\n", what="web to see db again")
    assert pid(corral, "web") == before


def test_relaxed_bind_starts_at_once(corral: Corral, tmp_path: Path) -> None:
    """A relaxed consumer starts with no producer: an empty address list."""
    web = consumer(tmp_path, mode="relaxed")
    web.load(corral)
    corral.wait_state("web", "up")
    assert wait_for(web.env, what="web's environment") == {"CORRAL_BIND_DB_ADDRS": ""}
    assert web.file("db.conf") == "db=none\n"


def test_missing_export_is_a_render_error_naming_the_key(corral: Corral,
                                                         tmp_path: Path) -> None:
    """A template that uses an export the producer does not have fails to render: the
    consumer does not start, and its status and events name the file, line and key."""
    producer(tmp_path).load(corral)
    corral.wait_state("db", "up")
    bad = consumer(tmp_path, "api", template="{% for m in bind.db.members %}\n"
                   "user={{ m.exports.user }}\n{% endfor %}")
    bad.write()
    result = corral.run("svc", "load", "-f", str(tmp_path / "api.spec.yaml"))
    assert result.returncode != 0 and "Traceback" not in result.stderr
    error = wait_for(lambda: (corral.status("api").get("config") or {}).get("error"),
                     what="api's render error")
    assert "db.conf.j2:2:" in error and "has no key 'user'" in error and "port" in error
    assert any("has no key 'user'" in e["reason"] for e in events(corral, "api", "config"))
    assert bad.file("db.conf") is None
