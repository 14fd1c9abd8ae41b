"""The secret store: named values in ``<state>/secrets.json``, mode 0600, written atomically.

Names follow ``[A-Za-z_][A-Za-z0-9_]*`` because they are written ``${NAME}`` in a spec.  A
value is any UTF-8 text up to :data:`MAX_VALUE` bytes, newlines included, but no NUL (values
end up in argv and the environment, where NUL cannot go).

Values are held in :class:`Secret` wrappers whose repr and str are a mask, and every message
this module produces names secrets, never their values, so that logging the store, an error
or a ``dict`` of secrets cannot leak one.  :meth:`Secret.reveal` is the one way to the text.

A change that processes must be rolled out for can keep the value it replaces
(``set(..., keep_previous=True)``) in the same file until the rollout's verdict:
:meth:`SecretStore.settle` then forgets it, or puts it back (a failed rollout).

The file is read on first use, not at construction, so that building a supervisor does no
I/O and a damaged file is reported to the request that needs it (as a :class:`CorralError`),
not as a crash at start-up.  The supervisor is the only writer; each change rewrites the
whole file (temp file, fsync, rename), so a kill leaves the previous or the next set.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path

from corral import atomic
from corral.errors import CorralError, NotFound, SpecError, StateWriteFailed

NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MAX_NAME = 128
MAX_VALUE = 1024 * 1024
FORMAT = 1
"""The format of ``secrets.json`` this release writes and reads up to."""


class Secret:
    """A secret's value that never shows itself by accident: repr and str are a mask."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The value itself: pass it on, never log it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def check_name(name: str) -> str:
    """``name`` if it can be a secret's name, else SpecError saying why (names are not secret)."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or len(name) > MAX_NAME:
        raise SpecError(f"invalid secret name {name!r}: use A-Z a-z 0-9 _, not starting with a "
                        f"digit, at most {MAX_NAME} characters (it is written ${{NAME}} in specs)")
    return name


def check_value(name: str, value: str) -> str:
    """``value`` if it can be stored; SpecError naming ``name`` (never the value) otherwise."""
    if not isinstance(value, str):
        raise SpecError(f"secret {name!r}: the value must be text")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise SpecError(f"secret {name!r}: the value is not valid UTF-8 text") from None
    if size > MAX_VALUE:
        raise SpecError(f"secret {name!r}: the value is {size} bytes; the limit is "
                        f"{MAX_VALUE} bytes (store a large file as a resource instead)")
    if "\0" in value:
        raise SpecError(f"secret {name!r}: the value contains a NUL character, which cannot "
                        "go into a command line or an environment variable")
    return value


def parse_env_file(text: str, source: str) -> dict[str, str]:
    """The secrets in an env file: ``NAME=value`` lines, ``#`` comments and blank lines.

    The value is the rest of the line after the first ``=``, as it is (no quotes, no
    escapes), so ``A=b=c`` sets ``A`` to ``b=c``.  Raises SpecError naming ``source`` and the
    line of the first problem (a line without ``=``, a bad name, a name given twice); the
    message never quotes the line, which may hold a value.
    """
    found: dict[str, str] = {}
    lines: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, value = line.partition("=")
        where = f"{source}:{number}"
        if not sep:
            raise SpecError(f"{where}: expected NAME=value (a secret's name, '=', then its "
                            "value), or a # comment")
        name = name.strip()
        try:
            check_value(check_name(name), value)
        except SpecError as exc:
            raise SpecError(f"{where}: {exc.message} (lines are NAME=value)") from None
        if name in found:
            raise SpecError(f"{where}: secret {name!r} is given twice (also on line "
                            f"{lines[name]})")
        found[name], lines[name] = value, number
    return found


class SecretStore:
    """Named secrets in one JSON file.

    Args:
        path: the file (``<state-dir>/secrets.json``); its directory must exist by the time
            the first secret is set.

    Error handling: names that do not exist raise :class:`NotFound`, bad names or values
    :class:`SpecError`, an unreadable or damaged file :class:`CorralError`; none of their
    messages contains a value.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._secrets: dict[str, Secret] | None = None
        self._previous: dict[str, Secret | None] = {}  # read with _secrets

    def __repr__(self) -> str:
        count = "?" if self._secrets is None else str(len(self._secrets))
        return f"SecretStore({str(self.path)!r}, {count} secrets)"

    # reads
    def names(self) -> list[str]:
        """Every secret's name, sorted."""
        return sorted(self._load())

    def __contains__(self, name: object) -> bool:
        return name in self._load()

    def get(self, name: str) -> Secret:
        """The secret called ``name``; NotFound (listing what exists) if there is none."""
        secret = self._load().get(name)
        if secret is None:
            raise NotFound(_unknown([name], self.names()))
        return secret

    def values(self) -> dict[str, str]:
        """Every secret's value by name: what :func:`corral.store.subst.substitute` takes.

        The returned dict shows its values in a repr: hand it straight to substitution.
        """
        return {name: secret.reveal() for name, secret in self._load().items()}

    def previous(self) -> dict[str, str | None]:
        """The values kept by ``set(..., keep_previous=True)`` until :meth:`settle`, by name
        (None: the secret did not exist).  Shows its values in a repr, like :meth:`values`."""
        self._load()
        return {n: s.reveal() if s is not None else None for n, s in self._previous.items()}

    def require(self, names: Iterable[str]) -> None:
        """Raise NotFound naming every one of ``names`` that is not set (names checked first)."""
        secrets = self._load()
        unknown = [n for n in dict.fromkeys(names) if check_name(n) not in secrets]
        if unknown:
            raise NotFound(_unknown(unknown, sorted(secrets)))

    # changes
    def set(self, name: str, value: str, keep_previous: bool = False) -> bool:
        """Store ``value`` as ``name``; returns whether anything changed (new or different).

        The file is rewritten only on a change.  With ``keep_previous``, the value it
        replaces (or that there was none) is kept, in the same write, until
        :meth:`settle`; a value kept already (a second change before the verdict) stays.
        """
        check_value(check_name(name), value)
        secrets = self._load()
        secret = Secret(value)
        if secrets.get(name) == secret:
            return False
        previous = dict(self._previous)
        if keep_previous and name not in previous:
            previous[name] = secrets.get(name)
        self._save({**secrets, name: secret}, previous)
        return True

    def settle(self, names: Iterable[str], revert: bool) -> None:
        """End the keeping of ``names``' previous values: forget them, or (``revert``) put
        them back (a secret that did not exist before is removed).  Names with no kept
        value are left alone, so settling twice is harmless."""
        self._load()
        kept = [n for n in names if n in self._previous]
        if not kept:
            return
        secrets = dict(self._load())
        if revert:
            for name in kept:
                old = self._previous[name]
                if old is None:
                    secrets.pop(name, None)
                else:
                    secrets[name] = old
        self._save(secrets, {n: v for n, v in self._previous.items() if n not in kept})

    def remove(self, names: Iterable[str]) -> list[str]:
        """Remove every secret in ``names`` (all or nothing); returns them sorted, once each.

        Raises NotFound naming each unknown name, and then nothing is removed.
        """
        wanted = sorted(set(names))
        self.require(wanted)
        secrets = self._load()
        if wanted:
            self._save({n: s for n, s in secrets.items() if n not in wanted})
        return wanted

    # the file
    def _load(self) -> dict[str, Secret]:
        if self._secrets is None:
            self._secrets, self._previous = self._read()
        return self._secrets

    def _read(self) -> tuple[dict[str, Secret], dict[str, Secret | None]]:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return {}, {}
        except OSError as exc:
            raise CorralError(f"cannot read the secrets in {self.path}: {exc.strerror}") from None
        try:
            mode = os.fstat(fd).st_mode
            if stat.S_IMODE(mode) & 0o077:
                os.fchmod(fd, 0o600)  # someone widened it: secrets are for the owner only
            with os.fdopen(fd, "rb", closefd=False) as f:
                raw = f.read()
        finally:
            os.close(fd)
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            doc = None  # the message of a JSON error may quote the text: never show it
        found = doc.get("format", 1) if isinstance(doc, dict) else 1
        if isinstance(found, int) and not isinstance(found, bool) and found > FORMAT:
            raise CorralError(f"{self.path} has format {found}; this corral reads up to "
                              f"{FORMAT}: upgrade corral or use a new state directory")
        entries = doc.get("secrets") if isinstance(doc, dict) else None
        previous = doc.get("previous", {}) if isinstance(doc, dict) else None
        if not isinstance(entries, dict) or not all(
                isinstance(v, str) for v in entries.values()) or not isinstance(
                previous, dict) or not all(v is None or isinstance(v, str)
                                           for v in previous.values()):
            raise CorralError(f"{self.path} is damaged (not the JSON corral writes); "
                              "restore it from a backup, or remove it and set the secrets again")
        return ({str(k): Secret(v) for k, v in entries.items()},
                {str(k): Secret(v) if v is not None else None for k, v in previous.items()})

    def _save(self, secrets: Mapping[str, Secret],
              previous: Mapping[str, Secret | None] | None = None) -> None:
        kept = dict(self._previous if previous is None else previous)
        doc: dict[str, object] = {
            "format": FORMAT, "secrets": {n: s.reveal() for n, s in sorted(secrets.items())}}
        if kept:
            doc["previous"] = {n: s.reveal() if s is not None else None
                               for n, s in sorted(kept.items())}
        try:
            atomic.write(self.path, (json.dumps(doc, indent=1) + "\n").encode(), 0o600)
        except OSError as exc:
            raise StateWriteFailed(self.path, exc) from None
        self._secrets = dict(secrets)
        self._previous = kept


def _unknown(names: list[str], known: list[str]) -> str:
    which = ", ".join(repr(n) for n in names)
    have = ", ".join(known) if known else "none"
    noun = "secret" if len(names) == 1 else "secrets"
    return f"no {noun} named {which} (set: {have}); set one with: corral secret set NAME -"
