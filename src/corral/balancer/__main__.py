"""``python -m corral.balancer --control PATH``: the load balancer process.

It listens on the control socket, serves whatever it is configured with, and keeps
serving when its controller goes away (the supervisor restarts without dropping a
connection).  SIGTERM or SIGINT: stop accepting, give open connections :data:`GRACE`
seconds, exit 0.  Runs on uvloop when it is installed.

Example::

    python -m corral.balancer --control /var/lib/corral/default/run/balancer.sock
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from .control import ControlServer
from .proxy import Proxy

#: Seconds open connections get to finish on SIGTERM.
GRACE = 2.0
#: Exit codes: stopped by a signal; the control socket could not be served.
EXIT_STOPPED = 0
EXIT_NO_CONTROL = 1


async def serve(control: Path) -> None:
    proxy = Proxy()
    server = ControlServer(proxy, control)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # The supervisor (our controller) may die or restart; SIGHUP or SIGPIPE from that
    # must not take the data path with it.
    loop.add_signal_handler(signal.SIGHUP, lambda: None)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    print(f"corral-balancer: control on {control}", flush=True)
    await stop.wait()
    server.close()
    proxy.shutdown(GRACE)
    deadline = loop.time() + GRACE
    while proxy.active and loop.time() < deadline:
        await asyncio.sleep(0.05)  # bounded wait for connections to end, not a sync point
    print("corral-balancer: stopped", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m corral.balancer",
        description="corral's load balancer: configured over a control socket by the "
                    "supervisor; keeps serving when the supervisor restarts.",
        epilog="example: python -m corral.balancer --control /tmp/corral/run/balancer.sock")
    parser.add_argument("--control", required=True, type=Path,
                        help="path of the control socket to create (mode 0600)")
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:
        run = asyncio.run
    else:
        run = uvloop.run
    try:
        run(serve(args.control))
    except OSError as exc:  # the control socket cannot be created: say where and why
        print(f"corral-balancer: cannot serve the control socket {args.control}: "
              f"{exc.strerror or exc}", file=sys.stderr)
        return EXIT_NO_CONTROL
    return EXIT_STOPPED


if __name__ == "__main__":
    sys.exit(main())
