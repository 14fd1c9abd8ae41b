"""``python -m corral.balancer --control PATH``: the load balancer process.

It listens on the control socket, serves whatever it is configured with, and keeps
serving when its controller goes away (the supervisor restarts without dropping a
connection).  SIGTERM or SIGINT: stop accepting, give open connections :data:`GRACE`
seconds, exit 0.  Runs on uvloop when it is installed.

With ``--take-over`` it first takes the listening sockets and configuration of the
balancer serving ``--control`` (see :mod:`.control`), which then finishes its open
connections and exits: how ``sup upgrade`` replaces it without refusing a connection.

Example::

    python -m corral.balancer --control /var/lib/corral/default/run/balancer.sock
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from .control import ControlServer, TakeOverError
from .control import take_over as control_take_over
from .proxy import Proxy

#: Seconds open connections get to finish on SIGTERM.
GRACE = 2.0
#: Exit codes: stopped by a signal; the control socket could not be served.
EXIT_STOPPED = 0
EXIT_NO_CONTROL = 1
#: ``--take-over``: the running balancer would not hand over (it keeps serving).
EXIT_NO_TAKE_OVER = 3


async def serve(control: Path, take_over: bool = False) -> None:
    proxy = Proxy()
    if take_over:
        # Before the control socket: the running balancer frees its path as it hands over.
        taken = control_take_over(control)
        if taken is not None:
            proxy.adopt(*taken)
            print(f"corral-balancer: took over {len(taken[1])} listening socket"
                  f"{'s' if len(taken[1]) != 1 else ''} from the running balancer",
                  flush=True)
    stop = asyncio.Event()
    handed_over = asyncio.Event()

    def on_handed_over() -> None:
        handed_over.set()
        stop.set()
    server = ControlServer(proxy, control, on_handed_over)
    await server.start()
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
    # Handed over: the open connections may take as long as a drain would give them.
    grace = max([GRACE, *(s.config.drain_timeout for s in proxy.services.values())]) \
        if handed_over.is_set() else GRACE
    proxy.shutdown(grace)
    deadline = loop.time() + grace
    while proxy.busy and loop.time() < deadline:
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
    parser.add_argument("--take-over", action="store_true",
                        help="first take the listening sockets and configuration of the "
                             "balancer serving --control (it finishes its connections and "
                             "exits): a replacement that refuses no connection")
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:
        run = asyncio.run
    else:
        run = uvloop.run
    try:
        run(serve(args.control, args.take_over))
    except TakeOverError as exc:
        print(f"corral-balancer: cannot take over: {exc}", file=sys.stderr)
        return EXIT_NO_TAKE_OVER
    except OSError as exc:  # the control socket cannot be created: say where and why
        print(f"corral-balancer: cannot serve the control socket {args.control}: "
              f"{exc.strerror or exc}", file=sys.stderr)
        return EXIT_NO_CONTROL
    return EXIT_STOPPED


if __name__ == "__main__":
    sys.exit(main())
