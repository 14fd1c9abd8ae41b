"""Tests of cgroup v2 detection (corral.launcher.cgroup) on fake mountinfo texts."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.launcher.cgroup import Cgroups, leaf_name, own_cgroup_dir, own_v2_path, v2_mounts

HYBRID = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
PURE_V2 = """\
22 1 0:21 / / rw,relatime - ext4 /dev/sda1 rw
30 22 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate
"""
V1_ONLY = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
"""
# A bind mount of a sub-tree (a container seen without a cgroup namespace), with a space
# in the mount point, which mountinfo escapes as \\040.
BIND = """\
50 40 0:26 /docker/abc /my\\040cgroup rw,relatime - cgroup2 cgroup2 rw
"""


def test_v2_mounts_finds_only_cgroup2() -> None:
    """Only cgroup2 lines count; optional fields before the separator are skipped."""
    assert v2_mounts(HYBRID) == [("/", "/sys/fs/cgroup/unified")]
    assert v2_mounts(PURE_V2) == [("/", "/sys/fs/cgroup")]
    assert v2_mounts(V1_ONLY) == []
    assert v2_mounts(BIND) == [("/docker/abc", "/my cgroup")]


def test_own_v2_path_reads_the_unified_line() -> None:
    """The ``0::`` line names the v2 cgroup; v1 lines and deleted cgroups do not count."""
    assert own_v2_path("4:memory:/x\n0::/system.slice/corral.service\n") == \
        "/system.slice/corral.service"
    assert own_v2_path("4:memory:/x\n1:cpu:/\n") is None
    assert own_v2_path("0::/gone (deleted)\n") is None


@pytest.mark.parametrize(("mountinfo", "cgroup", "expected"), [
    (HYBRID, "0::/\n", "/sys/fs/cgroup/unified"),
    (PURE_V2, "0::/system.slice/corral.service\n", "/sys/fs/cgroup/system.slice/corral.service"),
    (PURE_V2, "0::/\n", "/sys/fs/cgroup"),
    (V1_ONLY, "4:memory:/\n", None),
    (V1_ONLY, "0::/\n", None),
    (BIND, "0::/docker/abc/init\n", "/my cgroup/init"),
    (BIND, "0::/elsewhere\n", None),
    ("", "", None),
])
def test_own_cgroup_dir(mountinfo: str, cgroup: str, expected: str | None) -> None:
    """Hybrid, pure v2, v1-only, bind-mounted and absent hierarchies."""
    assert own_cgroup_dir(mountinfo, cgroup) == expected


def test_leaf_names_are_safe_directory_names() -> None:
    """Launcher names become one directory name; anything odd is hashed."""
    assert leaf_name("web/0") == "web.0"
    assert leaf_name("web/0@2") == "web.0@2"
    for odd in ("../x", "cgroup.procs", "a b", "", "."):
        name = leaf_name(odd)
        assert name.startswith("x-") and "/" not in name


def test_setup_says_why_not(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Turned off, or pointed at a directory that is not a cgroup: a reason, no tree."""
    monkeypatch.setenv("CORRAL_CGROUP", "off")
    assert Cgroups.setup(tmp_path) == (None, "CORRAL_CGROUP=off")
    monkeypatch.setenv("CORRAL_CGROUP", "all")
    monkeypatch.setenv("CORRAL_CGROUP_PARENT", str(tmp_path))
    cgroups, why = Cgroups.setup(tmp_path)
    if cgroups is None and "is not a cgroup v2 directory" not in why:
        pytest.skip(f"no cgroup v2 here to check the path against: {why}")
    assert cgroups is None and "is not a cgroup v2 directory" in why


def test_leaves_are_never_shared_by_two_live_children(tmp_path: Path) -> None:
    """Two children with one name (a cut-over) get two leaves; a released leaf is reused
    by the next child of that name; an owned leaf is never removed.  (A plain directory
    stands in for the cgroup tree: these are directory operations.)"""
    cgroups = Cgroups(base=str(tmp_path), home=str(tmp_path), memory=False, ready=True)
    first = cgroups.create("web/0")
    assert first == str(tmp_path / "web.0")
    cgroups.adopt(first, 100)
    second = cgroups.create("web/0")
    assert second == str(tmp_path / "web.0-2")
    cgroups.adopt(second, 200)
    assert cgroups.remove(first) and Path(first).is_dir()  # owned: left alone
    cgroups.release(first, 100)
    assert cgroups.create("web/0") == first  # free again: reused, not a third one
    assert cgroups.remove(first) and not Path(first).exists()
    cgroups.release(second, 999)  # not its owner: nothing changes
    assert cgroups.owners == {second: 200}


def test_memory_limit_needs_the_controller(tmp_path: Path) -> None:
    """Without the memory controller a limit is not applied (None), and OOM is unknown."""
    cgroups = Cgroups(base=str(tmp_path), home=str(tmp_path), memory=False, ready=True)
    leaf = cgroups.create("web/0")
    assert leaf is not None
    assert cgroups.set_memory_max(leaf, 1 << 20, "web/0") is None
    assert cgroups.set_memory_max(leaf, None, "web/0") is None
    assert cgroups.oom_kills(leaf) is None
    assert not (Path(leaf) / "memory.max").exists()
