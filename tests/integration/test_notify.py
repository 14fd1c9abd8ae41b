"""The notify socket (corral.supervisor.notify): messages come with their sender's pid,
BARRIER=1 is answered, and a sender's lineage says which instance it belongs to."""

from __future__ import annotations

import array
import asyncio
import os
import signal
import socket
import subprocess
import sys
import uuid

from corral.supervisor import notify


def test_parse() -> None:
    assert notify.parse(b"READY=1\nSTATUS=a=b\nnoise\n") == {"READY": "1", "STATUS": "a=b"}


def test_a_process_and_its_children_belong_to_it_others_do_not() -> None:
    """A child (same session) and a grandchild that left the session (setsid) belong to
    the main process; the test runner does not."""
    code = ("import subprocess, sys, time\n"
            "p = subprocess.Popen([sys.executable, '-c', 'import os, time; os.setsid(); "
            "print(os.getpid(), flush=True); time.sleep(60)'], stdout=subprocess.PIPE)\n"
            "print(p.stdout.readline().decode().strip(), flush=True)\n"
            "time.sleep(60)\n")
    with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                          start_new_session=True) as main:
        assert main.stdout is not None
        grandchild = int(main.stdout.readline())
        try:
            assert notify.from_tree(main.pid, main.pid)
            assert notify.from_tree(grandchild, main.pid)
            assert main.pid in notify.lineage(grandchild)
            assert not notify.from_tree(os.getpid(), main.pid)
        finally:
            os.kill(grandchild, signal.SIGKILL)
            main.kill()
    assert not notify.from_tree(main.pid + 10_000_000, main.pid)
    assert notify.lineage(main.pid) == frozenset()


def test_messages_carry_the_sender_pid_and_barriers_are_answered() -> None:
    """A datagram arrives with its sender's pid (from the kernel); the fd sent with
    BARRIER=1 is closed, so a sender waiting on it (systemd-notify) goes on."""
    name = f"@corral-test/{uuid.uuid4().hex}"

    async def main() -> list[tuple[dict[str, str], int]]:
        got: list[tuple[dict[str, str], int]] = []
        done = asyncio.Event()

        def on_message(fields: dict[str, str], pid: int) -> None:
            got.append((fields, pid))
            if "BARRIER" in fields:
                done.set()
        sock = notify.NotifySocket(name, on_message)
        try:
            read_end, write_end = os.pipe()
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                address = "\0" + name[1:]
                s.sendto(b"READY=1", address)
                s.sendmsg([b"BARRIER=1"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                            array.array("i", [write_end]))], 0, address)
            os.close(write_end)
            await asyncio.wait_for(done.wait(), 10)
            # Every write end is closed once the supervisor closed its copy: EOF.
            assert await asyncio.wait_for(asyncio.to_thread(os.read, read_end, 1), 10) == b""
            os.close(read_end)
        finally:
            sock.close()
        return got

    got = asyncio.run(main())
    assert got == [({"READY": "1"}, os.getpid()), ({"BARRIER": "1"}, os.getpid())]
