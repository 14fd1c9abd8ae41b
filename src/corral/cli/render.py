"""Turning API objects into lines a person reads: tables, durations, colours, event lines.

Contract: pure functions of their arguments (the current time is passed in as ``now``, epoch
seconds); colour escapes appear only when the caller passes ``colour=True`` (the CLI does so
only when stdout is a terminal and ``NO_COLOR`` is unset).  Missing fields render as ``-``, so
an older or newer server never breaks a table.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing slows every command's start
if TYPE_CHECKING:
    from collections.abc import Sequence

    from corral.cli.http import Json


#: SGR codes per state: up green, starting/stopping yellow, backoff/unhealthy magenta,
#: failed red, down dim.
STATE_COLOURS = {"up": "32", "starting": "33", "stopping": "33", "backoff": "35",
                 "unhealthy": "35", "failed": "31", "down": "2"}
RUNNING = frozenset({"starting", "up", "unhealthy", "stopping"})
#: A cell is its text, or its text and an SGR code to paint it with.
Cell = str | tuple[str, str]


def paint(text: str, sgr: str | None, colour: bool) -> str:
    """Wrap ``text`` in an SGR escape when ``colour`` is on and ``sgr`` is given."""
    return f"\033[{sgr}m{text}\033[0m" if colour and sgr else text


def state_cell(state: Json) -> Cell:
    """A state name with its colour."""
    text = str(state or "-")
    code = STATE_COLOURS.get(text)
    return (text, code) if code else text


def duration(seconds: float | None) -> str:
    """Human duration: ``0.4s``, ``12s``, ``3m12s``, ``2h05m``, ``3d04h``; ``-`` for None."""
    if seconds is None:
        return "-"
    if seconds < 0:
        seconds = 0.0
    if seconds < 1:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def table(header: Sequence[str], rows: Sequence[Sequence[Cell]], colour: bool) -> list[str]:
    """Left-aligned columns two spaces apart; widths ignore colour escapes; no trailing blanks."""
    plain = [[c if isinstance(c, str) else c[0] for c in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in plain if i < len(row)) for i in range(len(header))]
    if not colour:  # the common case (a pipe, a script, NO_COLOR): 11,000 cells at 1,000
        # A row may be shorter than the header: zip stops at its last cell.
        return ["  ".join([c.ljust(w) for c, w in zip(row, widths, strict=False)]).rstrip()
                for row in plain]
    lines = []
    for row in [list(header), *rows]:
        cells = []
        for i, cell in enumerate(row):
            text, sgr = (cell, None) if isinstance(cell, str) else cell
            pad = "" if i == len(row) - 1 else " " * (widths[i] - len(text))
            cells.append(paint(text, sgr, colour) + pad)
        lines.append("  ".join(cells).rstrip())
    return lines


def exit_text(last_exit: Json) -> str:
    """``exited with code 1`` / ``killed by SIGKILL`` / ``stopped (graceful)``; ``""`` if none."""
    if not isinstance(last_exit, dict):
        return ""
    sig = last_exit.get("signal")
    if sig is not None:
        text = f"killed by {_signal_name(sig)}"
    elif last_exit.get("exit_code") is not None:
        text = f"exited with code {last_exit['exit_code']}"
    else:
        text = "exited"
    stop = last_exit.get("stop")
    return f"{text} ({stop} stop)" if stop else text


def note(obj: Json, now: float) -> str:
    """The NOTE column, one current reason: next restart and why, else the reason, else the
    last exit.  The reason's own "restarting in 1.2s" (fixed when it was decided) gives
    way to the countdown."""
    reason = str(obj.get("reason") or "")
    last = exit_text(obj.get("last_exit"))
    when = obj.get("next_restart_at")
    if when:
        left = _epoch(str(when))
        prefix = f"restart in {duration(left - now)}" if left is not None else f"restart at {when}"
        head, sep, tail = reason.rpartition("; ")
        if sep and tail.startswith(("restarting in ", "retrying in ")):
            reason = head
        why = reason or last
        return f"{prefix}: {why}" if why else prefix
    if obj.get("state") in RUNNING:
        return reason
    return reason or last


def service_rows(svc: Json, now: float) -> list[list[Cell]]:
    """One table row for a service, plus indented rows per instance when it has several."""
    instances = svc.get("instance_list") or []
    count = svc.get("instances")
    if instances:
        ready = sum(1 for i in instances if i.get("state") == "up")
        inst = f"{ready}/{count if count is not None else len(instances)}"
    else:
        inst = _text(count)
    rows: list[list[Cell]] = [[
        _text(svc.get("name")), state_cell(svc.get("state")), _text(svc.get("desired")),
        _text(svc.get("pid")), inst, _text(svc.get("restarts")), _text(svc.get("health")),
        _cpu(svc), _rss(svc), _uptime(svc), note(svc, now)]]
    if len(instances) > 1:
        for i in instances:
            rows.append([
                f"  [{_text(i.get('index'))}]", state_cell(i.get("state")), "",
                _text(i.get("pid")), "", _text(i.get("restarts")), _text(i.get("health")),
                _cpu(i), _rss(i), _uptime(i), note(i, now)])
    return rows


STATUS_HEADER = ("NAME", "STATE", "DESIRED", "PID", "INST", "RESTARTS", "HEALTH", "CPU", "MEM",
                 "UPTIME", "NOTE")


def service_table(services: Sequence[Json], now: float, colour: bool) -> list[str]:
    """The ``svc status`` table (header included) for a list of service status objects."""
    rows = [row for svc in services for row in service_rows(svc, now)]
    return table(STATUS_HEADER, rows, colour)


def supervisor_lines(status: Json) -> list[str]:
    """The ``sup status`` block: aligned ``label  value`` lines."""
    counts = status.get("services") or {}
    up, total = counts.get("up", 0), counts.get("total", 0)
    others = ", ".join(f"{n} {k}" for k, n in counts.items() if k not in ("up", "total") and n)
    services = f"{up} up / {total} total" + (f" ({others})" if others else "")
    pairs = [("launcher pid", _text(status.get("launcher_pid"))),
             ("supervisor pid", _text(status.get("supervisor_pid"))),
             ("state dir", _text(status.get("state_dir"))),
             ("version", _versions(status)),
             ("uptime", duration(status.get("uptime_s"))),
             ("services", services)]
    balancer = status.get("balancer") or {}
    if balancer.get("pid") or balancer.get("services"):
        count = len(balancer.get("services") or [])
        pairs.append(("balancer", f"pid {_text(balancer.get('pid'))}, {count} service"
                      + ("" if count == 1 else "s")))
    cluster = status.get("cluster")
    if isinstance(cluster, dict):
        pairs += cluster_pairs(cluster)
    width = max(len(label) for label, _ in pairs)
    lines = [f"{label.ljust(width)}  {value}" for label, value in pairs]
    return lines + balancer_lines(balancer)


def cluster_pairs(link: Json) -> list[tuple[str, str]]:
    """The link to the service groups: local, or etcd's endpoints, connection, lease."""
    member = f"{_text(link.get('member'))} ({_text(link.get('host'))}, " \
             f"advertised {_text(link.get('address'))})"
    if link.get("backend") != "etcd":
        return [("cluster", "local (this host only; sup run --cluster joins etcd)"),
                ("member", member)]
    state = f"connected to {link.get('endpoint')}" if link.get("connected") else "DOWN"
    pairs = [("cluster", f"etcd {', '.join(link.get('endpoints') or [])}: {state}"),
             ("member", member),
             ("lease", f"{link.get('lease_id') or 'none'} (ttl {_text(link.get('ttl'))}s)")]
    if link.get("last_error"):
        pairs.append(("last error", str(link["last_error"])))
    return pairs


