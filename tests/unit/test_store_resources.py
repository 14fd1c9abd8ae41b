"""Tests of the resource store (corral.store.resources): streaming adds, content ids,
all-or-nothing removal, and placing files that cannot escape their directory."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from corral.errors import CorralError, NotFound, SpecError
from corral.store import resources
from corral.store.resources import ResourceStore

DATA = b"corral resource\n" * 100_000  # 1.6 MB: several flushes


async def chunks(data: bytes, size: int = 65536) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]
        await asyncio.sleep(0)


def add(store: ResourceStore, name: str, data: bytes) -> str:
    return asyncio.run(store.add(name, chunks(data)))


@pytest.fixture
def store(tmp_path: Path) -> ResourceStore:
    return ResourceStore(tmp_path / "resources", clock=lambda: 1_700_000_000.5)


def test_add_stores_by_sha256(store: ResourceStore) -> None:
    """The id is the sha256 of the bytes; the blob holds them, read-only."""
    rid = add(store, "bundle.tar.gz", DATA)
    assert rid == hashlib.sha256(DATA).hexdigest()
    blob = store.path(rid)
    assert blob == store.directory / rid and blob.read_bytes() == DATA
    assert stat.S_IMODE(blob.stat().st_mode) == 0o444
    assert store.list() == [{"id": rid, "name": "bundle.tar.gz", "size": len(DATA),
                             "created": "2023-11-14T22:13:20.500000Z"}]
    assert rid in store


def test_same_content_twice_is_one_blob(store: ResourceStore) -> None:
    """A second upload of the same bytes keeps the first blob (same inode), name and time."""
    rid = add(store, "first.bin", DATA)
    inode = store.path(rid).stat().st_ino
    assert add(store, "second.bin", DATA) == rid
    assert store.path(rid).stat().st_ino == inode
    assert [e["name"] for e in store.list()] == ["first.bin"]
    assert sorted(p.name for p in store.directory.iterdir()) == sorted(
        [rid, "index.json", ".partial"])
    assert list((store.directory / ".partial").iterdir()) == []


def test_an_empty_resource_is_allowed(store: ResourceStore) -> None:
    """Zero bytes is content too."""
    rid = add(store, "empty", b"")
    assert rid == hashlib.sha256(b"").hexdigest() and store.info(rid)["size"] == 0


def test_the_index_survives_a_new_store(store: ResourceStore) -> None:
    """A restarted supervisor sees the same resources."""
    rid = add(store, "a.txt", b"abc")
    again = ResourceStore(store.directory)
    assert again.info(rid)["name"] == "a.txt"


def test_a_failed_upload_leaves_nothing(store: ResourceStore) -> None:
    """A stream that fails mid-way (a client gone) leaves no blob, no entry, no temp file."""
    async def broken() -> AsyncIterator[bytes]:
        yield b"x" * (3 * resources.FLUSH_BYTES)
        raise ConnectionResetError("client went away")
    with pytest.raises(ConnectionResetError):
        asyncio.run(store.add("x.bin", broken()))
    assert store.list() == []
    assert list((store.directory / ".partial").iterdir()) == []
    assert [p.name for p in store.directory.iterdir() if p.name != ".partial"] == []


def test_a_cancelled_upload_leaves_nothing(store: ResourceStore) -> None:
    """Cancelling an upload (the request task is cancelled) removes its temp file."""
    async def main() -> None:
        started = asyncio.Event()

        async def endless() -> AsyncIterator[bytes]:
            while True:
                yield b"y" * 65536
                started.set()
                await asyncio.sleep(0)
        task = asyncio.create_task(store.add("y.bin", endless()))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    asyncio.run(main())
    assert store.list() == []
    assert list((store.directory / ".partial").iterdir()) == []


def test_leftover_partial_uploads_are_removed_on_first_use(tmp_path: Path) -> None:
    """Temp files of uploads cut short by a crash are cleaned when a store starts."""
    partial = tmp_path / "resources" / ".partial"
    partial.mkdir(parents=True)
    (partial / "upload-abc").write_bytes(b"half")
    assert ResourceStore(tmp_path / "resources").list() == []
    assert list(partial.iterdir()) == []


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "a\0b", "line\nbreak", "x" * 256])
def test_bad_names_are_refused(store: ResourceStore, name: str) -> None:
    """The recorded name is a printable base name of at most 255 bytes."""
    with pytest.raises(SpecError, match="invalid resource name"):
        add(store, name, b"data")


@pytest.mark.parametrize("rid", ["", "abc", "../" + "0" * 61, "A" * 64, "0" * 63 + "/",
                                 "0" * 65])
def test_malformed_ids_never_become_paths(store: ResourceStore, rid: str) -> None:
    """Anything but 64 lower-case hex digits is refused before it touches the file system."""
    for call in (store.path, store.info, lambda r: store.remove([r])):
        with pytest.raises(SpecError, match="invalid resource id"):
            call(rid)


def test_unknown_ids_are_not_found(store: ResourceStore) -> None:
    """A well-formed id that was never uploaded is NotFound."""
    with pytest.raises(NotFound, match=r"no resource with id 0{64}"):
        store.path("0" * 64)


def test_remove_is_all_or_nothing(store: ResourceStore) -> None:
    """An unknown id refuses the whole removal; otherwise the blobs and entries go."""
    a, b = add(store, "a", b"a"), add(store, "b", b"b")
    with pytest.raises(NotFound, match=r"1{64}"):
        store.remove([a, "1" * 64])
    assert {e["id"] for e in store.list()} == {a, b}
    assert store.remove([a, a]) == [a]
    assert not (store.directory / a).exists()
    assert [e["id"] for e in ResourceStore(store.directory).list()] == [b]


def test_a_blob_deleted_behind_the_stores_back_is_not_listed(store: ResourceStore) -> None:
    """An index entry whose blob is gone is dropped when the index is read."""
    rid = add(store, "a", b"a")
    os.unlink(store.directory / rid)
    assert ResourceStore(store.directory).list() == []


# --------------------------------------------------------------------------------- place
def test_place_hardlinks_read_only(store: ResourceStore, tmp_path: Path) -> None:
    """Placing links the blob (same inode) into the directory, creating parents."""
    rid = add(store, "a.tar", DATA)
    run = tmp_path / "run" / "web" / "0"
    placed = store.place(rid, run, "sub/dir/a.tar")
    assert placed == (run / "sub/dir/a.tar").resolve()
    assert placed.read_bytes() == DATA
    assert placed.stat().st_ino == store.path(rid).stat().st_ino
    assert stat.S_IMODE(placed.stat().st_mode) == 0o444
    # Replacing or removing the placed file leaves the blob alone.
    placed.unlink()
    assert store.path(rid).read_bytes() == DATA
    assert [p.name for p in placed.parent.iterdir()] == []


def test_place_copies_when_links_are_impossible(store: ResourceStore, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Across file systems (EXDEV) the blob is copied, with the same read-only mode."""
    rid = add(store, "a.tar", DATA)

    def no_link(src: object, dst: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")
    monkeypatch.setattr(resources.os, "link", no_link)
    placed = store.place(rid, tmp_path / "run", "a.tar")
    assert placed.read_bytes() == DATA
    assert placed.stat().st_ino != store.path(rid).stat().st_ino
    assert stat.S_IMODE(placed.stat().st_mode) == 0o444


def test_place_replaces_an_existing_file(store: ResourceStore, tmp_path: Path) -> None:
    """A file already at the destination is replaced atomically."""
    rid = add(store, "a", b"new")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "a").write_bytes(b"old")
    assert store.place(rid, tmp_path / "run", "a").read_bytes() == b"new"
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["a"]


