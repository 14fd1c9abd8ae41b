"""Renders :class:`Results` as ``docs/benchmarks.md``: goals, tables with ratios, configs."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.results import Results, Table

HERE = Path(__file__).resolve().parent
Row = dict[str, Any]


def fmt(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return f"{v:g}" if abs(v) >= 0.01 or v == 0 else f"{v:.3g}"
    return "-" if v is None else str(v)


def md_table(columns: Sequence[str], rows: Sequence[Row]) -> str:
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(out)


def ratio(a: Any, b: Any) -> str:
    if not isinstance(a, int | float) or not isinstance(b, int | float) or not b:
        return "-"
    if math.isnan(a) or math.isnan(b):
        return "-"
    return f"{a / b:.2f}x"


def _is_corral(r: Row) -> bool:
    return str(r.get("peer", "")).startswith("corral")


def _with_ratios(t: Table, metrics: list[tuple[str, str]],
                 key: Callable[[Row], Any] = lambda r: None,
                 ref: Callable[[Row], bool] = lambda r: r.get("peer") == "corral") -> str:
    """The table plus ``corral/this <metric>`` columns (compared within the same key)."""
    cols = list(t.columns)
    if "idle window s" in {k for r in t.rows for k in r}:
        cols.append("idle window s")
    rows: list[Row] = []
    for r in t.rows:
        base = next((x for x in t.rows if ref(x) and key(x) == key(r)), None)
        row = dict(r)
        for metric, title in metrics:
            row[title] = ratio(base.get(metric), r.get(metric)) if base else "-"
        rows.append(row)
    return md_table(cols + [title for _, title in metrics], rows)


def _rows(res: Results, key: str) -> list[Row]:
    t = res.tables.get(key)
    return t.rows if t else []


def _find(rows: list[Row], **match: Any) -> Row | None:
    return next((r for r in rows if all(r.get(k) == v for k, v in match.items())), None)


def goals(res: Results) -> list[Row]:
    """Issue 2/4 goals, each with corral's figure and whether it is met."""
    out: list[Row] = []

    def add(goal: str, target: str, value: Any, met: bool | None, note: str = "") -> None:
        verdict = "n/a" if met is None else ("yes" if met else "**no**")
        out.append({"goal": goal, "target": target, "corral": fmt(value), "met": verdict,
                    "compared with": note})

    rs = _rows(res, "restart")
    c = _find(rs, peer="corral")
    peers = [r for r in rs if not _is_corral(r)]
    best = min(peers, key=lambda r: r["p50 ms"], default=None)
    if c:
        beat = best is None or c["p50 ms"] < best["p50 ms"]
        add("restart p50", "≤ 1.5 ms and below every peer", c["p50 ms"],
            c["p50 ms"] <= 1.5 and beat,
            f"best peer {best['peer']} {best['p50 ms']} ms" if best else "")
        add("restart p99", "≤ 10 ms", c["p99 ms"], c["p99 ms"] <= 10)
    sc = _rows(res, "scale")
    for n in sorted({r["N"] for r in sc}):
        c = _find(sc, peer="corral", N=n)
        if not c:
            continue
        others = [r for r in sc if r["N"] == n and not _is_corral(r)]
        fastest = min(others, key=lambda r: r["all running s"], default=None)
        if n == 1000:
            add("all 1,000 running", "faster than every peer", c["all running s"],
                fastest is None or c["all running s"] < fastest["all running s"],
                f"fastest peer {fastest['peer']} {fastest['all running s']} s" if fastest else "")
            sup = _find(sc, peer="supervisord", N=n)
            add("PSS at 1,000 (MB)", "≤ supervisord's", c["PSS MB"],
                None if sup is None else c["PSS MB"] <= sup["PSS MB"],
                f"supervisord {sup['PSS MB']} MB" if sup else "")
            add("idle CPU at 1,000", "≤ 0.5 % of a core", c["idle CPU %"],
                c["idle CPU %"] <= 0.5)
        limit = {100: 50, 1000: 100}.get(n)
        if limit:
            add(f"`svc status` at {n:,}", f"≤ {limit} ms", c["status median ms"],
                c["status median ms"] <= limit)
    lg = _rows(res, "logs")
    sup = _find(lg, peer="supervisord")
    for fmt_, target in (("stamped", 500.0), ("raw", None)):
        c = _find(lg, format=fmt_, peer="corral" if fmt_ == "stamped" else "corral(raw)")
        if not c:
            continue
        if target is None:
            met = None if sup is None else c["MB/s"] >= sup["MB/s"]
            add("log throughput raw", "≥ supervisord's", c["MB/s"], met,
                f"supervisord {sup['MB/s']} MB/s" if sup else "")
        else:
            add("log throughput stamped", f"≥ {target:g} MB/s", c["MB/s"], c["MB/s"] >= target)
        add(f"log loss ({fmt_})", "0 lost, byte-exact", c["lost"], c["identical"] and not c["lost"])
    st = _find(_rows(res, "storm"), peer="corral")
    if st:
        add("crash storm `status` p99", "≤ 200 ms", st["status p99 ms"],
            st["status p99 ms"] <= 200 and not st["status failures"])
    sr = _find(_rows(res, "suprestart"), peer="corral")
    if sr:
        add("supervisor kill -9: recovery", "≤ 1 s (max)", f"{sr['recovery max ms']} ms",
            sr["recovery max ms"] <= 1000)
        add("supervisor kill -9: service restarts", "0", sr["service restarts"],
            sr["service restarts"] == 0 and sr["new writer execs"] == 0)
        add("supervisor kill -9: lost lines", "0", sr["lines lost"],
            sr["lines lost"] == 0 and sr["log identical"])
    return out


