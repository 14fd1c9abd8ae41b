"""Group configuration on one host (the embedded default, no etcd): ``config apply``
re-renders a process's templates and runs its ``reconfigure`` hook in the same process,
or replaces its instances one at a time; versions only grow; a template error changes
nothing; ``svc config set`` is the host's own layer; ``config show`` says where each
value came from."""

from __future__ import annotations

import json
from pathlib import Path

from .conftest import Corral, wait_for
from .groups import GroupProcess, config_show, events, pid, sources, values_file, wait_file

TEMPLATE = ("greeting={{ cfg.greeting }}\n"
            "port={{ cfg.port }}\n"
            "host={{ sys.host }} members={{ svc.members | length }}\n"
            "{% if cfg.strict %}needs={{ cfg.required }}\n{% endif %}")


def app(root: Path, *, hook: bool) -> GroupProcess:
    return GroupProcess("app", root, templates={"app.conf.j2": TEMPLATE},
                        config={"greeting": "hello", "port": 1000, "strict": False},
                        reconfigure="echo reconfigured $CORRAL_PID >> hook.log" if hook
                        else None)


def test_apply_reconfigures_in_place_and_layers_with_sources(corral: Corral,
                                                             tmp_path: Path) -> None:
    """A group config and a host file re-render the files; the reconfigure hook runs in
    the same process; config show names each value's source."""
    p = app(tmp_path, hook=True)
    p.load(corral)
    corral.wait_state("app", "up")
    first = wait_file(p, "app.conf", "greeting=hello")
    assert "port=1000" in first and "members=1" in first
    before = pid(corral, "app")
    assert before is not None

    out = corral.ok("config", "apply", "app.default", "1",
                    str(values_file(tmp_path, "v1.yaml", {"greeting": "bonjour"})))
    assert "config version 1 applied" in out
    wait_file(p, "app.conf", "greeting=bonjour")
    hook_log = wait_for(lambda: p.file("hook.log"), what="the reconfigure hook")
    assert f"reconfigured {before}" in hook_log
    assert pid(corral, "app") == before
    assert corral.status("app")["config"] == {"version": 1, "error": None}
    assert sources(corral, "app.default") == {
        "greeting": ("bonjour", "group config v1"), "port": (1000, "default"),
        "strict": (False, "default")}

    host = values_file(tmp_path, "host.json", {"port": 2000, "greeting": "ignored"})
    corral.ok("svc", "config", "set", "app", str(host))
    wait_file(p, "app.conf", "port=2000")
    shown = sources(corral, "app.default")
    assert shown["port"] == (2000, f"host file {host}")
    assert shown["greeting"] == ("bonjour", "group config v1")  # the group config wins
    assert pid(corral, "app") == before
    table = corral.ok("config", "show", "app.default")
    assert "config version 1" in table and "group config v1" in table

    # Versions only grow: the current one is named, nothing changes.
    again = corral.run("config", "apply", "app.default", "1",
                       str(values_file(tmp_path, "v1b.yaml", {"greeting": "hola"})))
    assert again.returncode == 1
    assert again.stderr.strip().splitlines() == [
        "corral: app.default is at config version 1: apply a version higher than 1 (got 1)"]
    same = corral.run("config", "apply", "app.default", "1",
                      str(values_file(tmp_path, "v1.yaml", {"greeting": "bonjour"})))
    assert same.returncode == 1 and "apply a version higher than 1" in same.stderr
    assert config_show(corral, "app.default")["version"] == 1


def test_template_error_refuses_the_apply_and_keeps_the_files(corral: Corral,
                                                              tmp_path: Path) -> None:
    """A config the template cannot render is refused with the file and the line; the
    running instance keeps its files and its process."""
    p = app(tmp_path, hook=True)
    p.load(corral)
    corral.wait_state("app", "up")
    kept = wait_file(p, "app.conf", "greeting=hello")
    before = pid(corral, "app")
    bad = corral.run("config", "apply", "app.default", "2",
                     str(values_file(tmp_path, "bad.yaml", {"strict": True})))
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1, bad.stderr
    assert lines[0].startswith("corral: app.conf.j2:4: cfg has no key 'required'"), lines
    assert p.file("app.conf") == kept and pid(corral, "app") == before
    assert config_show(corral, "app.default")["version"] == 0
    # A broken file: one line with its line number, nothing stored.
    broken = tmp_path / "broken.toml"
    broken.write_text("greeting = 'x'\nport = = 3\n")
    result = corral.run("config", "apply", "app.default", "2", str(broken))
    assert result.returncode == 1 and f"{broken}:2:" in result.stderr
    assert "Traceback" not in result.stderr
    # A host file the template cannot render with is refused the same way.
    refused = corral.run("svc", "config", "set", "app",
                         str(values_file(tmp_path, "h.yaml", {"strict": True})))
    assert refused.returncode == 1 and "app.conf.j2:4:" in refused.stderr
    assert "port" not in sources(corral, "app.default") or \
        sources(corral, "app.default")["port"][1] == "default"


