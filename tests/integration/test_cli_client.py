"""The CLI's HTTP client and its commands, against a tiny real HTTP server on an AF_UNIX socket."""

from __future__ import annotations

import fcntl
import io
import json
import os
import shutil
import socket
import socketserver
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, cast

import pytest

from corral.cli.client import Client
from corral.cli.errors import ApiError, CliError, ProtocolError, UnreachableError
from corral.cli.http import sse_events
from corral.cli.main import run
from corral.protocol import paths

Writer = Callable[[BinaryIO], None]


def json_answer(obj: Any, status: int = 200, mode: str = "length") -> Writer:
    """An answer with a JSON body framed by Content-Length, chunks, or closing the connection."""
    body = json.dumps(obj).encode()

    def write(w: BinaryIO) -> None:
        head = f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n"
        if mode == "length":
            w.write(f"{head}content-length: {len(body)}\r\n\r\n".encode() + body)
        elif mode == "chunked":
            w.write(f"{head}transfer-encoding: chunked\r\n\r\n".encode())
            for i in range(0, len(body), 7):  # several small chunks, one with an extension
                piece = body[i:i + 7]
                w.write(f"{len(piece):x};ext=1\r\n".encode() + piece + b"\r\n")
                w.flush()
            w.write(b"0\r\nx-trailer: 1\r\n\r\n")
        else:
            w.write(f"{head}\r\n".encode() + body)

    return write


def sse_answer(frames: list[bytes], chunked: bool = True) -> Writer:
    """A text/event-stream answer sending each frame as it is (one chunk each when chunked)."""

    def write(w: BinaryIO) -> None:
        te = "transfer-encoding: chunked\r\n" if chunked else ""
        w.write(f"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n{te}\r\n".encode())
        for frame in frames:
            w.write(f"{len(frame):x}\r\n".encode() + frame + b"\r\n" if chunked else frame)
            w.flush()
            time.sleep(0.01)
        if chunked:
            w.write(b"0\r\n\r\n")

    return write


class Request:
    """What the fake server received."""

    def __init__(self, method: str, target: str, headers: dict[str, str], body: Any) -> None:
        self.method, self.target, self.headers, self.body = method, target, headers, body


class _Handler(socketserver.StreamRequestHandler):
    server: FakeServer

    def handle(self) -> None:
        method, target, _ = self.rfile.readline().decode().split(" ", 2)
        headers: dict[str, str] = {}
        while (line := self.rfile.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        raw = self.rfile.read(int(headers.get("content-length", "0")))
        self.server.requests.append(Request(method, target, headers, json.loads(raw) if raw else None))
        route = self.server.routes.get((method, target))
        if route is None:
            route = json_answer({"error": {"code": "not_found", "message": f"no route {target}"}}, 404)
        route(cast(BinaryIO, self.wfile))


class FakeServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """A threaded HTTP/1.1 server answering from ``routes[(method, target)]``."""

    daemon_threads = True

    def __init__(self, path: str) -> None:
        super().__init__(path, _Handler)
        self.path = path
        self.routes: dict[tuple[str, str], Writer] = {}
        self.requests: list[Request] = []

    def stop(self) -> None:
        """Stop serving and remove the socket (idempotent)."""
        self.shutdown()
        self.server_close()
        if os.path.exists(self.path):
            os.unlink(self.path)


@pytest.fixture
def state_dir() -> Iterator[str]:
    """A short temporary state directory (AF_UNIX paths are limited to 107 bytes)."""
    path = tempfile.mkdtemp(prefix="corral-cli-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def server(state_dir: str) -> Iterator[FakeServer]:
    """A fake supervisor API on ``<state_dir>/api.sock``, with the state directory's lock
    held as a running launcher holds it (a follower ends a cut stream without one)."""
    lock = os.open(paths.lock_file(Path(state_dir)), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)
    srv = FakeServer(os.path.join(state_dir, "api.sock"))
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02})
    thread.start()
    yield srv
    srv.stop()
    thread.join()
    os.close(lock)