def render(res: Results) -> str:
    o = res.options
    mode = "--quick" if o.get("quick") else "full"
    parts = [
        "# Benchmarks: corral and its peers",
        "",
        f"Generated by `python -m bench all{' --quick' if o.get('quick') else ''}` "
        f"(mode: {mode}; workloads: {', '.join(o.get('only', []))}; "
        f"total {o.get('total seconds', '?')} s). Every number below comes from this one run "
        "on this machine; re-run it to refresh the page. Ratios are **corral / peer**: for times, "
        "CPU and memory below 1x means corral is better; for MB/s above 1x does.",
        "",
        "## Goals (issues 2 and 4)",
        "",
        md_table(["goal", "target", "corral", "met", "compared with"], goals(res)),
        "",
        "## Machine",
        "",
        md_table(["what", "value"], [{"what": k, "value": v} for k, v in res.machine.items()]),
        "",
        "Versions: " + "; ".join(f"{v}" for v in res.versions.values()) + ".",
        "",
    ]
    if res.not_measured:
        parts += ["## Not measured", "",
                  md_table(["workload", "peer", "reason"],
                           [{"workload": w, "peer": p, "reason": f"not measured: {r}"}
                            for w, p, r in res.not_measured]), ""]
    t = res.tables.get("restart")
    if t:
        parts += [f"## {t.title}", "", _with_ratios(t, [("p50 ms", "corral/this p50"),
                                                       ("p99 ms", "corral/this p99")]), ""]
    t = res.tables.get("scale")
    if t:
        parts += [f"## {t.title}", "", _with_ratios(
            t, [("all running s", "corral/this start"), ("PSS MB", "corral/this PSS"),
                ("status median ms", "corral/this status")], key=lambda r: r["N"]), ""]
    t = res.tables.get("logs")
    if t:
        parts += [f"## {t.title}", "", _with_ratios(
            t, [("MB/s", "corral stamped/this")]), "",
            "corral(raw) / each: " + _raw_ratios(t), ""]
    t = res.tables.get("storm")
    if t:
        parts += [f"## {t.title}", "", _with_ratios(
            t, [("status p99 ms", "corral/this status p99"),
                ("supervisor CPU %", "corral/this CPU")]), ""]
    t = res.tables.get("suprestart")
    if t:
        parts += [f"## {t.title}", "", md_table(t.columns, t.rows), ""]
    parts += [_static("method.md"), _static("analysis.md"), "## Commands", ""]
    for label, cmds in res.commands.items():
        parts += [f"- **{label}**: " + "; ".join(f"`{c}`" for c in cmds)]
    parts += ["", "## Exact configs", "",
              "Rendered for two `sleep` services and for the log writer; the scratch paths are "
              "those of this run (`/tmp/corral-bench/runs/...`).", ""]
    for label, files in res.configs.items():
        parts += [f"### {label}", ""]
        for name, text in files.items():
            parts += [f"`{name}`:", "", "```", text.rstrip(), "```", ""]
    return "\n".join(parts).rstrip() + "\n"


def _raw_ratios(t: Table) -> str:
    raw = next((r for r in t.rows if r.get("peer") == "corral(raw)"), None)
    if raw is None:
        return "-"
    return ", ".join(f"{r['peer']} {ratio(raw['MB/s'], r['MB/s'])}" for r in t.rows
                     if r is not raw)


def _static(name: str) -> str:
    path = HERE / name
    return path.read_text().rstrip() + "\n" if path.exists() else ""


def write(res: Results, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    text = render(res)
    # Keep the sections other commands write between <!-- NAME:begin/end --> markers
    # (`python -m bench balancer`, `target`, `api`), in the order they were in.
    old = out.read_text() if out.exists() else ""
    for name in re.findall(r"<!-- ([a-z0-9_-]+):begin -->", old):
        begin, close = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
        if close in old:
            start = old.index(begin)
            text = text.rstrip("\n") + "\n\n" + old[start:old.index(close) + len(close)] + "\n"
    out.write_text(text)
