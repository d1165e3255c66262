"""Memory hierarchy discovery, cgroup paths, and which memcg's limit was hit."""

from __future__ import annotations

from pathlib import Path

from oomtrace.agent.cgroups import hierarchy as cgroups
from oomtrace.agent.kernel.decode import MemcgLevel
from oomtrace.agent.kernel.oom_caller import OomPath

MIB = 1024 * 1024


def level(
    cid: int, name: str, usage: int, limit: int | None, memsw: tuple[int, int | None] = (0, None)
) -> MemcgLevel:
    return MemcgLevel(cid, name, usage, limit, memsw[0], memsw[1], 0)


V1_MOUNTINFO = """\
24 30 0:21 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
27 24 0:24 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
30 24 0:27 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
35 24 0:32 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""


def test_v1_memory_hierarchy_wins_over_a_v2_mount_without_memory() -> None:
    h = cgroups.parse_mountinfo(V1_MOUNTINFO)
    assert (h.version, h.mount) == (1, Path("/sys/fs/cgroup/memory"))


def test_v2_hierarchy_found_by_its_controllers(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    text = f"35 24 0:32 / {tmp_path} rw,relatime - cgroup2 cgroup2 rw,nsdelegate\n"
    h = cgroups.parse_mountinfo(text)
    assert (h.version, h.mount) == (2, tmp_path)


def test_no_memory_controller_anywhere() -> None:
    h = cgroups.parse_mountinfo("27 24 0:24 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n")
    assert (h.version, h.mount) == (0, None)


def test_level_paths_as_the_kernel_prints_them() -> None:
    chain = (level(3, "ctr", 0, None), level(2, "pod", 0, None), level(1, "", 0, None))
    assert cgroups.level_paths(chain, depth_cut=False) == ["/pod/ctr", "/pod", "/"]


def test_level_paths_when_the_chain_was_cut() -> None:
    chain = (level(3, "c", 0, None), level(2, "b", 0, None))
    assert cgroups.level_paths(chain, depth_cut=True, last_path="/x/y/b") == ["/x/y/b/c", "/x/y/b"]
    assert cgroups.level_paths(chain, depth_cut=True) == ["…/b/c", "…/b"]


def test_oom_memcg_is_the_parent_whose_limit_was_hit() -> None:
    chain = (
        level(3, "child", 63 * MIB, None),
        level(2, "parent", 64 * MIB - 4096, 64 * MIB),
        level(1, "", 900 * MIB, None),
    )
    assert cgroups.derive_oom_level(chain, trigger_memcg_id=3) == 1


def test_memsw_limit_counts_on_cgroup_v1() -> None:
    chain = (level(2, "a", 40 * MIB, 64 * MIB, memsw=(64 * MIB, 64 * MIB)), level(1, "", 0, None))
    assert cgroups.derive_oom_level(chain, trigger_memcg_id=2) == 0


def test_no_memcg_at_its_limit_means_a_global_oom() -> None:
    chain = (level(2, "a", 10 * MIB, 64 * MIB), level(1, "", 0, None))
    assert cgroups.derive_oom_level(chain, trigger_memcg_id=2) is None


def test_kernel_stack_settles_memcg_or_global() -> None:
    # As in a burst on 6.18: the kernel found no margin, then a previous
    # victim's last pages were uncharged before mark_victim; the kernel's own
    # report showed the memcg 6.7 MiB under its limit too.
    chain = (
        level(3, "g2", 21 * MIB, 32 * MIB, memsw=(21 * MIB, 32 * MIB)),
        level(2, "top", 150 * MIB, None),
        level(1, "", 900 * MIB, None),
    )
    assert cgroups.derive_oom_level(chain, trigger_memcg_id=3) is None  # counters alone
    assert cgroups.derive_oom_level(chain, trigger_memcg_id=3, path=OomPath.MEMCG) == 0
    at_limit = (level(2, "a", 64 * MIB, 64 * MIB), level(1, "", 0, None))
    assert cgroups.derive_oom_level(at_limit, trigger_memcg_id=2, path=OomPath.GLOBAL) is None


def test_memcg_oom_with_no_memcg_at_its_limit_picks_the_least_headroom() -> None:
    chain = (
        level(4, "ctr", 100 * MIB, 512 * MIB),  # 412 MiB left
        level(3, "pod", 900 * MIB, 1024 * MIB),  # 124 MiB left: the tightest
        level(2, "qos", 900 * MIB, None),
        level(1, "", 0, None),
    )
    assert cgroups.derive_oom_level(chain, trigger_memcg_id=4, path=OomPath.MEMCG) == 1
    # The trigger charged from the pod level: the container was not charged.
    tight_ctr = (level(4, "ctr", 500 * MIB, 512 * MIB), *chain[1:])
    assert cgroups.derive_oom_level(tight_ctr, trigger_memcg_id=3, path=OomPath.MEMCG) == 1
    # Nothing limited anywhere: no memcg to name.
    free = (level(2, "a", 0, None), level(1, "", 0, None))
    assert cgroups.derive_oom_level(free, trigger_memcg_id=2, path=OomPath.MEMCG) is None


def test_memcg_below_the_triggers_is_chosen_only_as_a_last_resort() -> None:
    # Trigger in the parent: the at-limit parent is the answer, not the child.
    chain = (
        level(3, "child", 32 * MIB, 32 * MIB),
        level(2, "parent", 64 * MIB, 64 * MIB),
        level(1, "", 0, None),
    )
    assert cgroups.derive_oom_level(chain, trigger_memcg_id=2) == 1
    # Trigger elsewhere: the lowest at-limit level on the victim's path.
    assert cgroups.derive_oom_level(chain, trigger_memcg_id=99) == 0


def test_effective_limit_is_the_smallest_on_the_path() -> None:
    chain = (level(3, "c", 0, 128 * MIB), level(2, "p", 0, 64 * MIB), level(1, "", 0, None))
    assert cgroups.effective_limit(chain) == 64 * MIB
    assert cgroups.effective_limit((level(1, "", 0, None),)) is None


def test_find_by_id_walks_the_hierarchy(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    h = cgroups.MemoryHierarchy(2, tmp_path)
    ino = (tmp_path / "a" / "b").stat().st_ino
    assert h.find_by_id(ino) == "/a/b"
    assert h.find_by_id(1) is None