def cli(state_dir: str, *argv: str) -> tuple[int, str, str]:
    """Run the CLI in-process against ``state_dir``; return (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    code = run(["--state-dir", state_dir, *argv], stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


SERVICE = {"name": "web", "state": "up", "desired": "up", "pid": 1234, "instances": 1,
           "restarts": 0, "health": "ok", "uptime_s": 192.0, "reason": "spawned",
           "next_restart_at": None, "last_exit": None, "instance_list": []}


# -- the client ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["length", "chunked", "close"])
def test_request_reads_each_body_framing(server: FakeServer, mode: str) -> None:
    """A JSON body framed by Content-Length, by chunks, or by closing is decoded the same."""
    server.routes[("GET", "/v1/status")] = json_answer({"a": [1, 2, 3], "b": "x" * 100}, mode=mode)
    status, data = Client(server.path).request("GET", "/v1/status")
    assert (status, data) == (200, {"a": [1, 2, 3], "b": "x" * 100})


def test_request_sends_json_body_and_close(server: FakeServer) -> None:
    """A request carries Host, Connection: close and a JSON body with its length."""
    server.routes[("POST", "/v1/services")] = json_answer({"result": "added"})
    Client(server.path).request("POST", "/v1/services", {"spec": {"name": "web"}})
    req = server.requests[-1]
    assert req.headers["connection"] == "close"
    assert req.headers["host"] == "localhost"
    assert req.headers["content-type"] == "application/json"
    assert req.body == {"spec": {"name": "web"}}


def test_request_raises_api_error_with_problems(server: FakeServer) -> None:
    """A 4xx answer becomes an ApiError carrying the API's code, message and problems."""
    error = {"code": "invalid_spec", "message": "web.yaml is invalid",
             "problems": ["web.yaml:3: command: required", "web.yaml:5: bogus: unknown field"]}
    server.routes[("POST", "/v1/services")] = json_answer({"error": error}, 422, mode="chunked")
    with pytest.raises(ApiError) as info:
        Client(server.path).request("POST", "/v1/services", {"yaml": ""})
    assert (info.value.status, info.value.code, info.value.message) == (
        422, "invalid_spec", "web.yaml is invalid")
    assert info.value.problems == error["problems"]


def test_request_non_json_error_body_becomes_one_line(server: FakeServer) -> None:
    """A plain-text 500 (not the API's error shape) still gives a one-line message."""
    def write(w: BinaryIO) -> None:
        w.write(b"HTTP/1.1 500 X\r\ncontent-length: 21\r\n\r\nInternal Server Error")

    server.routes[("GET", "/v1/status")] = write
    with pytest.raises(ApiError, match="HTTP 500 from the supervisor: Internal Server Error"):
        Client(server.path).request("GET", "/v1/status")


def test_stream_yields_sse_data_objects(server: FakeServer) -> None:
    """SSE frames are split across chunks; comments and other fields are ignored; CRLF works."""
    frames = [b": keep-alive\n\n", b'data: {"line": "one"}\n\ndata: {"li', b'ne": "two"}\n',
              b"\nevent: x\r\nid: 3\r\ndata: {\"line\":\r\ndata: \"three\"}\r\n\r\n",
              b'data: {"line": "cut off"}\n']
    server.routes[("GET", "/v1/services/web/logs?n=2&follow=1")] = sse_answer(frames)
    got = list(Client(server.path).stream("/v1/services/web/logs?n=2&follow=1"))
    assert got == [{"line": "one"}, {"line": "two"}, {"line": "three"}]
    assert server.requests[-1].headers["accept"] == "text/event-stream"


def test_stream_without_chunking_reads_until_close(server: FakeServer) -> None:
    """An event stream framed by closing the connection is read as it arrives."""
    frames = [b'data: {"seq": 1}\n\n', b'data: {"seq": 2}\n\n']
    server.routes[("GET", "/v1/events?follow=1")] = sse_answer(frames, chunked=False)
    assert list(Client(server.path).stream("/v1/events?follow=1")) == [{"seq": 1}, {"seq": 2}]


def test_stream_error_answer_raises(server: FakeServer) -> None:
    """A stream request answered with an API error raises ApiError before yielding anything."""
    with pytest.raises(ApiError, match="no route"):
        next(Client(server.path).stream("/v1/nowhere"))


def test_missing_socket_is_unreachable(state_dir: str) -> None:
    """Connecting to a socket path that does not exist raises UnreachableError (no api.sock)."""
    with pytest.raises(UnreachableError) as info:
        Client(os.path.join(state_dir, "api.sock")).request("GET", "/v1/status")
    assert info.value.reason == "no api.sock"
    assert info.value.exit_code == 111


