"""The CLI's argument parsing, state-dir resolution, exit codes and error lines (no server)."""

from __future__ import annotations

import argparse
import io
import os
import sys
from pathlib import Path

import pytest

from corral.cli import main as cli_main
from corral.cli.client import Client
from corral.cli.common import CommandContext
from corral.cli.main import build_parser, parse, run
from corral.cli.svc import load_body


def cli(*argv: str) -> tuple[int, str, str]:
    """Run the CLI in-process; return (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    return run(list(argv), stdout=out, stderr=err), out.getvalue(), err.getvalue()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No CORRAL_HOME from the caller's environment; XDG state under tmp_path."""
    monkeypatch.delenv("CORRAL_HOME", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))


@pytest.mark.parametrize("argv, needle", [
    (["svc", "load", "web", "--env", "FOO", "--", "x"], "argument --env: 'FOO' is not KEY=VALUE"),
    (["svc", "load", "web", "--env", "=v", "--", "x"], "'=v' is not KEY=VALUE"),
    (["svc", "bogus"], "invalid choice: 'bogus'"),
    ([], "required: COMMAND"),
    (["svc"], "required: SUBCOMMAND"),
    (["svc", "scale", "web", "-1"], "N"),
    (["logs", "web", "-n", "many"], "'many' is not a whole number"),
    (["logs", "web", "--", "extra"], "unexpected arguments after --: extra"),
    (["svc", "load", "web"], "give the command after --"),
    (["svc", "load", "-f", "x.yaml", "--restart", "never"], "drop --restart"),
    (["svc", "load", "--", "sleep", "1"], "give a NAME and a command"),
    (["svc", "status", "--nope"], "unrecognized arguments: --nope"),
])
def test_usage_errors_exit_100_with_one_line(argv: list[str], needle: str) -> None:
    """Every usage error exits 100 and prints exactly one ``corral:`` line to stderr."""
    code, out, err = cli(*argv)
    assert code == 100
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("corral: ")
    assert needle in err


def test_usage_error_points_at_the_subcommand_help() -> None:
    """A usage error names the help of the command that rejected it."""
    assert cli("svc", "load", "web", "--env", "FOO")[2].endswith(
        "(see: corral svc load --help)\n")


@pytest.mark.parametrize("argv", [
    ["--state-dir", "/s", "--override-name", "n", "svc", "status"],
    ["svc", "--state-dir", "/s", "--override-name", "n", "status"],
    ["svc", "status", "--state-dir", "/s", "--override-name", "n"],
    ["--override-name", "other", "svc", "status", "--state-dir", "/s", "--override-name", "n"],
    ["--state-dir=/s", "svc", "status", "--override-name=n"],
])
def test_common_options_anywhere(argv: list[str]) -> None:
    """--state-dir and --override-name are accepted before and after the verb."""
    args = parse(argv)
    assert (args.state_dir, args.override_name) == ("/s", "n")


def test_state_dir_named_like_a_verb() -> None:
    """A global option's value that looks like a verb is not mistaken for the verb."""
    args = parse(["--state-dir", "logs", "svc", "status", "web"])
    assert (args.state_dir, args.verb, args.name) == ("logs", "svc", "web")


def test_state_dir_resolution_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """--state-dir beats $CORRAL_HOME, which beats the per-name default."""
    def resolved(*argv: str) -> Path:
        return CommandContext(parse([*argv, "svc", "status"])).state_dir

    if os.geteuid() == 0:
        assert resolved("--override-name", "blue") == Path("/var/lib/corral/blue")
    else:
        assert resolved("--override-name", "blue") == tmp_path / "xdg" / "corral" / "blue"
    monkeypatch.setenv("CORRAL_HOME", str(tmp_path / "home"))
    assert resolved("--override-name", "blue") == tmp_path / "home"
    assert resolved("--state-dir", str(tmp_path / "explicit")) == tmp_path / "explicit"


def test_load_body_only_given_fields() -> None:
    """A bare ``svc load NAME -- CMD`` sends just the name and the command."""
    assert load_body(parse(["svc", "load", "web", "--", "sleep", "9"])) == {
        "spec": {"name": "web", "command": ["sleep", "9"]}}