@pytest.mark.parametrize("file", ["../x", "a/../../x", "/etc/x", "", ".", "a/..", "x\0y"])
def test_place_refuses_escaping_paths(store: ResourceStore, tmp_path: Path, file: str) -> None:
    """A file outside the directory (or the directory itself) is refused."""
    rid = add(store, "a", b"a")
    with pytest.raises(SpecError):
        store.place(rid, tmp_path / "run", file)
    assert not (tmp_path / "x").exists()


def test_place_refuses_escaping_through_a_symlink(store: ResourceStore, tmp_path: Path) -> None:
    """A symlink inside the directory that points outside it is followed and refused."""
    rid = add(store, "a", b"a")
    run, outside = tmp_path / "run", tmp_path / "outside"
    run.mkdir()
    outside.mkdir()
    (run / "link").symlink_to(outside)
    with pytest.raises(SpecError, match="outside"):
        store.place(rid, run, "link/a")
    assert list(outside.iterdir()) == []


def test_place_refuses_a_blob_that_changed_size(store: ResourceStore, tmp_path: Path) -> None:
    """A blob altered on disk (its size differs) is not handed to a process."""
    rid = add(store, "a", b"abc")
    blob = store.path(rid)
    os.chmod(blob, 0o644)
    blob.write_bytes(b"abcd")
    with pytest.raises(CorralError, match="changed on disk"):
        store.place(rid, tmp_path / "run", "a")


def test_repr_is_short(store: ResourceStore) -> None:
    """The repr names the directory and a count, not the index."""
    add(store, "a", b"a")
    assert repr(store) == f"ResourceStore({str(store.directory)!r}, 1 blobs)"
