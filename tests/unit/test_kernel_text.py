"""Who called the OOM killer, from a kernel stack and /proc/kallsyms."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from oomtrace.agent.kernel.oom_caller import KALLSYMS, KernelText, OomPath

# The shape of 6.18's /proc/kallsyms around the functions (addresses from this
# VM's kernel; sizes as its own OOM report prints them: out_of_memory+0x214/0x500).
KALLSYMS_6_18 = """\
ffffffff812122d0 t __oom_kill_process.cold
ffffffff81212346 t oom_kill_process.cold
ffffffff8121240a t out_of_memory.cold
ffffffff81212482 t __alloc_pages_slowpath.constprop.0.cold
ffffffff81595b90 t mark_oom_victim
ffffffff81596eb0 t __oom_kill_process
ffffffff81597310 t oom_kill_process
ffffffff81597ce0 T out_of_memory
ffffffff81597ce0 T __pfx_out_of_memory_alias
ffffffff815981e0 T pagefault_out_of_memory
ffffffff8161e720 t __alloc_pages_slowpath.constprop.0
ffffffff8161f3a0 T __alloc_pages_noprof
ffffffff8168bab0 t mem_cgroup_out_of_memory
ffffffff8168bbc0 t mem_cgroup_oom_control_read
ffffffff8168f910 t try_charge_memcg
ffffffff81690000 t charge_memcg
ffffffffc0201000 t ftrace_trampoline\t[__builtin__ftrace]
"""

MARK_OOM_VICTIM = 0xFFFFFFFF81595B90 + 0x40
OOM_KILL_PROCESS = 0xFFFFFFFF81597310 + 0x60
OUT_OF_MEMORY = 0xFFFFFFFF81597CE0 + 0x214
MEMCG_OOM = 0xFFFFFFFF8168BAB0 + 0xC0
TRY_CHARGE = 0xFFFFFFFF8168F910 + 0x422
SLOWPATH = 0xFFFFFFFF8161E720 + 0x8A0
ALLOC_PAGES = 0xFFFFFFFF8161F3A0 + 0x120


@pytest.fixture
def text(tmp_path: Path) -> KernelText:
    path = tmp_path / "kallsyms"
    path.write_text(KALLSYMS_6_18)
    return KernelText.load(path)


def test_function_ranges_end_where_the_next_symbol_starts(text: KernelText) -> None:
    ranges = {(r.name, r.start, r.end) for r in text.ranges}
    assert ranges == {
        ("out_of_memory", 0xFFFFFFFF81597CE0, 0xFFFFFFFF815981E0),  # alias skipped
        ("out_of_memory", 0xFFFFFFFF8121240A, 0xFFFFFFFF81212482),  # the .cold part
        ("mem_cgroup_out_of_memory", 0xFFFFFFFF8168BAB0, 0xFFFFFFFF8168BBC0),
        ("try_charge_memcg", 0xFFFFFFFF8168F910, 0xFFFFFFFF81690000),
    }
    assert text.reason == ""
    assert text.function_at(0xFFFFFFFF815981E0) is None  # pagefault_out_of_memory


def test_memcg_charge_path_is_a_memcg_oom(text: KernelText) -> None:
    stack = (MARK_OOM_VICTIM, OOM_KILL_PROCESS, OUT_OF_MEMORY, MEMCG_OOM, TRY_CHARGE, 0x1234)
    assert text.oom_path(stack) is OomPath.MEMCG


def test_page_allocator_path_is_a_global_oom(text: KernelText) -> None:
    stack = (MARK_OOM_VICTIM, OOM_KILL_PROCESS, OUT_OF_MEMORY, SLOWPATH, ALLOC_PAGES)
    assert text.oom_path(stack) is OomPath.GLOBAL
    # Reached from a memcg's reclaim, but the page allocator called the OOM
    # killer: its caller decides, not what lies further out.
    assert text.oom_path((OUT_OF_MEMORY, SLOWPATH, TRY_CHARGE)) is OomPath.GLOBAL


def test_cold_part_of_out_of_memory_counts_as_the_function(text: KernelText) -> None:
    stack = (OOM_KILL_PROCESS, 0xFFFFFFFF8121240A + 8, OUT_OF_MEMORY, MEMCG_OOM)
    assert text.oom_path(stack) is OomPath.MEMCG


def test_no_answer_without_out_of_memory_and_its_caller(text: KernelText) -> None:
    assert text.oom_path(()) is OomPath.UNKNOWN
    assert text.oom_path((MARK_OOM_VICTIM, TRY_CHARGE)) is OomPath.UNKNOWN
    assert text.oom_path((MARK_OOM_VICTIM, OUT_OF_MEMORY)) is OomPath.UNKNOWN  # cut there


def test_inlined_mem_cgroup_out_of_memory_leaves_its_caller(tmp_path: Path) -> None:
    path = tmp_path / "kallsyms"
    path.write_text(
        "".join(
            line + "\n"
            for line in KALLSYMS_6_18.splitlines()
            if "mem_cgroup_out_of_memory" not in line
        )
    )
    text = KernelText.load(path)
    assert text.oom_path((OUT_OF_MEMORY, MEMCG_OOM - 0x500, TRY_CHARGE)) is OomPath.GLOBAL
    assert text.oom_path((OUT_OF_MEMORY, TRY_CHARGE)) is OomPath.MEMCG


def test_per_cpu_symbols_at_zero_do_not_mean_hidden_addresses(tmp_path: Path) -> None:
    # 6.1 lists the per-CPU area first, at address 0, then the kernel text.
    path = tmp_path / "kallsyms"
    path.write_text("0000000000000000 A fixed_percpu_data\n" + KALLSYMS_6_18)
    text = KernelText.load(path)
    assert text.reason == ""
    assert text.oom_path((OUT_OF_MEMORY, MEMCG_OOM)) is OomPath.MEMCG


def test_hidden_or_missing_kallsyms_says_why(tmp_path: Path) -> None:
    hidden = tmp_path / "kallsyms"
    hidden.write_text(re.sub(r"(?m)^[0-9a-f]{16}", "0" * 16, KALLSYMS_6_18))
    text = KernelText.load(hidden)
    assert text.ranges == ()
    assert "kptr_restrict" in text.reason
    assert text.oom_path((OUT_OF_MEMORY, MEMCG_OOM)) is OomPath.UNKNOWN
    missing = KernelText.load(tmp_path / "absent")
    assert "unreadable" in missing.reason
    empty = tmp_path / "empty"
    empty.write_text("ffffffff81000000 T _stext\n")
    assert KernelText.load(empty).reason == "out_of_memory not in kallsyms"


@pytest.mark.skipif(os.geteuid() != 0, reason="/proc/kallsyms shows addresses to root only")
def test_running_kernel_has_the_oom_killer_and_the_memcg_path() -> None:
    text = KernelText.load(KALLSYMS)
    assert text.reason == ""
    names = {r.name for r in text.ranges}
    assert {"out_of_memory", "try_charge_memcg"} <= names
    # Functions, not the distance to some far symbol.
    assert all(0 < r.end - r.start < 64 * 1024 for r in text.ranges)
