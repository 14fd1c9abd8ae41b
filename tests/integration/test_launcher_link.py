"""Tests of the launcher's side of the protocol: Link, ExitQueue and Dispatcher.handle_request.

Everything runs in-process over ``socket.socketpair()``; the only child processes are the
ones a successful ``Spawn`` starts, and each test that makes one kills and reaps it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.launcher import dispatch, server
from corral.launcher.pid1 import Launcher
from corral.launcher.server import ExitQueue, Link
from corral.launcher.spawn import Started
from corral.protocol import framing
from corral.protocol import messages as m
from corral.protocol.framing import Decoder, encode

Message = dict[str, Any]


# ------------------------------------------------------------------------------ helpers
class Peer:
    """The supervisor's end of the socket pair, blocking with a guard against hangs."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.settimeout(10)
        self.decoder = Decoder()
        self.inbox: list[Message] = []

    def send(self, *messages: Message) -> None:
        self.sock.sendall(b"".join(encode(msg) for msg in messages))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def receive(self, count: int = 1) -> list[Message]:
        """Read until ``count`` messages have arrived; fail on EOF first."""
        while len(self.inbox) < count:
            data = self.sock.recv(65536)
            assert data, f"EOF after {self.inbox!r}"
            self.inbox += self.decoder.feed(data)
        out, self.inbox = self.inbox[:count], self.inbox[count:]
        return out

    def at_eof(self) -> bool:
        """True when the launcher's end is closed and nothing else was sent."""
        return self.sock.recv(65536) == b"" and not self.inbox and not self.decoder.pending

    def nothing_waiting(self) -> bool:
        """True when the launcher has sent nothing (and not closed)."""
        self.sock.setblocking(False)
        try:
            self.sock.recv(1)
        except BlockingIOError:
            return True
        finally:
            self.sock.settimeout(10)
        return False


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, Peer]]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    peer = Peer(theirs)
    yield ours, peer
    ours.close()
    theirs.close()


def make_link(pair: tuple[socket.socket, Peer],
              handler: Callable[[Message], Message | None]) -> tuple[Link, Peer]:
    ours, peer = pair
    return Link(ours, handler), peer


def echo(message: Message) -> Message | None:
    """A handler that answers every request with an Ok carrying its id."""
    return {"type": m.OK, "id": message.get("id")}


def frame_of(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


# --------------------------------------------------------------------------- Link
def test_request_gets_its_reply(pair: tuple[socket.socket, Peer]) -> None:
    """A request the supervisor sends is answered with the handler's reply."""
    seen: list[Message] = []

    def handler(message: Message) -> Message:
        seen.append(message)
        return {"type": m.OK, "id": message["id"]}

    link, peer = make_link(pair, handler)
    peer.send({"type": m.LIST, "id": 1})
    link.on_readable()
    assert seen == [{"type": m.LIST, "id": 1}]
    assert peer.receive() == [{"type": m.OK, "id": 1}]
    assert not link.closed


def test_pipelined_requests_are_answered_in_order(pair: tuple[socket.socket, Peer]) -> None:
    """Requests sent back to back are each answered, in order, with their own ids."""
    link, peer = make_link(pair, echo)
    peer.send(*({"type": m.LIST, "id": rid} for rid in (5, 3, 9, 1)))
    link.on_readable()
    assert [reply["id"] for reply in peer.receive(4)] == [5, 3, 9, 1]
    assert not link.closed


def test_request_split_across_reads_is_answered_once_complete(
        pair: tuple[socket.socket, Peer]) -> None:
    """A request that arrives in two pieces is answered only when its last byte is in."""
    calls: list[Message] = []

    def handler(message: Message) -> Message:
        calls.append(message)
        return echo(message) or {}

    link, peer = make_link(pair, handler)
    data = encode({"type": m.LIST, "id": 42})
    peer.send_raw(data[:6])
    link.on_readable()
    assert calls == []
    assert peer.nothing_waiting()
    peer.send_raw(data[6:])
    link.on_readable()
    assert peer.receive() == [{"type": m.OK, "id": 42}]


def test_handler_returning_none_sends_nothing(pair: tuple[socket.socket, Peer]) -> None:
    """A request answered later (or an Ack) sends no reply now and keeps the link open."""
    link, peer = make_link(pair, lambda message: None)
    peer.send({"type": m.ACK, "seq": 1})
    link.on_readable()
    assert peer.nothing_waiting()
    assert not link.closed


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (frame_of(b"not json"), "invalid JSON"),
        (frame_of(b"\xff\xfe\xfd"), "invalid UTF-8"),
        (frame_of(b"[1, 2]"), "JSON that is not an object"),
        (frame_of(b'"List"'), "a JSON string"),
        (struct.pack(">I", framing.MAX_FRAME + 1), "oversized length"),
        (b"\xff\xff\xff\xff" + b"x" * 100, "4 GiB length"),
    ],
)
def test_bad_frame_gets_bad_request_then_disconnect(
        pair: tuple[socket.socket, Peer], data: bytes, why: str) -> None:
    """A malformed or oversized frame is answered with Error BadRequest, then the link closes."""
    calls: list[Message] = []
    link, peer = make_link(pair, lambda message: calls.append(message) or echo(message))
    peer.send_raw(data)
    link.on_readable()  # must not raise
    assert link.closed
    assert calls == []
    [reply] = peer.receive()
    assert reply["type"] == m.ERROR
    assert reply["code"] == m.E_BAD_REQUEST
    assert reply["id"] is None
    assert "bad frame" in reply["message"]
    assert peer.at_eof()


