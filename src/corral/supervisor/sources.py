"""The desired state and secrets read from files that something else keeps up to date.

``sup run --target FILE --watch-target`` (:class:`TargetFile`) and ``sup run --secrets-dir
DIR`` (:class:`SecretsDir`): in Kubernetes, a ConfigMap and a Secret mounted as files; on
a host or in a container, files a deployment tool writes.  Each watches its directory
(:mod:`.dirwatch`) and, on a change, does what ``corral target set`` or ``corral secret
set`` would do, through the same supervisor methods:

- a changed target file is checked as ``target set`` checks it, its plan is an event, and
  it is applied (health-gated replacements, after a rollout under way).  A file that is
  refused (invalid YAML or fields, a missing secret, an address that cannot be bound)
  changes nothing: running services keep running, and one event (and one line on
  stderr) names the file, the line and the field.  An empty file is refused too: it is
  what a file looks like halfway through being rewritten.
- each regular file of the secrets directory whose name is a secret's name (``[A-Za-z_]
  [A-Za-z0-9_]*``) is that secret, its value the file's UTF-8 text (without the one
  trailing newline of a one-line value, as ``secret set NAME -`` reads it); a changed
  value rolls out to the processes that use it.  Hidden entries (Kubernetes' ``..data``)
  and directories are skipped; a file that cannot be a secret is named once.  A file
  that disappears leaves the stored secret as it is (``corral secret rm`` removes it).

Secret values never appear in an event or a message: files are named, not quoted.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

from corral.errors import Conflict, CorralError, SpecError
from corral.spec import load_target
from corral.store.secrets import MAX_VALUE, NAME_PATTERN, check_value

from .dirwatch import DirWatch, Rerun
from .loop import Supervisor


def _say(supervisor: Supervisor, kind: str, line: str) -> None:
    """One event, and the same line on stderr (the journal, ``docker logs``)."""
    supervisor.events.emit("", kind, line)
    print(f"corral-supervisor: {line}", file=sys.stderr, flush=True)


class TargetFile:
    """Re-applies ``path`` whenever it changes (``--watch-target``).

    Call :meth:`start` once the supervisor is attached: it applies the file at once if it
    differs from the running target (it changed while no supervisor was running), then
    watches it.
    """

    def __init__(self, supervisor: Supervisor, path: Path) -> None:
        self.supervisor = supervisor
        self.path = path
        self.refused = False
        self._last: str | None = None
        self._said = ""
        self._watch: DirWatch | None = None
        # A look at the file; changes that come while one is applied wait for it.
        self.changed = Rerun(self._apply)

    def start(self) -> None:
        self._watch = DirWatch(self.path.parent, self.changed)
        self.changed()

    def close(self) -> None:
        if self._watch is not None:
            self._watch.close()
        self.changed.cancel()

    def retry(self) -> None:
        """Look at the file again even if it did not change (a secret it lacked is set)."""
        if self.refused:
            self._last = None
            self.changed()

    async def _apply(self) -> None:
        source = str(self.path)
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            self._tell(f"cannot read target file {source} ({why}); the running target stays")
            return
        if text == self._last:
            return
        self._last = text
        self._said = ""
        if not text.strip():
            self._refuse(f"target file {source} is empty; not applied (write "
                         "'processes: []' to remove every process)")
            return
        sup = self.supervisor
        try:
            target = load_target(text, source)
            changes = sup.targets.plan(target)
            if not changes:  # as running (the first supervisor applied it at start)
                self.refused = False
                return
            sup.targets.check(target, text, source)
            plan = "; ".join(f"{_MARKS[c.action.value]} {c.kind} {c.name}"
                             + (f": {', '.join(c.fields)}" if c.fields else "")
                             for c in changes)
            sup.events.emit("", "target", f"target file {source} changed: {plan}")
            while True:
                if sup.rollouts.running():
                    await sup.rollouts.wait()
                try:
                    await sup.targets.apply(target, text, source,
                                           cause=f"target file {source} changed")
                    break
                except Conflict:
                    sup.conflict_if_stopping()  # shutting down: give up (raises Conflict)
                    # else another rollout began meanwhile (target set): after it, again
            self.refused = False
        except SpecError as exc:
            self._refuse(f"target file {source} refused; running services keep running: "
                         + "; ".join(exc.problems))
        except Conflict:
            return  # the supervisor is shutting down
        except CorralError as exc:
            self._refuse(f"target file {source} not applied: {exc}")

    def _refuse(self, line: str) -> None:
        self.refused = True
        _say(self.supervisor, "target", line)

    def _tell(self, line: str) -> None:
        if line != self._said:  # a directory that keeps failing is said once
            self._said = line
            self._last = None
            _say(self.supervisor, "target", line)


_MARKS = {"added": "+", "changed": "~", "removed": "-"}


def read_secret_file(path: Path) -> str:
    """A secret's value from a file, as ``secret set NAME -`` reads stdin.

    Raises:
        SpecError: not UTF-8, too large, or a NUL in it (the message names the file only).
    """
    with open(path, "rb") as f:
        raw = f.read(MAX_VALUE + 1)
    if len(raw) > MAX_VALUE:
        raise SpecError(f"{path} is over {MAX_VALUE} bytes (the limit of a secret)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SpecError(f"{path} is not UTF-8 text") from None
    for ending in ("\r\n", "\n"):
        if text.endswith(ending) and "\n" not in text[:-len(ending)]:
            text = text[:-len(ending)]
            break
    try:
        check_value(path.name, text)
    except SpecError:
        raise SpecError(f"{path} contains a NUL character, which a secret cannot hold") \
            from None
    return text


class SecretsDir:
    """Keeps the secret store in step with the files of ``directory`` (``--secrets-dir``).

    :meth:`load` reads it once, synchronously, before the supervisor starts anything (so
    the first spawns have the values); :meth:`start` watches it.  ``on_synced(names)`` is
    called after secrets changed (the target file may have been waiting for one).
    """

    def __init__(self, supervisor: Supervisor, directory: Path,
                 on_synced: Callable[[list[str]], None] | None = None) -> None:
        self.supervisor = supervisor
        self.directory = directory
        self.on_synced = on_synced
        self._said: set[str] = set()
        self._watch: DirWatch | None = None
        self.changed = Rerun(self._sync)

    def load(self) -> list[str]:
        """Store every secret of the directory; the names whose value changed.  Each
        problem is said once, and again only if it comes back after it was gone."""
        problems: list[str] = []
        values = self._read(problems)
        store = self.supervisor.secrets
        changed = []
        for name, value in values.items():
            try:
                if store.set(name, value):
                    changed.append(name)
            except CorralError as exc:  # the store's file cannot be written
                problems.append(f"cannot store secret {name} from {self.directory}: {exc}")
        for line in problems:
            if line not in self._said:
                _say(self.supervisor, "secrets", line)
        self._said = set(problems)
        return changed

    def start(self) -> None:
        self._watch = DirWatch(self.directory, self.changed)

    def close(self) -> None:
        if self._watch is not None:
            self._watch.close()
        self.changed.cancel()

    async def _sync(self) -> bool:
        """Store what changed and roll it out; False when the supervisor is shutting down."""
        changed = self.load()
        if not changed:
            return True
        self.supervisor.events.emit(
            "", "secrets", f"{', '.join(changed)} changed in {self.directory}")
        try:
            await self.supervisor.targets.secrets_changed(changed)
        except Conflict:
            return False
        if self.on_synced is not None:
            self.on_synced(changed)
        return True

    def _read(self, problems: list[str]) -> dict[str, str]:
        """Name -> value for every file that can be a secret; a line per problem."""
        try:
            entries = sorted(os.scandir(self.directory), key=lambda e: e.name)
        except OSError as exc:
            problems.append(f"cannot read secrets directory {self.directory} "
                            f"({exc.strerror or exc}); the stored secrets stay as they are")
            return {}
        values: dict[str, str] = {}
        for entry in entries:
            if entry.name.startswith("."):
                continue  # Kubernetes' ..data and ..<timestamp> entries, editors' swap files
            try:
                if not entry.is_file():  # follows symlinks: ..data/NAME is a regular file
                    continue
            except OSError:
                continue
            if not NAME_PATTERN.fullmatch(entry.name):
                problems.append(f"{self.directory}/{entry.name}: not a secret's name "
                                "(use A-Z a-z 0-9 _, not starting with a digit); skipped")
                continue
            try:
                values[entry.name] = read_secret_file(Path(entry.path))
            except OSError as exc:
                problems.append(f"cannot read secret file {entry.path} "
                                f"({exc.strerror or exc}); the stored value stays")
            except SpecError as exc:
                problems.append(f"{exc}; skipped")
        return values