def test_stale_socket_refuses(state_dir: str) -> None:
    """A socket file nobody listens on (a crashed supervisor) is reported as refusing."""
    path = os.path.join(state_dir, "api.sock")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(path)  # bound, never listening: connect() is refused
        with pytest.raises(UnreachableError, match="refuses connections"):
            Client(path).request("GET", "/v1/status")


def test_long_socket_path_connects(state_dir: str) -> None:
    """A socket path longer than sun_path allows is reached through /proc/self/fd."""
    deep = os.path.join(state_dir, *["d" * 40] * 3)
    os.makedirs(deep)
    fd = os.open(deep, os.O_RDONLY | os.O_DIRECTORY)
    try:
        srv = FakeServer(f"/proc/self/fd/{fd}/api.sock")
    finally:
        os.close(fd)
    srv.routes[("GET", "/v1/status")] = json_answer({"ok": True})
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02})
    thread.start()
    try:
        path = os.path.join(deep, "api.sock")
        assert len(path) > 107
        assert Client(path).request("GET", "/v1/status") == (200, {"ok": True})
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join()


def test_garbage_answer_is_a_protocol_error(server: FakeServer) -> None:
    """An answer that is not HTTP raises ProtocolError, not a traceback."""
    def write(w: BinaryIO) -> None:
        w.write(b"SSH-2.0-nope\r\n")

    server.routes[("GET", "/v1/status")] = write
    with pytest.raises(ProtocolError, match="not an HTTP answer"):
        Client(server.path).request("GET", "/v1/status")


# -- commands over HTTP ----------------------------------------------------------------------


def test_unreachable_command_prints_one_line_and_exits_111(state_dir: str) -> None:
    """With no api.sock the command names the state dir and how to start a supervisor."""
    code, out, err = cli(state_dir, "svc", "status")
    assert code == 111
    assert out == ""
    assert err == (f"corral: cannot reach a supervisor at {state_dir} (no api.sock); "
                   f"start one with: corral sup run --state-dir {state_dir}\n")


def test_svc_status_json_is_the_servers_list(server: FakeServer, state_dir: str) -> None:
    """``svc status --json`` prints the list from the API unchanged."""
    server.routes[("GET", "/v1/services")] = json_answer([SERVICE])
    code, out, _ = cli(state_dir, "svc", "status", "--json")
    assert (code, json.loads(out)) == (0, [SERVICE])


def test_svc_status_name_wraps_one_object_in_a_list(server: FakeServer, state_dir: str) -> None:
    """``svc status NAME --json`` prints a one-element list from GET /v1/services/NAME."""
    server.routes[("GET", "/v1/services/web")] = json_answer(SERVICE)
    code, out, _ = cli(state_dir, "svc", "status", "web", "--json")
    assert (code, json.loads(out)) == (0, [SERVICE])


def test_svc_status_name_not_running_exits_1(server: FakeServer, state_dir: str) -> None:
    """A named service that is not running still prints, then exits 1 with one line."""
    server.routes[("GET", "/v1/services/web")] = json_answer(
        {**SERVICE, "state": "failed", "pid": None, "reason": "gave up after 5 restarts"})
    code, out, err = cli(state_dir, "svc", "status", "web")
    assert code == 1
    assert out.splitlines()[1].split()[:2] == ["web", "failed"]
    assert err == "corral: web is not running (failed)\n"


def test_svc_status_empty(server: FakeServer, state_dir: str) -> None:
    """With no services the table is replaced by a hint."""
    server.routes[("GET", "/v1/services")] = json_answer([])
    assert cli(state_dir, "svc", "status") == (
        0, "no services loaded (add one with: corral svc load NAME -- CMD)\n", "")


def test_svc_load_sends_only_given_fields(server: FakeServer, state_dir: str) -> None:
    """``svc load`` posts a spec with just the options given, nested as the API expects."""
    server.routes[("POST", "/v1/services")] = json_answer({"result": "added", "service": SERVICE})
    code, out, _ = cli(state_dir, "svc", "load", "web", "--env", "A=1", "--env", "B=x=y",
                       "--restart", "on-failure", "--stop-timeout", "30s", "--instances", "2",
                       "--", "python", "-m", "http.server", "--bind", "::")
    assert (code, out) == (0, "web: added (pid 1234)\n")
    assert server.requests[-1].body == {"spec": {
        "name": "web", "command": ["python", "-m", "http.server", "--bind", "::"],
        "env": {"A": "1", "B": "x=y"}, "instances": 2, "restart": {"policy": "on-failure"},
        "stop": {"timeout": "30s"}}}