def test_bad_frame_after_good_ones_still_disconnects(pair: tuple[socket.socket, Peer]) -> None:
    """Garbage that follows valid traffic on the link still ends in BadRequest and EOF."""
    link, peer = make_link(pair, echo)
    peer.send({"type": m.LIST, "id": 1})
    link.on_readable()
    assert peer.receive() == [{"type": m.OK, "id": 1}]
    peer.send_raw(frame_of(b"{oops"))
    link.on_readable()
    assert link.closed
    [reply] = peer.receive()
    assert (reply["type"], reply["code"]) == (m.ERROR, m.E_BAD_REQUEST)
    assert peer.at_eof()


def test_handler_exception_gets_error_reply_and_link_stays_open(
        pair: tuple[socket.socket, Peer], capsys: pytest.CaptureFixture[str]) -> None:
    """A request whose handler fails is answered with an Error and later requests still work."""

    def handler(message: Message) -> Message:
        if message["type"] == "Boom":
            raise RuntimeError("kaput")
        return {"type": m.OK, "id": message["id"]}

    link, peer = make_link(pair, handler)
    peer.send({"type": "Boom", "id": 1}, {"type": m.LIST, "id": 2})
    link.on_readable()
    first, second = peer.receive(2)
    assert (first["type"], first["id"], first["code"]) == (m.ERROR, 1, m.E_BAD_REQUEST)
    assert "kaput" in first["message"]
    assert second == {"type": m.OK, "id": 2}
    assert not link.closed
    assert "kaput" in capsys.readouterr().err
    peer.send({"type": m.LIST, "id": 3})
    link.on_readable()
    assert peer.receive() == [{"type": m.OK, "id": 3}]


def test_unknown_message_type_gets_error_and_link_stays_open(
        pair: tuple[socket.socket, Peer], launcher: Launcher) -> None:
    """An unknown request type is answered with Error BadRequest; the link stays usable."""
    link, peer = make_link(pair, launcher.dispatcher.handle_request)
    peer.send({"type": "Frobnicate", "id": 7}, {"type": m.LIST, "id": 8})
    link.on_readable()
    error, children = peer.receive(2)
    assert (error["type"], error["id"], error["code"]) == (m.ERROR, 7, m.E_BAD_REQUEST)
    assert "Frobnicate" in error["message"]
    assert children == {"type": m.CHILDREN, "id": 8, "children": [], "listeners": [],
                        "respawns": []}
    assert not link.closed


