"""The resource store: content-addressed blobs under ``<state>/resources/``.

Layout::

    resources/<sha256>      one blob per distinct content, mode 0444
    resources/index.json    {id: {name, size, created}}: the original file name and upload time
    resources/.partial/     uploads in progress (removed when the store is first used)

An upload streams to a temp file in ``.partial/`` while it is hashed, in slices of
:data:`FLUSH_BYTES` written from a worker thread, so memory stays constant however large
the file and the event loop never waits on the disk.  The finished file is fsynced and
renamed to its hash; the same content uploaded twice is one blob (the first upload's name
and time are kept).  Ids are checked against ``[0-9a-f]{64}`` before they touch a path.

Why blobs are read-only, and what that means for a service: :meth:`ResourceStore.place`
hard-links a blob into an instance's working directory, so every instance of every process
shares one inode with the store.  The blob's mode (0444, owned by the supervisor's user)
makes the placed file read-only to a service running as another user, which can neither
write nor chmod it; it can still delete or rename it, since the directory is its own, and
that never touches the blob.  A service that needs to change a resource copies it first
(``before: cp bundle.conf app.conf``), or unpacks it (``tar -xf bundle.tar.gz``, the usual
case).  A service running as the supervisor's own user (root, typically) could override
the mode; the store notices a blob whose size changed and refuses to place it, but not a
same-size overwrite: give such services ``user:`` when the resources matter.  A copy (the
fallback across file systems) gets the same 0444 mode, so behaviour does not depend on
where the working directory lives.
"""

from __future__ import annotations

import asyncio
import builtins
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from corral import atomic
from corral.errors import CorralError, NotFound, SpecError, StateWriteFailed

ID_PATTERN = re.compile(r"[0-9a-f]{64}")
FLUSH_BYTES = 1024 * 1024
MAX_NAME_BYTES = 255
BLOB_MODE = 0o444
INDEX = "index.json"
PARTIAL = ".partial"
FORMAT = 1
"""The format of ``index.json`` this release writes and reads up to."""
# Errors of os.link for which a copy still works: another file system, a file system
# without hard links, too many links, or fs.protected_hardlinks refusing a non-root caller.
_NO_LINK = frozenset({errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES})


def check_id(resource_id: str) -> str:
    """``resource_id`` if it has the form of an id; SpecError otherwise (so no path escapes)."""
    if not isinstance(resource_id, str) or not ID_PATTERN.fullmatch(resource_id):
        shown = resource_id if len(str(resource_id)) <= 80 else str(resource_id)[:77] + "..."
        raise SpecError(f"invalid resource id {shown!r}: an id is the sha256 of the content, "
                        "64 lower-case hex digits (see: corral resource ls)")
    return resource_id


def check_name(name: str) -> str:
    """``name`` if it can be a resource's file name (a base name, printable, <= 255 bytes)."""
    problem = None
    if not name or name in (".", ".."):
        problem = "must be a file name"
    elif "/" in name or "\0" in name:
        problem = "must be a file name without '/'"
    elif not name.isprintable():
        problem = "must not contain control characters"
    elif len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        problem = f"must be at most {MAX_NAME_BYTES} bytes"
    if problem:
        shown = name if len(name) <= 80 else name[:77] + "..."
        raise SpecError(f"invalid resource name {shown!r}: {problem}")
    return name