def _versions(status: Json) -> str:
    """``0.2.0`` when every part runs the same release, else each part's
    (``launcher 0.1.0, supervisor 0.2.0, balancer 0.2.0``); ``?`` for a part that cannot
    say (an older launcher or balancer)."""
    parts = status.get("versions")
    if not isinstance(parts, dict):
        return _text(status.get("version"))
    known = {k: parts.get(k) for k in ("launcher", "supervisor", "balancer")}
    if known["balancer"] is None and not (status.get("balancer") or {}).get("pid"):
        del known["balancer"]  # no balancer running
    if len(set(known.values())) == 1:
        return _text(known["supervisor"])
    return ", ".join(f"{k} {v or '?'}" for k, v in known.items())


def balancer_lines(balancer: Json) -> list[str]:
    """Per balanced service: address, connections open/total, bytes, errors; then one
    line per backend."""
    lines = []
    for svc in balancer.get("services") or []:
        errors = sum((svc.get("errors") or {}).values())
        where = svc.get("on", "-") + ("" if svc.get("listening", True) else
                                      f" (not listening: {svc.get('bind_error')})")
        lines.append(f"  {svc.get('name')}  {where}  open {svc.get('active', 0)}  "
                     f"total {svc.get('total', 0)}  in {_bytes(svc.get('bytes_in'))}  "
                     f"out {_bytes(svc.get('bytes_out'))}  errors {errors}")
        for b in svc.get("backends") or []:
            lines.append(f"    {b.get('id')}  {b.get('address')}  {b.get('state')}  "
                         f"open {b.get('active', 0)}  total {b.get('total', 0)}")
    return lines