def test_oversized_reply_becomes_an_error(pair: tuple[socket.socket, Peer],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A reply too large to send is replaced by an Error for the same request."""
    monkeypatch.setattr(framing, "MAX_FRAME", 1024)
    link, peer = make_link(pair, lambda message: {"type": m.OK, "id": message["id"],
                                                  "pad": "x" * 4096})
    peer.send({"type": m.LIST, "id": 4})
    link.on_readable()
    [reply] = peer.receive()
    assert (reply["type"], reply["id"], reply["code"]) == (m.ERROR, 4, m.E_BAD_REQUEST)
    assert not link.closed


def test_unencodable_reply_becomes_an_error(pair: tuple[socket.socket, Peer]) -> None:
    """A handler bug that returns an unencodable reply still gets the request an Error reply."""
    link, peer = make_link(pair, lambda message: {"type": m.OK, "id": message["id"],
                                                  "data": b"bytes are not JSON"})
    peer.send({"type": m.LIST, "id": 5})
    link.on_readable()
    [reply] = peer.receive()
    assert (reply["type"], reply["id"]) == (m.ERROR, 5)
    assert not link.closed


def test_peer_closing_closes_the_link(pair: tuple[socket.socket, Peer]) -> None:
    """When the supervisor's end goes away the link notices and closes itself."""
    link, peer = make_link(pair, echo)
    peer.sock.close()
    link.on_readable()
    assert link.closed


def test_on_readable_without_data_does_nothing(pair: tuple[socket.socket, Peer]) -> None:
    """A spurious wake-up with nothing to read leaves the link open and sends nothing."""
    link, peer = make_link(pair, echo)
    link.on_readable()
    assert not link.closed
    assert peer.nothing_waiting()


def test_send_queues_unasked_messages(pair: tuple[socket.socket, Peer]) -> None:
    """Unasked messages are queued by send and delivered by flush."""
    link, peer = make_link(pair, echo)
    link.send({"type": m.EXITED, "name": "web", "pid": 10, "seq": 1})
    assert link.wants_write
    link.flush()
    assert not link.wants_write
    assert peer.receive() == [{"type": m.EXITED, "name": "web", "pid": 10, "seq": 1}]


def test_send_after_close_is_ignored(pair: tuple[socket.socket, Peer]) -> None:
    """Sending on a closed link neither raises nor queues anything."""
    link, _ = make_link(pair, echo)
    fd = link.fileno()
    link.close()
    link.send({"type": m.SHUTDOWN})
    link.flush()
    link.close()
    assert link.closed
    assert not link.wants_write
    assert link.fileno() == fd


# ------------------------------------------------------------------------- ExitQueue
def exited(pid: int) -> Message:
    return {"type": m.EXITED, "name": "svc", "pid": pid, "exit_code": 0, "signal": None}


def test_exit_queue_numbers_messages_in_order() -> None:
    """Each queued exit gets the next sequence number and they replay oldest first."""
    queue = ExitQueue()
    added = [queue.add(exited(pid)) for pid in (100, 101, 102)]
    assert [msg["seq"] for msg in added] == [1, 2, 3]
    assert [msg["pid"] for msg in queue.pending()] == [100, 101, 102]


def test_exit_queue_ack_drops_up_to_seq() -> None:
    """Acknowledging seq N forgets exits 1..N and keeps the later ones."""
    queue = ExitQueue()
    for pid in range(5):
        queue.add(exited(pid))
    queue.ack(3)
    assert [msg["seq"] for msg in queue.pending()] == [4, 5]
    queue.ack(3)  # acknowledging again is harmless
    assert [msg["seq"] for msg in queue.pending()] == [4, 5]
    queue.ack(10)
    assert queue.pending() == []


def test_exit_queue_keeps_numbering_after_ack() -> None:
    """Sequence numbers keep increasing after everything has been acknowledged."""
    queue = ExitQueue()
    queue.add(exited(1))
    queue.ack(1)
    assert queue.add(exited(2))["seq"] == 2
    assert [msg["seq"] for msg in queue.pending()] == [2]


@pytest.mark.parametrize("seq", [None, "3", 2.5, [3]])
def test_exit_queue_ignores_non_integer_ack(seq: object) -> None:
    """An Ack without an integer seq forgets nothing."""
    queue = ExitQueue()
    for pid in range(3):
        queue.add(exited(pid))
    queue.ack(seq)
    assert len(queue.pending()) == 3


def test_exit_queue_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past its bound the queue forgets the oldest exits, keeping the newest."""
    monkeypatch.setattr(server, "MAX_QUEUED_EXITS", 3)
    queue = ExitQueue()
    for pid in range(10):
        queue.add(exited(pid))
    assert [msg["seq"] for msg in queue.pending()] == [8, 9, 10]


# ------------------------------------------------------------ Dispatcher.handle_request
@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[Launcher]:
    launcher = Launcher(tmp_path, [])
    yield launcher
    os.close(launcher.devnull)
    launcher.reactor.sel.close()


@pytest.fixture
def spawned(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Started]]:
    """Record every child the launcher starts, and kill and reap them after the test."""
    started: list[Started] = []
    real_spawn = dispatch.spawn

    def recording_spawn(*args: Any, **kwargs: Any) -> Started:
        result = real_spawn(*args, **kwargs)
        started.append(result)
        return result

    monkeypatch.setattr(dispatch, "spawn", recording_spawn)
    yield started
    for child in started:
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(child.pid, 0)
        for fd in (child.stdout, child.stderr):
            try:
                os.close(fd)
            except OSError:
                pass


SLEEP = shutil.which("sleep") or "/bin/sleep"
_DROP = object()  # a field to leave out of the request


def spawn_request(tmp_path: Path, **fields: Any) -> Message:
    request: Message = {"type": m.SPAWN, "id": 1, "name": "web", "argv": [SLEEP, "60"],
                        "env": {}, "cwd": str(tmp_path),
                        "log": {"path": str(tmp_path / "logs" / "web.log")}}
    request.update(fields)
    return {key: value for key, value in request.items() if value is not _DROP}


def test_handle_unknown_type_is_bad_request(launcher: Launcher) -> None:
    """A request of a type the launcher does not know is answered with BadRequest."""
    reply = launcher.dispatcher.handle_request({"type": "Reboot", "id": 11})
    assert reply is not None
    assert (reply["type"], reply["id"], reply["code"]) == (m.ERROR, 11, m.E_BAD_REQUEST)


def test_handle_request_without_type_is_bad_request(launcher: Launcher) -> None:
    """A request with no type at all is answered with BadRequest."""
    reply = launcher.dispatcher.handle_request({"id": 12})
    assert reply is not None
    assert (reply["type"], reply["code"]) == (m.ERROR, m.E_BAD_REQUEST)


def test_signal_unknown_pid_is_no_such_process(launcher: Launcher) -> None:
    """Signalling a pid the launcher did not start is refused with NoSuchProcess."""
    reply = launcher.dispatcher.handle_request({"type": m.SIGNAL, "id": 2, "pid": os.getpid(),
                                     "signal": "HUP"})
    assert reply is not None
    assert (reply["type"], reply["id"], reply["code"]) == (m.ERROR, 2, m.E_NO_SUCH_PROCESS)


def test_signal_with_unknown_signal_is_bad_request(launcher: Launcher) -> None:
    """Signalling with a name that is no signal is refused with BadRequest."""
    reply = launcher.dispatcher.handle_request({"type": m.SIGNAL, "id": 3, "pid": 1, "signal": "NOPE"})
    assert reply is not None
    assert (reply["type"], reply["code"]) == (m.ERROR, m.E_BAD_REQUEST)


def test_terminate_unknown_pid_is_already_exited(launcher: Launcher) -> None:
    """Terminating a pid that is not running reports it as already exited."""
    reply = launcher.dispatcher.handle_request({"type": m.TERMINATE, "id": 4, "pid": 999_999_999,
                                     "signal": "TERM", "timeout": 5})
    assert reply == {"type": m.TERMINATED, "id": 4, "method": m.ALREADY_EXITED,
                     "exit_code": None, "signal": None}


def test_terminate_recently_exited_pid_reports_its_status(launcher: Launcher) -> None:
    """Terminating a child that just exited reports how it exited."""
    launcher.children.recent_exits[4321] = {"type": m.EXITED, "name": "web", "pid": 4321,
                                   "exit_code": None, "signal": "KILL", "at": 0.0}
    reply = launcher.dispatcher.handle_request({"type": m.TERMINATE, "id": 5, "pid": 4321})
    assert reply is not None
    assert (reply["method"], reply["exit_code"], reply["signal"]) == (
        m.ALREADY_EXITED, None, "KILL")


@pytest.mark.parametrize("fields", [{"timeout": -1}, {"timeout": "soon"}, {"signal": "NOPE"}])
def test_terminate_with_bad_fields_is_bad_request(launcher: Launcher,
                                                  fields: dict[str, Any]) -> None:
    """Terminate with a negative or non-numeric timeout or an unknown signal is refused."""
    reply = launcher.dispatcher.handle_request({"type": m.TERMINATE, "id": 6, "pid": 1, **fields})
    assert reply is not None
    assert (reply["type"], reply["code"]) == (m.ERROR, m.E_BAD_REQUEST)


def test_list_without_children(launcher: Launcher) -> None:
    """List on a fresh launcher answers Children with an empty list."""
    assert launcher.dispatcher.handle_request({"type": m.LIST, "id": 7}) == {
        "type": m.CHILDREN, "id": 7, "children": [], "listeners": [], "respawns": []}


def test_ack_forgets_exits_and_sends_no_reply(launcher: Launcher) -> None:
    """An Ack is not answered and drops the acknowledged exits from the replay queue."""
    for pid in (1, 2, 3):
        launcher.children.exits.add(exited(pid))
    assert launcher.dispatcher.handle_request({"type": m.ACK, "seq": 2}) is None
    assert [msg["seq"] for msg in launcher.children.exits.pending()] == [3]


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({"name": _DROP}, "missing name"),
        ({"name": ""}, "empty name"),
        ({"argv": "sleep 60"}, "argv not a list"),
        ({"argv": []}, "empty argv"),
        ({"argv": [SLEEP, 60]}, "argv with a number"),
        ({"env": {"PORT": 8080}}, "env with a non-string value"),
        ({"env": ["A=1"]}, "env not an object"),
        ({"rlimits": {"bananas": 1}}, "unknown rlimit"),
        ({"rlimits": {"nofile": "many"}}, "non-integer rlimit"),
        ({"umask": 0o1777}, "umask out of range"),
        ({"cwd": 5}, "cwd not a string"),
        ({"log": _DROP}, "missing log"),
        ({"log": {}}, "log without path"),
        ({"log": {"path": ""}}, "empty log path"),
        ({"log": "/tmp/x.log"}, "log not an object"),
    ],
)
def test_spawn_with_bad_fields_is_bad_request(launcher: Launcher, tmp_path: Path,
                                              spawned: list[Started], fields: dict[str, Any],
                                              why: str) -> None:
    """A Spawn with malformed fields is refused with BadRequest and starts nothing."""
    reply = launcher.dispatcher.handle_request(spawn_request(tmp_path, **fields))
    assert reply is not None
    assert (reply["type"], reply["id"], reply["code"]) == (m.ERROR, 1, m.E_BAD_REQUEST)
    assert spawned == []
    assert launcher.children == {}
    assert launcher.children.spawns["web"] == 0


def test_spawn_missing_binary_is_exec_failed(launcher: Launcher, tmp_path: Path,
                                             spawned: list[Started]) -> None:
    """Spawning a binary that does not exist is refused with ExecFailed naming the path."""
    missing = str(tmp_path / "no" / "such-binary")
    reply = launcher.dispatcher.handle_request(spawn_request(tmp_path, argv=[missing, "--flag"]))
    assert reply is not None
    assert (reply["type"], reply["code"]) == (m.ERROR, m.E_EXEC_FAILED)
    assert missing in reply["message"]
    assert spawned == []
    assert launcher.children == {}


def test_spawn_missing_working_directory_is_exec_failed(launcher: Launcher, tmp_path: Path,
                                                        spawned: list[Started]) -> None:
    """Spawning into a working directory that does not exist says it is the directory."""
    missing = str(tmp_path / "gone")
    reply = launcher.dispatcher.handle_request(spawn_request(tmp_path, cwd=missing))
    assert reply is not None
    assert (reply["type"], reply["code"]) == (m.ERROR, m.E_EXEC_FAILED)
    assert "working directory" in reply["message"]
    assert missing in reply["message"]


def test_spawn_unknown_user_is_user_not_found(launcher: Launcher, tmp_path: Path,
                                              spawned: list[Started]) -> None:
    """Spawning as a user that does not exist is refused with UserNotFound."""
    reply = launcher.dispatcher.handle_request(spawn_request(tmp_path, user="no-such-user-xyz"))
    assert reply is not None
    assert (reply["type"], reply["code"]) == (m.ERROR, m.E_USER_NOT_FOUND)
    assert "no-such-user-xyz" in reply["message"]
    assert spawned == []


def test_spawn_unknown_group_is_group_not_found(launcher: Launcher, tmp_path: Path,
                                                spawned: list[Started]) -> None:
    """Spawning with a group that does not exist is refused with GroupNotFound."""
    reply = launcher.dispatcher.handle_request(spawn_request(tmp_path, group="no-such-group-xyz"))
    assert reply is not None
    assert (reply["type"], reply["code"]) == (m.ERROR, m.E_GROUP_NOT_FOUND)
    assert spawned == []


def test_spawn_then_list_and_signal(launcher: Launcher, tmp_path: Path,
                                    spawned: list[Started]) -> None:
    """A spawned child is reported by List with its argv and spawn count, and can be signalled."""
    reply = launcher.dispatcher.handle_request(spawn_request(tmp_path))
    assert reply is not None
    assert reply["type"] == m.SPAWNED, reply
    pid = reply["pid"]
    assert [started.pid for started in spawned] == [pid]
    assert isinstance(reply["started_at"], float)

    listing = launcher.dispatcher.handle_request({"type": m.LIST, "id": 2})
    assert listing == {"type": m.CHILDREN, "id": 2, "children": [
        {"name": "web", "pid": pid, "started_at": reply["started_at"], "argv": [SLEEP, "60"],
         "spawns": 1, "cgroup": None, "on_exit": None}], "listeners": [],
        "respawns": []}

    ok = launcher.dispatcher.handle_request({"type": m.SIGNAL, "id": 3, "pid": pid, "signal": "CONT"})
    assert ok == {"type": m.OK, "id": 3}
    ok = launcher.dispatcher.handle_request({"type": m.SIGNAL, "id": 4, "pid": pid, "signal": "CONT",
                                  "group": True})
    assert ok == {"type": m.OK, "id": 4}
    _forget_children(launcher)


@pytest.mark.parametrize("log", [{"max_bytes": "lots"}, {"keep": "few"}, {"keep": None},
                                 {"keep": -1}, {"max_bytes": True}, {"format": "json"}])
def test_spawn_with_bad_log_settings_starts_nothing(launcher: Launcher, tmp_path: Path,
                                                    spawned: list[Started],
                                                    log: dict[str, Any]) -> None:
    """A Spawn with an invalid log size, keep count or format is refused before any child runs."""
    request = spawn_request(tmp_path, log={"path": str(tmp_path / "web.log"), **log})
    try:
        reply = launcher.dispatcher.handle_request(request)
    finally:
        _forget_children(launcher)
    assert reply is not None
    assert (reply["type"], reply["code"]) == (m.ERROR, m.E_BAD_REQUEST)
    assert spawned == []


def _forget_children(launcher: Launcher) -> None:
    """Undo the launcher's bookkeeping of children (the ``spawned`` fixture reaps them)."""
    for child in launcher.children.values():
        for reader in child.readers:
            launcher.reactor.sel.unregister(reader.fd)
    for pid in list(launcher.children):
        launcher.children.remove(pid)
    for log in launcher.logs.values():
        log.close()

