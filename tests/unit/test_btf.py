"""BTF reading and offset resolution, on synthetic kernels of two
generations and, where the host has one, the running kernel's BTF."""

from __future__ import annotations

from pathlib import Path

import pytest

from oomtrace.agent.errors import BtfError
from oomtrace.agent.kernel.btf import VMLINUX_BTF, Btf
from oomtrace.agent.kernel.layout import resolve
from tests.unit.btf_builder import BtfBuilder
from tests.unit.fake_kernels import kernel_btf


def test_field_offsets_reach_into_anonymous_structs_and_nested_members() -> None:
    btf = Btf(kernel_btf(new=True))
    assert btf.field("mm_struct", "total_vm").offset == 360
    assert btf.field("mm_struct", "exe_file").offset == 1312
    assert btf.field("file", "f_path.dentry").offset == 64 + 8
    assert btf.field("dentry", "d_name.name").offset == 32 + 8
    # memsw lives in an anonymous union inside mem_cgroup.
    assert btf.field("mem_cgroup", "memsw").offset == 448


def test_renamed_fields_resolve_through_alternatives() -> None:
    new, old = Btf(kernel_btf(new=True)), Btf(kernel_btf(new=False))
    assert new.field("kernfs_node", "__parent|parent").offset == 8
    assert old.field("kernfs_node", "__parent|parent").offset == 8
    with pytest.raises(BtfError, match="no field nope"):
        new.field("kernfs_node", "nope")


def test_forward_declarations_do_not_hide_the_definition() -> None:
    # kernfs_node and cgroup_subsys_state are declared before they are defined.
    btf = Btf(kernel_btf(new=True))
    assert btf.field("kernfs_node", "id").offset == 96
    assert btf.field("cgroup_subsys_state", "parent").offset == 136


def test_enum_values_and_func_proto_params() -> None:
    btf = Btf(kernel_btf(new=True))
    assert btf.enum_value("memory_cgrp_id", "cgroup_subsys_id") == 4
    assert btf.enum_value("MM_SHMEMPAGES") == 3
    params = [btf.type_name(t) for t in btf.func_proto_params("btf_trace_mark_victim")]
    assert params == ["void *", "struct task_struct *", "uid_t"]


def test_layout_of_a_new_kernel() -> None:
    layout = resolve(Btf(kernel_btf(new=True)))
    d = layout.defines
    assert (d["OFF_TASK_TGID"], d["OFF_TASK_PID"]) == (1268, 1264)
    assert d["OFF_MM_RSS_STAT"] == 960
    assert (d["RSS_STAT_STRIDE"], d["RSS_STAT_COUNT_OFF"]) == (40, 8)
    assert d["MEMORY_CGRP_ID"] == 4
    assert d["OFF_MEMCG_MEMSW"] == 448
    assert d["OFF_PAGE_COUNTER_MAX"] == 160
    assert layout.rss_stat_shape == "percpu_counter"
    assert layout.mark_victim_has_task
    assert layout.has_ringbuf
    assert layout.oom_control
    assert "-DMARK_VICTIM_TASK=1" in layout.cflags()
    assert "-DOFF_TASK_TGID=1268" in layout.cflags()


def test_layout_of_an_older_kernel() -> None:
    layout = resolve(Btf(kernel_btf(new=False)))
    d = layout.defines
    assert (d["OFF_TASK_TGID"], d["OFF_MM_RSS_STAT"]) == (1404, 700)
    assert (d["RSS_STAT_STRIDE"], d["RSS_STAT_COUNT_OFF"]) == (8, 0)
    assert layout.rss_stat_shape == "atomic_long"
    assert not layout.mark_victim_has_task
    assert not layout.has_ringbuf
    assert "-DMARK_VICTIM_TASK=1" not in layout.cflags()
    assert any("only the victim's pid" in n for n in layout.notes)


def test_missing_struct_is_named_in_the_error() -> None:
    b = BtfBuilder()
    b.struct("task_struct", 8, [("pid", b.int_("int", 4), 0)])
    with pytest.raises(BtfError, match="no field tgid"):
        resolve(Btf(b.build()))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "too short"),
        (b"\x00" * 32, "bad BTF magic"),
        (kernel_btf(new=True)[:-100], "run past the end"),
    ],
)
def test_corrupt_btf_is_rejected_with_a_reason(data: bytes, message: str) -> None:
    with pytest.raises(BtfError, match=message):
        Btf(data)


def test_missing_btf_file_says_what_the_kernel_lacks(tmp_path: Path) -> None:
    with pytest.raises(BtfError, match="CONFIG_DEBUG_INFO_BTF"):
        Btf.load(tmp_path / "vmlinux")


@pytest.mark.skipif(not VMLINUX_BTF.exists(), reason="this host has no /sys/kernel/btf/vmlinux")
def test_running_kernel_resolves_completely() -> None:
    layout = resolve(Btf.load())
    # task_struct.tgid follows pid on every kernel oomtrace supports.
    assert layout.defines["OFF_TASK_TGID"] == layout.defines["OFF_TASK_PID"] + 4
    assert layout.defines["MEMORY_CGRP_ID"] >= 0
