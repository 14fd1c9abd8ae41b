"""Log workload writer: run as a service under each supervisor (stdlib only).

``python writer.py DATA_FILE READY_FILE`` reads the pre-built stream of numbered 100-byte
lines (made once per run by :func:`build`) into memory, writes its pid to READY_FILE,
waits for SIGUSR1 (the go signal), writes everything to stdout in 64 KiB writes, then
stays alive so that nobody restarts it (each further SIGUSR1 writes the stream again).

The checker uses :func:`lines` / :func:`build` to know the expected stream.
"""

from __future__ import annotations

import os
import signal
import sys

LINE_BYTES = 100
WRITE_SIZE = 64 * 1024
_FILL2 = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789" * 2


def lines(start: int, count: int) -> bytes:
    """Lines ``start .. start+count-1``: ``%010d`` + a filler that shifts with the number."""
    out = []
    for i in range(start, start + count):
        k = i % 37
        out.append(b"%010d %s\n" % (i, _FILL2[k : k + 88]))
    return b"".join(out)


def build(total: int, block: int = 100_000) -> bytearray:
    buf = bytearray()
    for start in range(0, total, block):
        buf += lines(start, min(block, total - start))
    return buf


def main() -> None:
    source, ready = sys.argv[1], sys.argv[2]
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    with open(source, "rb") as f:
        data = memoryview(f.read())
    tmp = ready + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(os.getpid()))
    os.replace(tmp, ready)
    while True:  # every go signal writes the whole stream once more
        signal.sigwait({signal.SIGUSR1})
        off, end = 0, len(data)
        while off < end:
            off += os.write(1, data[off : off + WRITE_SIZE])


if __name__ == "__main__":
    main()