def test_apply_without_a_hook_replaces_instances_one_at_a_time(corral: Corral,
                                                              tmp_path: Path) -> None:
    """Without a reconfigure hook, a changed render replaces the instances, health-gated
    (new pids, the new files); an unchanged render touches nothing."""
    p = app(tmp_path, hook=False)
    p.load(corral)
    corral.wait_state("app", "up")
    wait_file(p, "app.conf", "greeting=hello")
    before = pid(corral, "app")
    # The same values as the defaults: nothing to do.
    corral.ok("config", "apply", "app.default", "1",
              str(values_file(tmp_path, "same.yaml", {"greeting": "hello"})))
    wait_for(lambda: corral.status("app")["config"]["version"] == 1, what="version 1")
    assert pid(corral, "app") == before
    corral.ok("config", "apply", "app.default", "2",
              str(values_file(tmp_path, "v2.yaml", {"greeting": "salut"})))
    wait_file(p, "app.conf", "greeting=salut")
    wait_for(lambda: (s := corral.status("app"))["state"] == "up" and s["pid"] != before
             and s["config"]["version"] == 2, what="app replaced")
    assert any("replacing the instances one at a time" in e["reason"]
               for e in events(corral, "app", "config"))


def test_a_new_supervisor_keeps_the_render_and_the_process(corral: Corral,
                                                           tmp_path: Path) -> None:
    """After a supervisor restart the adopted instance keeps its pid and files, and its
    member shows the config version it runs at once."""
    p = app(tmp_path, hook=True)
    p.load(corral)
    corral.wait_state("app", "up")
    corral.ok("config", "apply", "app.default", "4",
              str(values_file(tmp_path, "v4.yaml", {"greeting": "v4"})))
    text = wait_file(p, "app.conf", "greeting=v4")
    before, hooks = pid(corral, "app"), wait_for(lambda: p.file("hook.log"), what="hook")
    old_sup = corral.sup_status()["supervisor_pid"]
    corral.ok("sup", "restart")
    wait_for(lambda: corral.answers() and corral.sup_status()["supervisor_pid"] != old_sup,
             30, "a new supervisor")
    status = wait_for(lambda: (s := corral.status("app"))["config"]["version"] == 4 and s,
                      what="the render known again")
    assert status["pid"] == before and p.file("app.conf") == text
    census = json.loads(corral.ok("census", "--json", "app.default"))
    assert census["groups"]["app.default"][0]["config_version"] == 4
    assert p.file("hook.log") == hooks  # nothing was reconfigured again


def test_a_resource_template_renders_into_each_instance_directory(corral: Corral,
                                                                  tmp_path: Path) -> None:
    """A template shipped as a resource renders into every instance's own fresh working
    directory; an apply reconfigures each instance there."""
    source = tmp_path / "web.conf.j2"
    source.write_text("greeting={{ cfg.greeting }} instance-dir\n")
    blob = corral.ok("resource", "up", str(source)).strip()
    p = GroupProcess("web", tmp_path, config={"greeting": "hello"},
                     templates={}, reconfigure="echo $CORRAL_PID > reconfigured",
                     extra={"instances": 2, "templates": ["web.conf.j2"],
                            "resources": [{"id": blob, "file": "web.conf.j2"}]})
    spec = p.spec()
    del spec["cwd"]
    path = tmp_path / "web.yaml"
    path.write_text(json.dumps(spec))
    corral.ok("svc", "load", "-f", str(path))
    corral.wait_state("web", "up")
    dirs = [corral.state_dir / "run" / "web" / str(i) for i in (0, 1)]
    for d in dirs:
        assert (d / "web.conf").read_text() == "greeting=hello instance-dir\n"
    pids = [i["pid"] for i in corral.status("web")["instance_list"]]
    corral.ok("config", "apply", "web.default", "1",
              str(values_file(tmp_path, "w1.yaml", {"greeting": "hi"})))
    for d, want in zip(dirs, pids, strict=True):
        wait_for(lambda d=d: (d / "web.conf").read_text() == "greeting=hi instance-dir\n",
                 what=f"{d} re-rendered")
        wait_for(lambda d=d, want=want: (d / "reconfigured").exists()
                 and (d / "reconfigured").read_text().strip() == str(want),
                 what=f"the hook in {d}")
    assert [i["pid"] for i in corral.status("web")["instance_list"]] == pids