def test_svc_load_file_sends_yaml_text(server: FakeServer, state_dir: str) -> None:
    """``svc load -f`` sends the file's text and path, untouched."""
    spec = os.path.join(state_dir, "web.yaml")
    with open(spec, "w") as f:
        f.write("name: web\ncommand: [sleep, '9']\n")
    server.routes[("POST", "/v1/services")] = json_answer(
        {"result": "unchanged", "service": {**SERVICE, "pid": None, "state": "down"}})
    code, out, _ = cli(state_dir, "svc", "load", "-f", spec)
    assert (code, out) == (0, "web: unchanged\n")
    assert server.requests[-1].body == {"yaml": "name: web\ncommand: [sleep, '9']\n",
                                        "source": spec}


def test_invalid_spec_prints_message_then_problems(server: FakeServer, state_dir: str) -> None:
    """An invalid_spec answer prints one ``corral:`` line, then one line per problem; exit 1."""
    error = {"code": "invalid_spec", "message": "the spec is invalid",
             "problems": ["command: required", "restart.policy: unknown value 'sometimes'"]}
    server.routes[("POST", "/v1/services")] = json_answer({"error": error}, 422)
    code, _, err = cli(state_dir, "svc", "load", "web", "--", "x")
    assert code == 1
    assert err.splitlines() == ["corral: the spec is invalid", "  command: required",
                                "  restart.policy: unknown value 'sometimes'"]


def test_svc_actions_print_state_and_pid(server: FakeServer, state_dir: str) -> None:
    """start/stop/unload/scale hit their endpoints and print one line each."""
    server.routes[("POST", "/v1/services/web/stop")] = json_answer(
        {**SERVICE, "state": "down", "pid": None})
    server.routes[("POST", "/v1/services/web/start")] = json_answer(SERVICE)
    server.routes[("DELETE", "/v1/services/web")] = json_answer({"result": "unloaded"})
    server.routes[("POST", "/v1/services/web/scale")] = json_answer({**SERVICE, "instances": 3})
    assert cli(state_dir, "svc", "stop", "web")[1] == "web: stopped, down\n"
    assert cli(state_dir, "svc", "start", "web")[1] == "web: started, up (pid 1234)\n"
    assert cli(state_dir, "svc", "unload", "web")[1] == "web: unloaded\n"
    assert cli(state_dir, "svc", "scale", "web", "3")[1] == "web: scaled to 3 instances, up (pid 1234)\n"
    assert server.requests[-1].body == {"instances": 3}


def test_not_found_exits_1(server: FakeServer, state_dir: str) -> None:
    """A 404 from the API is one line with the API's message and exit 1."""
    server.routes[("POST", "/v1/services/nope/start")] = json_answer(
        {"error": {"code": "not_found", "message": "no service named 'nope' (loaded: web)"}}, 404)
    assert cli(state_dir, "svc", "start", "nope") == (
        1, "", "corral: no service named 'nope' (loaded: web)\n")


def test_logs_prints_lines_and_follows(server: FakeServer, state_dir: str) -> None:
    """``logs`` prints the tail; ``logs -f`` prints streamed lines; a stream without ids (a
    supervisor from before cursors) cannot be resumed, so its end is the end."""
    server.routes[("GET", "/v1/services/web/logs?n=2")] = json_answer({"lines": ["a", "b"]})
    server.routes[("GET", "/v1/services/web/logs?n=50&follow=1")] = sse_answer(
        [b'data: {"line": "c"}\n\n', b'data: {"lines": ["d", "e"]}\n\n'])
    assert cli(state_dir, "logs", "web", "-n", "2") == (0, "a\nb\n", "")
    code, out, err = cli(state_dir, "logs", "web", "-f")
    assert (code, out) == (1, "c\nd\ne\n")
    assert err.startswith("corral: the supervisor ended the stream")


