"""systemd's notify protocol, spoken by the launcher for the whole of corral.  STDLIB ONLY.

Who sends: the launcher.  ``corral sup run`` execs it, so it is the unit's main process,
and with systemd's default ``NotifyAccess=main`` only that process may notify.  It is also
the one process that lives from the first instant to the last, through supervisor crashes
and upgrades, which is what ``WATCHDOG=1`` must prove.  The supervisor knows when services
are up; it says so over the launcher protocol (``Notify{ready, status}``) and the launcher
passes it on.

:meth:`Notifier.from_environ` takes ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and
``WATCHDOG_PID`` *out* of the environment (as ``sd_notify(unset_environment=1)`` does), so
neither the supervisor nor any service inherits the unit's socket: a service that speaks
the protocol gets its own per-instance socket from the supervisor, or none.

Error handling: a socket that cannot be reached (missing, refused, not a socket) is one
line on stderr, once until a send works again; corral carries on without it, as
``sd_notify`` callers do.  A full socket buffer drops the message (systemd reads fast; a
status line is replaced by the next one anyway).
"""

from __future__ import annotations

import errno
import os
import socket
import sys
from collections.abc import MutableMapping

ENV_SOCKET = "NOTIFY_SOCKET"
ENV_WATCHDOG_USEC = "WATCHDOG_USEC"
ENV_WATCHDOG_PID = "WATCHDOG_PID"

#: Longest ``STATUS=`` line sent (systemd shows one line; a longer one is cut here).
MAX_STATUS = 200


class Notifier:
    """Sends ``KEY=VALUE`` lines to the service manager's notify socket.

    Args:
        address: ``NOTIFY_SOCKET``'s value: a path, or ``@name`` for the abstract namespace.
        watchdog: seconds between the manager's watchdog deadlines (``WATCHDOG_USEC``), or
            None when no watchdog is asked for.  Ping at half of it.
    """

    def __init__(self, address: str, watchdog: float | None) -> None:
        self.address = address
        self.watchdog = watchdog
        self.ready_sent = False
        self._failing = False
        self._target = "\0" + address[1:] if address.startswith("@") else address
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._sock.setblocking(False)

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str] | None = None) -> Notifier | None:
        """The notifier ``NOTIFY_SOCKET`` asks for (None without one); the three variables
        are removed from ``environ`` (default ``os.environ``) either way."""
        env = os.environ if environ is None else environ
        address = env.pop(ENV_SOCKET, "")
        usec = env.pop(ENV_WATCHDOG_USEC, "")
        pid = env.pop(ENV_WATCHDOG_PID, "")
        if not address:
            return None
        watchdog = None
        # WATCHDOG_PID names the process the watchdog is for; another one's is not ours.
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            watchdog = int(usec) / 1_000_000
        return cls(address, watchdog)

    def send(self, **fields: str) -> bool:
        """Send one datagram (``send(READY="1", STATUS="...")``); True if it went out."""
        if "STATUS" in fields:
            fields["STATUS"] = one_line(fields["STATUS"])
        data = "".join(f"{key}={value}\n" for key, value in fields.items()).encode()
        try:
            self._sock.sendto(data, self._target)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            if not self._failing:
                why = os.strerror(exc.errno) if exc.errno else str(exc)
                if exc.errno == errno.ECONNREFUSED:
                    why = "nothing listens there"
                print(f"corral-launcher: cannot notify the service manager at "
                      f"{ENV_SOCKET}={self.address} ({why}); carrying on without it",
                      file=sys.stderr)
                self._failing = True
            return False
        self._failing = False
        if fields.get("READY") == "1":
            self.ready_sent = True
        return True

    def close(self) -> None:
        self._sock.close()


def one_line(text: str) -> str:
    """``text`` as one line of at most :data:`MAX_STATUS` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= MAX_STATUS else flat[:MAX_STATUS - 1] + "…"
