"""The launcher's side of systemd's notify protocol (corral.launcher.sdnotify)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from corral.launcher.sdnotify import MAX_STATUS, Notifier, one_line


def test_the_variables_are_taken_out_of_the_environment() -> None:
    env = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getpid()),
           "PATH": "/bin"}
    notifier = Notifier.from_environ(env)
    assert notifier is not None and notifier.watchdog == 3.0 and notifier.address == "@x"
    assert env == {"PATH": "/bin"}
    notifier.close()


def test_a_watchdog_for_another_pid_is_not_ours_and_no_socket_is_no_notifier() -> None:
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1000",
                                      "WATCHDOG_PID": "1"})
    assert notifier is not None and notifier.watchdog is None
    notifier.close()
    env = {"WATCHDOG_USEC": "1000"}
    assert Notifier.from_environ(env) is None and env == {}


def test_send_reaches_a_path_socket_with_one_status_line(tmp_path: Path) -> None:
    path = tmp_path / "n.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(path))
        notifier = Notifier(str(path), None)
        assert notifier.send(READY="1", STATUS="two\nlines")
        assert listener.recv(1024) == b"READY=1\nSTATUS=two lines\n"
        assert notifier.ready_sent
        notifier.close()


def test_status_lines_are_bounded() -> None:
    assert len(one_line("x " * 500)) == MAX_STATUS
