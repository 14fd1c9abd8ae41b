"""Who holds a port (corral.health.owner), which the rollout asks before it trusts a
health check on a fixed port: real sockets, a real child process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from corral.health import owner


def test_who_holds_a_port() -> None:
    """This process listens on a port: it holds it; a child that does not listen does
    not, and a check meant for the child can only reach this process."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"],
                                 close_fds=True)
        try:
            assert owner.holds(port, os.getpid()) is True
            assert owner.holds(port, child.pid) is False
            assert owner.reaches_other(port, child.pid, os.getpid())
            assert not owner.reaches_other(port, os.getpid(), child.pid)
        finally:
            child.kill()
            child.wait()
    assert owner.holds(port, os.getpid()) is False
