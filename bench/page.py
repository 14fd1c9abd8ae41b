"""A workload's own section of ``docs/benchmarks.md``, and the results file behind it.

The commands that measure one thing on demand (``python -m bench api``, ``balancer``,
``busy``, ``cluster``, ``target``) each own a section between two HTML comments: a run
replaces that section and nothing else of the page, and keeps its raw results as
``bench/results/<name>-<stamp>.json``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def write_section(section: str, out: Path, begin: str, end: str) -> None:
    """Replace the section between ``begin`` and ``end`` in ``out`` (append it if absent);
    nothing else of the page changes."""
    text = out.read_text() if out.exists() else ""
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        tail = rest.split(end, 1)[1].lstrip("\n")
        text = head + section + ("\n" + tail if tail else "")
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + section
    out.write_text(text)


def publish(name: str, res: Any, section: str, out: Path, begin: str, end: str) -> Path:
    """Save ``res`` as ``bench/results/<name>-<stamp>.json``, write ``section`` into
    ``out`` and say both; the saved file's path."""
    saved = ROOT / "bench" / "results" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(res, indent=1))
    write_section(section, out, begin, end)
    print(f"bench {name}: wrote {out} and {saved}")
    return saved
