"""A refused address reads the same whether the launcher or the balancer bound it."""

from __future__ import annotations

import socket

import pytest

from corral.balancer import proxy
from corral.launcher import listeners
from corral.protocol.binding import BindError


def refusal(bind: object, host: str, port: int) -> str:
    try:
        bind(host, port).close()  # type: ignore[operator]
    except (BindError, listeners.ListenError) as exc:
        return str(exc)
    raise AssertionError(f"{host}:{port} was bound")


def test_in_use_and_not_local_are_one_line_each_alike() -> None:
    """An address in use and one not of this host give the same line from both binds."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for bind in (listeners.bind, proxy.bind):
            assert refusal(bind, "127.0.0.1", port) == (
                f"cannot listen on 127.0.0.1:{port}: the address is already in use")
            assert refusal(bind, "192.0.2.1", port) == (
                f"cannot listen on 192.0.2.1:{port}: 192.0.2.1 is not an address of this host")


def test_an_unknown_name_is_one_line() -> None:
    """A host name that does not resolve says so, with the name."""
    with pytest.raises(BindError, match=r"^cannot listen on no\.such\.host\.invalid:80: "
                                        r"cannot resolve 'no\.such\.host\.invalid': "):
        proxy.bind("no.such.host.invalid", 80)
