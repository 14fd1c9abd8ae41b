"""A stand-in supervisor for launcher tests (run via CORRAL_SUP_BINARY).

Behaviour comes from files in the directory named by $FAKE_SUP_DIR:
``starts`` (appended to on every start), ``exit_codes`` (one code per start; the last
repeats), ``spawn`` (argv JSON to spawn on the first start), ``hup`` (written on SIGHUP),
``versions`` (the protocol version its Hello says, one per start; the last repeats;
default the integer 1 of version 1.0 peers; ``silent`` says no Hello and waits).  A refused
Hello is written to ``refused<start>`` and the start exits with its code.
"""

import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

from corral.protocol import framing

here = Path(os.environ["FAKE_SUP_DIR"])
with (here / "starts").open("a") as f:
    f.write(f"{os.getpid()}\n")
starts = len((here / "starts").read_text().split())
codes = (here / "exit_codes").read_text().split()
code = int(codes[min(starts, len(codes)) - 1])
signal.signal(signal.SIGHUP, lambda *_: (here / "hup").write_text("got HUP\n"))
sock = socket.socket(fileno=int(os.environ["CORRAL_LAUNCHER_FD"]))
decoder = framing.Decoder()
backlog = []


def call(message):
    sock.sendall(framing.encode(message))
    while True:
        for reply in decoder.feed(sock.recv(65536)):
            if reply.get("id") == message.get("id"):
                return reply
            backlog.append(reply)


versions_file = here / "versions"
version: object = 1
if versions_file.exists():
    versions = versions_file.read_text().split()
    version = versions[min(starts, len(versions)) - 1]
if version == "silent":
    while True:
        time.sleep(60)
hello = call({"type": "Hello", "id": 1, "version": version})
if hello.get("type") == "Error":
    (here / f"refused{starts}").write_text(json.dumps(hello))
    sys.exit(code)
(here / f"greeted{starts}").write_text("yes")
spawn = here / "spawn"
if starts == 1 and spawn.exists():
    reply = call({"type": "Spawn", "id": 2, "name": "svc/0", "argv": json.loads(spawn.read_text()),
                  "env": dict(os.environ), "cwd": None,
                  "log": {"path": str(here / "svc.log")}})
    (here / "spawned").write_text(json.dumps(reply))
if code < 0:  # wait for Shutdown, then exit 84
    while True:
        pending, backlog = backlog or decoder.feed(sock.recv(65536)), []
        for message in pending:
            if message.get("type") == "Shutdown":
                (here / "shutdown").write_text("yes")
                sys.exit(84)
(here / "ready").write_text(str(starts))
wait = here / "wait"
while wait.exists() and starts == 1:
    time.sleep(0.01)
sys.exit(code)