def cut_answer(frames: list[bytes]) -> Writer:
    """An event stream that sends ``frames`` and drops the connection mid-event, as a
    killed supervisor does."""
    def write(w: BinaryIO) -> None:
        w.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                b"transfer-encoding: chunked\r\n\r\n")
        for frame in [*frames, b'data: {"lines": ["never sh']:
            w.write(f"{len(frame):x}\r\n".encode() + frame + b"\r\n")
        w.flush()
    return write


def test_logs_follow_resumes_from_the_last_cursor(server: FakeServer, state_dir: str) -> None:
    """``logs -f`` cut mid-stream reconnects with ``Last-Event-ID`` set to the cursor of the
    last whole batch, prints what follows once, says what was skipped on stderr, and ends
    on an error answer (here: the service was unloaded meanwhile)."""
    answers = iter([
        cut_answer([b"id: 7:0\n\n", b'id: 7:4\ndata: {"lines": ["a", "b"]}\n\n']),
        cut_answer([b'id: 9:0:4\ndata: {"skipped": {"bytes": 120}}\n\n',
                    b'id: 9:2:4\ndata: {"lines": ["c"]}\n\n']),
        json_answer({"error": {"code": "not_found", "message": "no service named 'web'"}}, 404),
    ])
    server.routes[("GET", "/v1/services/web/logs?n=0&follow=1")] = \
        lambda w: next(answers)(w)
    code, out, err = cli(state_dir, "logs", "web", "-f", "-n", "0")
    assert (code, out) == (1, "a\nb\nc\n")
    assert [r.headers.get("last-event-id") for r in server.requests] == [None, "7:4", "9:2:4"]
    assert err.splitlines() == [
        "corral: skipped 120 bytes of web's log: rotated away before they could be read "
        "(raise logs.max_bytes or logs.keep to keep more)",
        "corral: no service named 'web'"]


def test_follow_gives_up_after_its_patience(server: FakeServer, state_dir: str) -> None:
    """When no supervisor comes back, :meth:`Client.follow` retries with a growing pause
    and gives up with one error once its patience is spent."""
    server.routes[("GET", "/v1/events?follow=1")] = cut_answer([b"id: 3\n\n"])
    clock = [0.0]
    pauses: list[float] = []

    def sleep(seconds: float) -> None:
        pauses.append(seconds)
        clock[0] += seconds
        if len(pauses) == 1:
            server.stop()  # the supervisor is gone for good

    follow = Client(server.path).follow("/v1/events?follow=1", patience=5, sleep=sleep,
                                        clock=lambda: clock[0])
    with pytest.raises(CliError, match=r"could not resume it within 5 s \(cannot reach"):
        list(follow)
    assert pauses[:5] == [0.1, 0.2, 0.4, 0.8, 1.0] and 5 <= sum(pauses) < 6


def test_follow_ends_without_retrying_once_corral_has_stopped(server: FakeServer) -> None:
    """A cut stream with ``stopped`` saying corral has stopped (no launcher holds its
    state directory) ends the iteration: no retry, no error."""
    server.routes[("GET", "/v1/events?follow=1")] = cut_answer(
        [b'id: 3\ndata: {"seq": 3}\n\n'])
    pauses: list[float] = []
    follow = Client(server.path).follow("/v1/events?follow=1", sleep=pauses.append,
                                        stopped=lambda: True)
    assert list(follow) == [{"seq": 3}] and pauses == []
    assert len(server.requests) == 1


def test_sse_events_in_small_pieces() -> None:
    """Events split anywhere (even inside CRLF) parse the same; an id-only event moves the
    position; comments are skipped; a cut-off last event is dropped."""
    stream = (b": hello\r\nid: 1\r\n\r\nid: 2\ndata: {\"a\":\ndata: 1}\n\n"
              b"data: " + b"x" * 200_000 + b"\n\nid: 4\ndata: cut")
    for size in (1, 7, 4096, len(stream)):
        pieces = iter([stream[i:i + size] for i in range(0, len(stream), size)])
        assert list(sse_events(pieces)) == [("1", None), ("2", '{"a":\n1}'),
                                             (None, "x" * 200_000)]