def _bytes(n: Json) -> str:
    value = float(n or 0)
    for unit in ("B", "K", "M", "G"):
        if value < 1024 or unit == "G":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return "-"


def event_line(event: Json, colour: bool) -> str:
    """``2026-11-21 23:59:01.123 web[0] exit up->backoff exited with code 1`` (times in UTC)."""
    at = str(event.get("at") or "-")
    at = at.replace("T", " ").removesuffix("Z")[:23]
    who = _text(event.get("service"))
    if event.get("instance") is not None:
        who += f"[{event['instance']}]"
    parts = [at, who, _text(event.get("kind"))]
    src, dst = event.get("from"), event.get("to")
    if src or dst:
        parts.append(f"{src or '-'}->" + paint(str(dst or "-"), STATE_COLOURS.get(str(dst)), colour))
    if event.get("reason"):
        parts.append(str(event["reason"]))
    lines = event.get("last_lines")
    tail = "".join(f"\n    | {line}" for line in lines[-5:]) if isinstance(lines, list) else ""
    return " ".join(parts) + tail


def _cpu(obj: Json) -> str:
    cpu = obj.get("cpu")
    return f"{cpu:.0f}%" if isinstance(cpu, (int, float)) else "-"


def _rss(obj: Json) -> str:
    """Resident memory in binary units, e.g. ``12.3M``."""
    rss = obj.get("rss")
    if not isinstance(rss, int):
        return "-"
    size = float(rss)
    for unit in ("B", "K", "M", "G"):
        if size < 1024 or unit == "G":
            return f"{size:.0f}{unit}" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1024
    return "-"


def _text(value: Json) -> str:
    return "-" if value is None or value == "" else str(value)


def _uptime(obj: Json) -> str:
    return duration(obj.get("uptime_s")) if obj.get("state") in RUNNING else "-"


def _epoch(stamp: str) -> float | None:
    """Epoch seconds of an RFC 3339 time, or None when it cannot be read."""
    from datetime import datetime

    try:
        return datetime.fromisoformat(stamp).timestamp()
    except ValueError:
        return None


def _signal_name(sig: Json) -> str:
    if isinstance(sig, str):
        return sig if sig.startswith("SIG") else f"SIG{sig}"
    import signal

    try:
        return signal.Signals(int(sig)).name
    except (ValueError, TypeError):
        return f"signal {sig}"
