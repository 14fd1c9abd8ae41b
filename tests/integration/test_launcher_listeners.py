"""Tests of the launcher's listening sockets (corral.launcher.listeners) and of the
Spawn fields for socket mode and cgroups, on real loopback sockets, in-process."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.launcher.listeners import BACKLOG, ListenError, Listeners, bind
from corral.launcher.pid1 import Launcher
from corral.launcher.spawn import SpawnError, SpawnRequest
from corral.protocol import messages as m


@pytest.fixture
def listeners() -> Iterator[Listeners]:
    held = Listeners()
    yield held
    for name in list(held.by_name):
        held.unlisten(name)


def test_listen_is_idempotent_and_reports_the_bound_port(listeners: Listeners) -> None:
    """Port 0 picks a port; asking again (with 0 or that port) returns the same socket."""
    first = listeners.listen("web", "127.0.0.1", 0)
    host, port = first.bound
    assert host == "127.0.0.1" and port > 0
    assert listeners.listen("web", "127.0.0.1", 0) is first
    assert listeners.listen("web", "127.0.0.1", port) is first
    assert listeners.describe() == [{"name": "web", "host": "127.0.0.1", "port": port}]
    assert listeners.fds(["web"]) == [first.sock.fileno()]
    assert first.sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1
    assert not first.sock.get_inheritable()  # only the children that ask get it


def test_listening_socket_accepts(listeners: Listeners) -> None:
    """The socket is listening (backlog 4096) as soon as Listen returns."""
    port = listeners.listen("web", "127.0.0.1", 0).bound[1]
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass
    assert BACKLOG == 4096


def test_listen_refusals(listeners: Listeners) -> None:
    """Another address under a held name, bad names and ports are refused with a reason."""
    listeners.listen("web", "127.0.0.1", 0)
    with pytest.raises(ListenError, match=r"already listens on 127\.0\.0\.1:"):
        listeners.listen("web", "127.0.0.2", 0)
    for name in ("", "a:b", "a b", "x" * 65):
        with pytest.raises(ListenError, match="bad listener name"):
            listeners.listen(name, "127.0.0.1", 0)
    with pytest.raises(ListenError, match="out of range"):
        listeners.listen("other", "127.0.0.1", 70000)
    with pytest.raises(ListenError, match="cannot resolve"):
        listeners.listen("other", "no-such-host.invalid", 0)
    with pytest.raises(KeyError, match="nope"):
        listeners.fds(["web", "nope"])


def test_in_use_is_reported() -> None:
    """A bound address is 'in use', with the address in the message."""
    busy = bind("127.0.0.1", 0)
    try:
        port = busy.getsockname()[1]
        in_use = rf"^cannot listen on 127\.0\.0\.1:{port}: the address is already in use$"
        with pytest.raises(ListenError, match=in_use):
            bind("127.0.0.1", port)
    finally:
        busy.close()


def test_unlisten_closes_the_launchers_copy(listeners: Listeners) -> None:
    """After Unlisten the port is free again; a second Unlisten says it was not held."""
    port = listeners.listen("web", "127.0.0.1", 0).bound[1]
    assert listeners.unlisten("web") is True
    assert listeners.unlisten("web") is False
    bind("127.0.0.1", port).close()


def test_spawn_request_fields() -> None:
    """listen_fds must be distinct names; memory_max a positive byte count."""
    base = {"name": "web/0", "argv": ["true"], "log": {"path": "/tmp/x.log"}}
    req = SpawnRequest.parse({**base, "listen_fds": ["a", "b"], "memory_max": 1 << 20})
    assert (req.listen_fds, req.memory_max) == (["a", "b"], 1 << 20)
    assert SpawnRequest.parse(base).listen_fds == []
    for bad in ({"listen_fds": ["a", "a"]}, {"listen_fds": "a"}, {"listen_fds": [3]},
                {"memory_max": 0}, {"memory_max": True}, {"memory_max": "1G"}):
        with pytest.raises(SpawnError) as info:
            SpawnRequest.parse({**base, **bad})
        assert info.value.code == m.E_BAD_REQUEST


def test_handle_listen_list_unlisten(tmp_path: Path) -> None:
    """Through the launcher's request handler: Listening, List's listeners, Ok{existed}."""
    launcher = Launcher(tmp_path, [])
    try:
        reply = launcher.dispatcher.handle_request({"type": m.LISTEN, "id": 1, "name": "web",
                                         "host": "127.0.0.1", "port": 0})
        assert reply is not None and reply["type"] == m.LISTENING, reply
        listing = launcher.dispatcher.handle_request({"type": m.LIST, "id": 2})
        assert listing is not None
        assert listing["listeners"] == [{"name": "web", "host": "127.0.0.1",
                                         "port": reply["port"]}]
        bad = launcher.dispatcher.handle_request({"type": m.LISTEN, "id": 3, "name": "web"})
        assert bad is not None and bad["code"] == m.E_BAD_REQUEST
        gone = launcher.dispatcher.handle_request({"type": m.UNLISTEN, "id": 4, "name": "web"})
        assert gone == {"type": m.OK, "id": 4, "existed": True}
    finally:
        launcher.listeners.unlisten("web")
        launcher.reactor.sel.close()
