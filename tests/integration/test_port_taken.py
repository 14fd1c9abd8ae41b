"""Whether a port is taken on this host (corral.balancer.ports.port_taken), on real
loopback sockets."""

from __future__ import annotations

import socket

from corral.balancer.ports import port_taken


def test_port_taken_sees_a_listener_but_not_time_wait() -> None:
    """A listening socket makes a port taken; a closed one does not."""
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert port_taken(port)
        with socket.create_connection(("127.0.0.1", port)) as client:
            conn, _ = server.accept()
            conn.close()  # the server side closes first: its port keeps a TIME_WAIT
            client.recv(1)
    assert not port_taken(port)
