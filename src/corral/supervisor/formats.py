"""The formats of the state directory's files, in one table.

Every JSON file the supervisor and its stores keep carries ``"format": N`` (an integer); a
file without one was written before formats were recorded and is format 1.  ``target.yaml``
is the user's own target format (``target get`` prints it, ``target set`` reads it), so it
carries no key: the format of ``desired.json`` covers it, since the two are the desired
state and are written together.  A release that changes what ``target.yaml`` may hold
bumps :data:`DESIRED`.

Adding the key changed nothing else, so a state directory this release wrote is still
read by the one before it (which ignores the key): a downgrade by one release works.

At start, before anything reads them, :func:`prepare` checks every file: one of a format
higher than this release reads is refused (:class:`TooNew`, one line naming the file, its
format and the highest this release reads), and nothing is changed.  Otherwise each older
file is brought to the current format (:data:`UPGRADES`, one step at a time) and written
back atomically with its version, so a directory is migrated as a whole or, after a kill,
file by file on the next start.

A new format: bump its number here, add the step from the previous one to
:data:`UPGRADES`, keep a fixture of the old format under ``tests/fixtures/state/``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from corral import __version__
from corral.errors import CorralError
from corral.store import resources, secrets

from . import statefile

DESIRED = 1
"""``desired.json`` (and ``target.yaml``): ``{format, down: [names], gen: {name: n}}``."""
ROLLOUT = 1
"""``rollout.json``: the last rollout's record (:meth:`Rollout.to_state`)."""
PORTS = 1
"""``run/ports.json``: ``{format, <launcher name>: {service: port}}`` (names hold a ``/``)."""
SPAWN_BASE = 1
"""``run/spawn_base.json``: ``{format, <launcher name>: spawns}``."""

#: Every versioned file, relative to the state directory, and the format this release writes.
CURRENT: dict[str, int] = {
    "desired.json": DESIRED,
    "rollout.json": ROLLOUT,
    "secrets.json": secrets.FORMAT,
    "resources/index.json": resources.FORMAT,
    "run/ports.json": PORTS,
    "run/spawn_base.json": SPAWN_BASE,
}


#: ``(file, format) -> the step to format + 1``: takes and returns the document without
#: its ``format`` key.  Empty while every file is in its first format.
UPGRADES: dict[tuple[str, int], Callable[[dict[str, Any]], dict[str, Any]]] = {}


class TooNew(CorralError):
    """A state file of a format this release does not read (or of no format at all)."""


def format_of(name: str, path: Path, doc: Any) -> int:
    """The format ``doc`` (the parsed ``path``, file ``name`` of :data:`CURRENT`) says it has.

    Raises:
        TooNew: higher than this release reads, or not a positive integer.
    """
    found = doc.get("format", 1) if isinstance(doc, dict) else 1
    highest = CURRENT[name]
    if not isinstance(found, int) or isinstance(found, bool) or found < 1:
        raise TooNew(f"{path} has format {found!r}, which is not a format corral writes; "
                     f"this corral ({__version__}) reads formats 1 to {highest}")
    if found > highest:
        raise TooNew(f"{path} has format {found}; this corral ({__version__}) reads up to "
                     f"{highest}: upgrade corral or use a new state directory")
    return found


def upgrade(name: str, path: Path, doc: Any) -> Any:
    """``doc`` (the parsed file ``name`` at ``path``) in the current format, with its
    ``format`` key; a document that is not an object is returned as it is (its reader
    reports the damage).

    Raises:
        TooNew: see :func:`format_of`.
    """
    found = format_of(name, path, doc)
    if not isinstance(doc, dict):
        return doc
    body = {k: v for k, v in doc.items() if k != "format"}
    for version in range(found, CURRENT[name]):
        body = UPGRADES[name, version](body)
    return {"format": CURRENT[name], **body}


def _read(path: Path) -> Any:
    """The parsed file; None if it is missing or not JSON (its own reader says so)."""
    try:
        return json.loads(path.read_bytes())
    except (FileNotFoundError, ValueError, UnicodeDecodeError):
        return None
    except OSError as exc:
        raise CorralError(f"cannot read {path}: {exc.strerror or exc}") from None


def prepare(state_dir: Path) -> list[str]:
    """Check every file of :data:`CURRENT` under ``state_dir``, then migrate the older ones;
    returns the names of the files rewritten.

    Raises:
        TooNew: a file this release cannot read; nothing has been written.
        CorralError: a file cannot be read or written.
    """
    docs: dict[str, Any] = {}
    for name in CURRENT:
        path = state_dir / name
        doc = _read(path)
        if doc is not None:
            format_of(name, path, doc)
            docs[name] = doc
    rewritten = []
    for name, doc in docs.items():
        if isinstance(doc, dict) and doc.get("format") != CURRENT[name]:
            path = state_dir / name
            new = upgrade(name, path, doc)
            try:
                statefile.atomic_write(path, (json.dumps(new, indent=1) + "\n").encode())
            except OSError as exc:
                raise CorralError(f"cannot write {path}: {exc.strerror or exc}") from None
            rewritten.append(name)
    return rewritten
