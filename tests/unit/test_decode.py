"""Kernel events to kernel records: units, names, flags, bad input."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from oomtrace.agent.errors import DecodeError
from oomtrace.agent.kernel import decode
from oomtrace.agent.kernel.oom_caller import KernelText, OomPath, TextRange
from tests.unit.fixtures import kernel_lines, load, raw_event


def test_real_kill_decodes_to_the_kernels_figures() -> None:
    data = load()
    kernel = kernel_lines(data)
    for fields in data["kills"]:
        kill = decode.decode_kill(raw_event(fields))
        k = kernel[kill.victim_tgid]
        assert kill.total_vm_bytes == int(k["total_vm"]) * 1024
        assert kill.anon_rss_bytes == int(k["anon"]) * 1024
        assert kill.file_rss_bytes == int(k["file"]) * 1024
        assert kill.shmem_rss_bytes == int(k["shmem"]) * 1024
        assert kill.pgtables_bytes == int(k["pgtables"]) * 1024
        assert kill.oom_score_adj == int(k["adj"])
        assert kill.victim_comm == "python3"
        assert [m.name for m in kill.memcgs][:2] == ["app", "oomtrace-fix"]
        assert kill.memcgs[1].limit_bytes == 48 * 1024 * 1024
        assert kill.memcgs[0].limit_bytes is None  # no limit of its own
        assert kill.memcgs[-1].limit_bytes is None  # the root
        assert not kill.depth_cut


def test_cmdline_only_when_the_victim_was_the_trigger() -> None:
    own, other = (decode.decode_kill(raw_event(f)) for f in load()["kills"])
    assert own.trigger_tgid == own.victim_tgid
    assert own.cmdline == "/usr/bin/python3 -c a=[bytearray(1<<20) for _ in range(100)]"
    assert other.trigger_tgid != other.victim_tgid
    assert other.cmdline is None


def test_exit_notes_decode() -> None:
    notes = [decode.decode_note(raw_event(n)) for n in load()["notes"]]
    assert [n.kind for n in notes] == [decode.Kind.EXIT, decode.Kind.EXIT]
    assert notes[0].tgid == 4128


def test_wrong_kind_and_impossible_depth_are_decode_errors() -> None:
    fields = dict(load()["kills"][0])
    with pytest.raises(DecodeError, match="expected a kill event"):
        decode.decode_kill(raw_event({**fields, "kind": 2}))
    with pytest.raises(DecodeError, match="memcg_depth 9"):
        decode.decode_kill(raw_event({**fields, "memcg_depth": 9}))
    with pytest.raises(DecodeError, match="unknown note kind 7"):
        decode.decode_note(SimpleNamespace(kind=7, what=0, boot_ns=0, tgid=1, tid=1))


def test_oom_control_is_decoded_when_the_hook_ran() -> None:
    fields = {
        **load()["kills"][0],
        "flags": decode.F_OOM_CONTROL,
        "oc_constraint": 3,
        "oc_totalpages": 12288,
        "oc_chosen_points": 12000,
        "oc_memcg_id": 5051,
    }
    kill = decode.decode_kill(raw_event(fields))
    assert kill.oom_control is not None
    assert kill.oom_control.constraint is decode.OcConstraint.MEMCG
    assert kill.oom_control.memcg_id == 5051
    with pytest.raises(DecodeError, match="unknown oom constraint"):
        decode.decode_kill(raw_event({**fields, "oc_constraint": 9}))


def test_cmdline_length_beyond_the_buffer_is_clamped() -> None:
    fields = {**load()["kills"][0], "cmdline_len": 10_000}
    kill = decode.decode_kill(raw_event(fields))
    assert kill.cmdline is not None
    assert kill.cmdline.startswith("/usr/bin/python3")


def test_kernel_stack_is_kept_and_placed_by_the_kernel_text() -> None:
    text = KernelText(
        (
            TextRange("out_of_memory", 0x1000, 0x1500),
            TextRange("mem_cgroup_out_of_memory", 0x2000, 0x2100),
        )
    )
    stack = [0x900, 0x1214, 0x20C0, 0x3000] + [0] * (decode.KSTACK_DEPTH - 4)
    fields = {**load()["kills"][0], "kstack_len": 4, "kstack": stack}
    kill = decode.decode_kill(raw_event(fields), text)
    assert kill.kernel_stack == (0x900, 0x1214, 0x20C0, 0x3000)
    assert kill.oom_path is OomPath.MEMCG
    # Without the kernel's text, or with a length past the buffer.
    assert decode.decode_kill(raw_event(fields)).oom_path is OomPath.UNKNOWN
    long = decode.decode_kill(raw_event({**fields, "kstack_len": 10_000}), text)
    assert len(long.kernel_stack) == decode.KSTACK_DEPTH