def _rfc3339(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _write_hashed(fd: int, hasher: Any, pieces: list[bytes]) -> None:
    """Write ``pieces`` to ``fd`` and feed them to ``hasher`` (runs in a worker thread;
    hashlib releases the GIL on large buffers)."""
    for piece in pieces:
        hasher.update(piece)
        view = memoryview(piece)
        while view:
            view = view[os.write(fd, view):]


async def _in_thread(func: Callable[..., None], *args: Any) -> None:
    """Run ``func(*args)`` in a worker thread; if cancelled, wait for the thread first.

    The caller closes the file descriptor the thread writes to once this returns or
    raises: closing it under a running write could let the write land in whatever file
    reuses the number.
    """
    task = asyncio.ensure_future(asyncio.to_thread(func, *args))
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait([task])
        raise


class ResourceStore:
    """Content-addressed blobs with their original names.

    Args:
        directory: ``<state-dir>/resources``; created (0700) on first use.
        clock: epoch seconds, for ``created`` (injected by tests).

    Error handling: unknown ids raise :class:`NotFound`, malformed ids or names and
    escaping paths :class:`SpecError`, disk failures :class:`CorralError` naming the path.
    """

    def __init__(self, directory: Path, clock: Callable[[], float] = time.time) -> None:
        self.directory = directory
        self._clock = clock
        self._index: dict[str, dict[str, Any]] | None = None

    def __repr__(self) -> str:
        count = "?" if self._index is None else str(len(self._index))
        return f"ResourceStore({str(self.directory)!r}, {count} blobs)"

    # reads
    def list(self) -> builtins.list[dict[str, Any]]:
        """Every resource as ``{id, name, size, created}``, oldest first."""
        index = self._load()
        entries = [{"id": rid, **meta} for rid, meta in index.items()]
        return sorted(entries, key=lambda e: (e["created"], e["id"]))

    def __contains__(self, resource_id: object) -> bool:
        return isinstance(resource_id, str) and resource_id in self._load()

    def info(self, resource_id: str) -> dict[str, Any]:
        """``{id, name, size, created}`` of one resource; NotFound if there is none."""
        self.require([resource_id])
        return {"id": resource_id, **self._load()[resource_id]}

    def path(self, resource_id: str) -> Path:
        """The blob's file (read-only); NotFound for an unknown id, SpecError for a malformed one."""
        self.info(resource_id)
        blob = self.directory / resource_id
        if not blob.is_file():
            raise NotFound(f"resource {resource_id} is listed but its file is gone from "
                           f"{self.directory}; upload it again")
        return blob

    def require(self, ids: Iterable[str]) -> None:
        """Raise SpecError for a malformed id, else NotFound naming every unknown one."""
        index = self._load()
        unknown = [i for i in dict.fromkeys(ids) if check_id(i) not in index]
        if unknown:
            noun = "resource" if len(unknown) == 1 else "resources"
            raise NotFound(f"no {noun} with id {', '.join(unknown)} "
                           "(list them with: corral resource ls)")

    # changes
    async def add(self, name: str, chunks: AsyncIterator[bytes]) -> str:
        """Store the bytes of ``chunks`` as a resource named ``name``; return its id.

        Resource handling: memory stays within :data:`FLUSH_BYTES` plus one chunk; the temp
        file is removed on any failure or cancellation (a client that disconnects).
        """
        check_name(name)
        self._load()
        partial = self.directory / PARTIAL
        try:
            fd, tmp_name = tempfile.mkstemp(prefix="upload-", dir=partial)
        except OSError as exc:
            raise CorralError(f"cannot store an upload in {partial}: {exc.strerror}") from None
        tmp = Path(tmp_name)
        hasher = hashlib.sha256()
        size = 0
        try:
            # Errors of the source (a client gone) pass through as they are; only the
            # store's own file operations become a CorralError naming the directory.
            pending: list[bytes] = []
            held = 0
            async for chunk in chunks:
                if not chunk:
                    continue
                pending.append(chunk)
                held += len(chunk)
                if held >= FLUSH_BYTES:
                    await self._disk(_write_hashed, fd, hasher, pending)
                    size += held
                    pending, held = [], 0
            if pending:
                await self._disk(_write_hashed, fd, hasher, pending)
                size += held
            await self._disk(os.fsync, fd)
            resource_id = hasher.hexdigest()
            try:
                os.fchmod(fd, BLOB_MODE)
                os.close(fd)
                fd = -1
                blob = self.directory / resource_id
                if blob.is_file():
                    tmp.unlink()  # same content: keep the existing inode (placed files link it)
                else:
                    os.rename(tmp, blob)
                    atomic.fsync_dir(self.directory)
            except OSError as exc:
                raise self._disk_error(exc) from None
        finally:
            if fd >= 0:
                os.close(fd)
            try:
                tmp.unlink()
            except FileNotFoundError:
                pass
        index = self._load()
        if resource_id not in index:
            entry = {"name": name, "size": size, "created": _rfc3339(self._clock())}
            self._save({**index, resource_id: entry})
        return resource_id

    async def _disk(self, func: Callable[..., None], *args: Any) -> None:
        try:
            await _in_thread(func, *args)
        except OSError as exc:
            raise self._disk_error(exc) from None

    def _disk_error(self, exc: OSError) -> CorralError:
        return CorralError(f"cannot store the upload in {self.directory}: "
                           f"{exc.strerror or exc}")

    def remove(self, ids: Iterable[str]) -> builtins.list[str]:
        """Remove every resource in ``ids`` (all or nothing); returns them sorted, once each.

        Files placed from them stay where they are (they are links of their own).
        Raises SpecError for a malformed id and NotFound naming each unknown one, and then
        nothing is removed.
        """
        wanted = sorted(set(ids))
        self.require(wanted)
        index = self._load()
        if not wanted:
            return wanted
        # The index first: a kill between the two leaves an unlisted blob (harmless, and
        # adopted again by an upload of the same content), never a listed missing one.
        self._save({i: meta for i, meta in index.items() if i not in wanted})
        for resource_id in wanted:
            try:
                (self.directory / resource_id).unlink()
            except FileNotFoundError:
                pass
        return wanted

    def place(self, resource_id: str, dest_dir: Path, file: str) -> Path:
        """Put resource ``resource_id`` at ``dest_dir/file`` and return that path.

        A hard link of the blob when possible, else a copy (another file system); either
        way mode 0444 (see the module docstring).  Parent directories of ``file`` are
        created; an existing file there is replaced atomically.  This may copy a whole
        blob: from the event loop, call it through ``asyncio.to_thread``.

        Raises:
            SpecError: ``file`` is absolute, empty, or resolves (symlinks followed) outside
                ``dest_dir``: :class:`corral.spec.ResourceRef` refuses those already, and
                this is the last line.
            NotFound: no such resource.
            CorralError: the blob changed size on disk, or the file cannot be written.
        """
        blob = self.path(resource_id)
        size = self._load()[resource_id]["size"]
        if not file or "\0" in file or os.path.isabs(file):
            raise SpecError(f"resource file {file!r} must be a relative path")
        try:
            dest_dir.mkdir(parents=True, exist_ok=True)
            base = dest_dir.resolve(strict=True)
            target = (base / file).resolve()
            if target == base or not target.is_relative_to(base):
                raise SpecError(f"resource file {file!r} would be outside {dest_dir}")
            if blob.stat().st_size != size:
                raise CorralError(f"resource {resource_id} changed on disk (its size is not "
                                  f"the uploaded {size} bytes); remove it and upload it again")
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.corral{os.getpid()}")
            try:
                tmp.unlink()
            except FileNotFoundError:
                pass
            try:
                os.link(blob, tmp)
            except OSError as exc:
                if exc.errno not in _NO_LINK:
                    raise
                shutil.copyfile(blob, tmp)
                os.chmod(tmp, BLOB_MODE)
            try:
                os.replace(tmp, target)
            except OSError:
                tmp.unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise CorralError(f"cannot place resource {resource_id} as {dest_dir / file}: "
                              f"{exc.strerror or exc}") from None
        return target

    # the index
    def _load(self) -> dict[str, dict[str, Any]]:
        if self._index is None:
            self._index = self._read()
        return self._index

    def _read(self) -> dict[str, dict[str, Any]]:
        partial = self.directory / PARTIAL
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            shutil.rmtree(partial, ignore_errors=True)  # uploads cut short by a restart
            partial.mkdir(mode=0o700, exist_ok=True)
            raw = (self.directory / INDEX).read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise CorralError(f"cannot read the resources in {self.directory}: "
                              f"{exc.strerror or exc}") from None
        try:
            doc = json.loads(raw)
            found = doc.get("format", 1) if isinstance(doc, dict) else 1
            if isinstance(found, int) and not isinstance(found, bool) and found > FORMAT:
                raise CorralError(f"{self.directory / INDEX} has format {found}; this corral "
                                  f"reads up to {FORMAT}: upgrade corral or use a new state "
                                  "directory")
            entries = doc["resources"]
            index = {check_id(str(k)): {"name": str(v["name"]), "size": int(v["size"]),
                                        "created": str(v["created"])}
                     for k, v in entries.items()}
        except (ValueError, KeyError, TypeError, AttributeError, SpecError):
            raise CorralError(f"{self.directory / INDEX} is damaged (not the JSON corral "
                              "writes); restore it from a backup, or remove it (the blobs "
                              "stay, unlisted)") from None
        # A blob removed behind our back is not offered (path() would fail anyway).
        return {rid: meta for rid, meta in index.items() if (self.directory / rid).is_file()}

    def _save(self, index: dict[str, dict[str, Any]]) -> None:
        doc = {"format": FORMAT, "resources": dict(sorted(index.items()))}
        try:
            atomic.write(self.directory / INDEX,
                         (json.dumps(doc, indent=1) + "\n").encode(), 0o600)
        except OSError as exc:
            raise StateWriteFailed(self.directory / INDEX, exc) from None
        self._index = index
