"""Live streams (server-sent events) against slow and vanished consumers.

A client that follows ``/v1/events`` or a service's logs and never reads, or that drops
its connection without a word, must not grow the supervisor's memory or leave anything
behind: the event subscriber is dropped once its bounded queue is full, the log follower
reads only as fast as its client takes lines, and a closed connection ends both.
"""

from __future__ import annotations

import json
import socket
import struct
from pathlib import Path

import psutil

from corral.supervisor.events import SUBSCRIBER_QUEUE

from .conftest import PY, Corral, python_cmd, wait_for
from .test_metrics import scrape

MiB = 1024 * 1024
# How much the supervisor's RSS may grow while a consumer stalls; buffering what the
# tests produce (thousands of events, 120 MiB of logs) would pass it many times.
RSS_SLACK = 40 * MiB


def supervisor(corral: Corral) -> psutil.Process:
    return psutil.Process(corral.sup_status()["supervisor_pid"])


def open_stream(corral: Corral, path: str) -> socket.socket:
    """Send ``GET path`` on the local socket and read the response head, no more."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # A small receive buffer, so what the kernel holds for us is small too.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(15)
    sock.connect(str(corral.state_dir / "api.sock"))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: corral\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        assert chunk, f"connection closed before the response head: {head!r}"
        head += chunk
    assert head.startswith(b"HTTP/1.1 200"), head
    return sock


def read_to_end(sock: socket.socket) -> bytes:
    """Everything the server sends until it ends the chunked response (or closes)."""
    data = bytearray()
    while not data.endswith(b"\r\n0\r\n\r\n"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return bytes(data)


def reset(sock: socket.socket) -> None:
    """Close abruptly: no FIN handshake, unread data discarded."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def events_total(corral: Corral) -> float:
    return scrape(corral)[("corral_events_total", ())]


def test_stalled_event_follower_is_dropped_not_buffered(corral: Corral) -> None:
    """1. a client follows /v1/events and never reads;
    2. scaling a service up and down produces several times the subscriber queue in events;
    3. the supervisor's RSS stays within a bound;
    4. when the client reads at last, it gets a bounded part and the stream has ended
       (it was dropped: a live subscriber would still be open)."""
    corral.ok("svc", "load", "many", "--", "sleep", "600")
    stalled = open_stream(corral, "/v1/events?follow=1&n=0")
    try:
        sup = supervisor(corral)
        base_rss = sup.memory_info().rss
        start = events_total(corral)
        while events_total(corral) - start < 6 * SUBSCRIBER_QUEUE:
            corral.ok("svc", "scale", "many", "100")  # ~600 events a round trip
            corral.ok("svc", "scale", "many", "0")
        produced = events_total(corral) - start
        grown = sup.memory_info().rss - base_rss
        assert grown < RSS_SLACK, f"supervisor RSS grew by {grown / MiB:.1f} MiB"

        received = read_to_end(stalled).count(b"data: ")
        # What the socket buffers held when the subscriber stalled, plus its full queue.
        assert received < produced / 2, (received, produced)
    finally:
        stalled.close()
    assert sup.is_running()


def test_stalled_log_follower_reads_only_as_fast_as_its_client(corral: Corral,
                                                                tmp_path: Path) -> None:
    """1. a client follows a service's logs and never reads;
    2. the service writes 120 MiB (rotated at 4 MiB);
    3. the supervisor's RSS stays within a bound far below that;
    4. the stalled client still gets lines when it reads."""
    script = tmp_path / "chatty.py"
    script.write_text("import sys, time\n"
                      "block = ('x' * 1000 + '\\n') * 1024\n"
                      "for _ in range(120):\n"
                      "    sys.stdout.write(block)\n"
                      "sys.stdout.write('DONE\\n'); sys.stdout.flush()\n"
                      "time.sleep(600)\n")
    spec = tmp_path / "chatty.yaml"
    spec.write_text(f"name: chatty\ncommand: [{PY}, {script}]\n"
                    "logs: {max_bytes: 4MiB, keep: 2}\ninstances: 0\n")
    corral.ok("svc", "load", "-f", str(spec))
    stalled = open_stream(corral, "/v1/services/chatty/logs?follow=1&n=0")
    try:
        sup = supervisor(corral)
        base_rss = sup.memory_info().rss
        corral.ok("svc", "scale", "chatty", "1")
        wait_for(lambda: any(line.endswith(" DONE") for line in corral.log_lines("chatty")),
                 120, "chatty to write everything")
        grown = sup.memory_info().rss - base_rss
        assert grown < RSS_SLACK, f"supervisor RSS grew by {grown / MiB:.1f} MiB"
        data = b""
        while data.count(b"data: ") < 2:
            chunk = stalled.recv(65536)
            assert chunk, "the log stream ended"
            data += chunk
        assert b'data: {"lines": ["' in data
    finally:
        stalled.close()


def test_raw_output_without_newlines_is_followed_in_bounded_records(corral: Corral,
                                                                     tmp_path: Path) -> None:
    """A raw-format service that never writes a newline (8 MiB) still reaches a follower,
    in records of at most 64 KiB: the follower does not hold the whole run waiting for
    the end of a line."""
    spec = tmp_path / "blob.yaml"
    spec.write_text(f"name: blob\ncommand: [{PY}, -c, 'import sys, time; "
                    "sys.stdout.write(\"x\" * 8388608); sys.stdout.flush(); time.sleep(600)']\n"
                    "logs: {format: raw}\ninstances: 0\n")
    corral.ok("svc", "load", "-f", str(spec))
    follower = open_stream(corral, "/v1/services/blob/logs?follow=1&n=0")
    try:
        corral.ok("svc", "scale", "blob", "1")
        records: list[str] = []
        data = b""
        while len(records) < 100:
            chunk = follower.recv(1 << 20)
            assert chunk, "the log stream ended"
            data += chunk
            # Whole events only; each is one chunk of the response, so no framing inside.
            *whole, data = data.split(b"\n\n")
            records += [line for event in whole if b"data: " in event
                        for line in json.loads(event.split(b"data: ", 1)[1])["lines"]]
        assert all(len(record) <= 64 * 1024 for record in records)
    finally:
        follower.close()


def test_vanished_followers_leave_nothing_behind(corral: Corral) -> None:
    """1. a service logs steadily; 2. forty clients follow its logs and the events and
    reset their connections; 3. the supervisor's open files return to what they were;
    4. a new follower still gets new events."""
    corral.ok("svc", "load", "ticker", "--", *python_cmd(
        "import time\nwhile True: print('tick', flush=True); time.sleep(0.01)"))
    corral.wait_state("ticker", "up")
    sup = supervisor(corral)
    base_fds = sup.num_fds()
    for _ in range(20):
        logs = open_stream(corral, "/v1/services/ticker/logs?follow=1&n=5")
        events = open_stream(corral, "/v1/events?follow=1&n=5")
        assert logs.recv(1) and events.recv(1)  # both streams are flowing
        reset(logs)
        reset(events)
    wait_for(lambda: sup.num_fds() <= base_fds, 30,
             f"the supervisor's open files back to {base_fds}")
    follower = open_stream(corral, "/v1/events?follow=1&n=0")
    try:
        corral.ok("svc", "restart", "ticker")
        data = b""
        while b'"kind": "spawn"' not in data:
            chunk = follower.recv(65536)
            assert chunk, "the event stream ended"
            data += chunk
    finally:
        follower.close()
    assert sup.is_running()