def test_load_body_every_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every option lands in its nested place; --cwd is made absolute; numbers stay numbers."""
    monkeypatch.chdir(tmp_path)
    args = parse(["svc", "load", "web", "--restart", "never", "--env", "K=V", "--cwd", "sub",
                  "--user", "www", "--group", "www", "--stop-signal", "INT", "--stop-timeout",
                  "12", "--instances", "3", "--log-format", "raw", "--", "./srv", "--", "-x"])
    assert load_body(args) == {"spec": {
        "name": "web", "command": ["./srv", "--", "-x"], "env": {"K": "V"},
        "cwd": str(tmp_path / "sub"), "user": "www", "group": "www", "instances": 3,
        "restart": {"policy": "never"}, "stop": {"signal": "INT", "timeout": 12},
        "logs": {"format": "raw"}}}


def test_load_file_missing_fails_naming_it(tmp_path: Path) -> None:
    """``svc load -f`` with an unreadable file exits 1 with one line naming the file."""
    code, _, err = cli("svc", "load", "-f", str(tmp_path / "nope.yaml"))
    assert code == 1
    assert err == f"corral: cannot read {tmp_path / 'nope.yaml'}: No such file or directory\n"


def test_every_command_has_examples() -> None:
    """Every command and sub-command's help ends with an Examples section."""
    def walk(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
        found = [parser]
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    found += walk(sub)
        return found

    parsers = walk(build_parser())
    assert len(parsers) >= 14
    for parser in parsers:
        assert "Examples:" in parser.format_help(), parser.prog


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    """``--help`` prints help to stdout and exits 0."""
    assert run(["svc", "status", "--help"]) == 0
    assert "usage: corral svc status" in capsys.readouterr().out


def test_sup_run_execs_the_launcher(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``sup run`` execs ``python -m corral.launcher`` with the resolved state dir and options."""
    calls: list[list[str]] = []

    def fake_execv(path: str, argv: list[str]) -> None:
        calls.append(argv)
        raise SystemExit(0)

    monkeypatch.setattr(os, "execv", fake_execv)
    monkeypatch.setenv("CORRAL_HOME", str(tmp_path))
    target = tmp_path / "t.yaml"
    target.write_text("processes: [{name: a, command: [sleep, '1']}]\n")
    assert cli("sup", "run", "--target", str(target))[0] == 0
    assert calls == [[sys.executable, "-m", "corral.launcher", "--state-dir", str(tmp_path),
                      "--target", str(target)]]


def test_sup_run_refuses_a_bad_listen_address(tmp_path: Path) -> None:
    """A malformed `--listen-http` is a usage error naming the option; nothing starts."""
    code, _, err = cli("sup", "run", "--state-dir", str(tmp_path), "--listen-http", ":9631")
    assert code == 100 and "--listen-http" in err


def test_sup_run_exec_failure_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """A failing exec is reported as one line and exit 1."""
    def fake_execv(path: str, argv: list[str]) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "execv", fake_execv)
    code, _, err = cli("sup", "run")
    assert code == 1
    assert err == f"corral: cannot start the launcher ({sys.executable}): Permission denied\n"


def test_ctrl_c_exits_130_quietly(monkeypatch: pytest.MonkeyPatch) -> None:
    """KeyboardInterrupt anywhere in a command exits 130 without output."""
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(Client, "request", interrupted)
    assert cli("svc", "status") == (130, "", "")


def test_unexpected_exception_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug in a handler prints one line (no traceback) and exits 1."""
    def boom(*args: object, **kwargs: object) -> None:
        raise ValueError("boom")

    monkeypatch.setattr(Client, "request", boom)
    monkeypatch.delenv("CORRAL_DEBUG", raising=False)
    code, _, err = cli("svc", "status")
    assert code == 1
    assert err == "corral: internal error: ValueError: boom (run with CORRAL_DEBUG=1 for details)\n"


def test_verbs_are_one_line_each() -> None:
    """The verb registry maps each module name under corral.cli to its one-line help."""
    assert list(cli_main.VERBS)[:4] == ["sup", "svc", "logs", "events"]
    assert "print-auth" in cli_main.VERBS  # module corral.cli.print_auth
    full, placeholders = cli_main.build_parser().format_help(), cli_main.build_parser("").format_help()
    for name, help_ in cli_main.VERBS.items():
        assert f"    {name:<16} {help_}" in full  # the module's own help says the same
        assert f"    {name:<16} {help_}" in placeholders


def test_only_the_named_verb_is_built() -> None:
    """Parsing ``svc status`` builds the svc tree only; the other verbs are placeholders."""
    parser = cli_main.build_parser("svc")
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert sub.choices["sup"]._actions == []
    assert "status" in sub.choices["svc"].format_help()