def test_events_human_and_json(server: FakeServer, state_dir: str) -> None:
    """``events`` prints one readable line per event, or JSON Lines with --json."""
    event = {"seq": 17, "at": "2026-11-21T23:59:01.123456Z", "service": "web", "instance": 0,
             "kind": "exit", "from": "up", "to": "backoff", "reason": "exited with code 1"}
    server.routes[("GET", "/v1/events?n=5&service=web")] = json_answer({"events": [event]})
    assert cli(state_dir, "events", "-n", "5", "--service", "web") == (
        0, "2026-11-21 23:59:01.123 web[0] exit up->backoff exited with code 1\n", "")
    code, out, _ = cli(state_dir, "events", "-n", "5", "--service", "web", "--json")
    assert code == 0
    assert [json.loads(line) for line in out.splitlines()] == [event]


def test_sup_stop_waits_until_the_socket_stops_answering(server: FakeServer, state_dir: str) -> None:
    """``sup stop`` posts the stop, then prints ``stopped`` once api.sock no longer answers."""
    def stop(w: BinaryIO) -> None:
        json_answer({"result": "stopping"}, 202)(w)
        threading.Timer(0.2, server.stop).start()

    server.routes[("POST", "/v1/supervisor/stop")] = stop
    assert cli(state_dir, "sup", "stop", "--timeout", "10") == (0, "stopped\n", "")


def test_sup_status_lines(server: FakeServer, state_dir: str) -> None:
    """``sup status`` prints aligned label/value lines."""
    server.routes[("GET", "/v1/status")] = json_answer(
        {"version": "0.1.0", "launcher_pid": 10, "supervisor_pid": 11, "state_dir": state_dir,
         "uptime_s": 192.5, "services": {"total": 3, "up": 2, "down": 0, "backoff": 1}})
    code, out, _ = cli(state_dir, "sup", "status")
    assert code == 0
    assert "uptime          3m12s" in out.splitlines()
    assert "services        2 up / 3 total (1 backoff)" in out.splitlines()


def test_events_follow_path_and_duplicates(server: FakeServer, state_dir: str) -> None:
    """``events -f --service`` streams /v1/events?follow=1&n=0&service=NAME (no history
    unless -n is given) and skips repeated seqs."""
    frames = [b'data: {"seq": 1, "kind": "spawn", "service": "web"}\n\n',
              b'data: {"seq": 1, "kind": "spawn", "service": "web"}\n\n',
              b'data: {"seq": 2, "kind": "exit", "service": "web"}\n\n']
    server.routes[("GET", "/v1/events?follow=1&n=0&service=web")] = sse_answer(frames)
    code, out, _ = cli(state_dir, "events", "-f", "--service", "web", "--json")
    assert code == 1  # the stream ended without ids: it cannot be resumed
    assert [json.loads(line)["seq"] for line in out.splitlines()] == [1, 2]
    server.routes[("GET", "/v1/events?follow=1&n=3")] = sse_answer(frames[2:])
    assert cli(state_dir, "events", "-f", "-n", "3", "--json")[1].count("\n") == 1


def test_events_follow_resumes_after_the_last_seq(server: FakeServer, state_dir: str) -> None:
    """``events -f`` cut mid-stream asks for the events after the last id it got, and
    says on stderr when the supervisor no longer has some of them."""
    answers = iter([
        cut_answer([b'id: 5\ndata: {"seq": 5, "kind": "spawn", "service": "web"}\n\n',
                    b"id: 6\n\n"]),
        cut_answer([b'data: {"skipped": {"events": 2, "reason": "dropped"}}\n\n',
                    b'id: 100001\ndata: {"seq": 100001, "kind": "adopt", "service": "web"}\n\n']),
        json_answer({"error": {"code": "internal", "message": "gone"}}, 500),
    ])
    server.routes[("GET", "/v1/events?follow=1&n=0")] = lambda w: next(answers)(w)
    code, out, err = cli(state_dir, "events", "-f", "--json")
    assert code == 1
    assert [json.loads(line)["seq"] for line in out.splitlines()] == [5, 100001]
    assert [r.headers.get("last-event-id") for r in server.requests] == [None, "6", "100001"]
    assert err.splitlines()[0] == "corral: 2 events missing here: dropped"


class _ClosedPipe(io.StringIO):
    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_broken_pipe_exits_quietly(server: FakeServer, state_dir: str) -> None:
    """When the reader of stdout goes away (``| head``), the command exits 0 without a word."""
    server.routes[("GET", "/v1/services")] = json_answer([SERVICE])
    err = io.StringIO()
    assert run(["--state-dir", state_dir, "svc", "status"], stdout=_ClosedPipe(), stderr=err) == 0
    assert err.getvalue() == ""
