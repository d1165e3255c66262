"""The constants Python needs by name, read from the C side and compared:
bpf/oomtrace.h is the one definition; decode.py and bcc_loader.py mirror what
they must, and this fails when the two drift apart. No root, no compiler:
the header is read as text."""

from __future__ import annotations

import re
from pathlib import Path

from oomtrace.agent.kernel import bcc_loader, decode

BPF = Path(__file__).resolve().parents[2] / "bpf"
HEADER = (BPF / "oomtrace.h").read_text()


def defines(text: str) -> dict[str, int]:
    return {
        m.group(1): int(m.group(2), 0)
        for m in re.finditer(r"^#define (OOMT_\w+) (0x[0-9a-fA-F]+|\d+)\b", text, re.M)
    }


def enum(text: str, name: str) -> dict[str, int]:
    m = re.search(rf"enum {name} \{{(.*?)\}};", text, re.S)
    assert m, f"enum {name} not found"
    body = re.sub(r"/\*.*?\*/", "", m.group(1), flags=re.S)
    return {k: int(v) for k, v in re.findall(r"(\w+)\s*=\s*(\d+)", body)}


def struct_fields(text: str, name: str) -> list[str]:
    m = re.search(rf"struct {name} \{{(.*?)\}};", text, re.S)
    assert m, f"struct {name} not found"
    body = re.sub(r"/\*.*?\*/", "", m.group(1), flags=re.S)
    return re.findall(r"\b(\w+)(?:\[[^\]]*\])?;", body)


def test_array_lengths_match_the_header() -> None:
    d = defines(HEADER)
    assert d["OOMT_MEMCG_DEPTH"] == decode.MEMCG_DEPTH
    assert d["OOMT_KSTACK_DEPTH"] == decode.KSTACK_DEPTH
    assert d["OOMT_CGROUP_NAME_LEN"] == decode.CGROUP_NAME_LEN
    assert d["OOMT_GO_RING"] == decode.GO_RING
    assert d["OOMT_KILLER_SAID_LEN"] == decode.KILLER_SAID_LEN


def test_event_kinds_and_reap_stages_match_the_header() -> None:
    kinds = enum(HEADER, "oomt_kind")
    assert {f"OOMT_{k.name}": int(k) for k in decode.Kind} == kinds
    d = defines(HEADER)
    assert {f"OOMT_REAP_{s.name}": int(s) for s in decode.ReapStage} == {
        k: v for k, v in d.items() if k.startswith("OOMT_REAP_")
    }


def test_flags_match_the_header() -> None:
    d = defines(HEADER)
    python = {name: getattr(decode, name) for name in dir(decode) if name.startswith("F_")}
    assert {f"OOMT_{k}": v for k, v in python.items()} == {
        k: v for k, v in d.items() if k.startswith("OOMT_F_")
    }
    assert (d["OOMT_GO_GC"], d["OOMT_GO_CONTROLLER"]) == (decode.GO_F_GC, decode.GO_F_CONTROLLER)


def test_loss_causes_are_named_in_the_headers_order() -> None:
    lost = enum(HEADER, "oomt_lost")
    count = lost.pop("OOMT_LOST_CAUSES")
    in_order = [
        k.removeprefix("OOMT_LOST_").lower() for k, _ in sorted(lost.items(), key=lambda kv: kv[1])
    ]
    assert list(bcc_loader.LOST_CAUSES) == in_order
    assert count == len(bcc_loader.LOST_CAUSES)


def test_the_go_probes_offsets_are_the_fields_user_space_writes() -> None:
    fields = struct_fields((BPF / "go.c").read_text(), "go_proc")
    offsets = [f.removeprefix("off_") for f in fields if f.startswith("off_")]
    assert offsets == list(bcc_loader.GO_PROC_FIELDS)


def test_the_event_structs_carry_what_the_decoder_reads() -> None:
    """Every field each decode function reads off an event is in its struct."""
    source = Path(decode.__file__).read_text()
    bodies = dict(re.findall(r"^def (\w+)\(.*?\n(.*?)(?=^def |\Z)", source, re.S | re.M))
    for functions, struct in (
        (("decode_kill", "_go_state"), "oomt_kill"),
        (("decode_note",), "oomt_note"),
        (("decode_cgroup_note",), "oomt_cgroup_note"),
    ):
        read = {f for fn in functions for f in re.findall(r"\bev\.(\w+)", bodies[fn])}
        read |= {f for fn in functions for f in re.findall(r'getattr\(ev, "(\w+)"', bodies[fn])}
        fields = set(struct_fields(HEADER, struct))
        assert read, functions
        assert read <= fields, (struct, read - fields)


def test_every_program_the_loader_joins_exists_and_includes_the_common_header() -> None:
    for name in bcc_loader.BPF_SOURCES:
        text = (BPF / name).read_text()
        if name.endswith(".c"):
            assert '#include "common.h"' in text, name
    programs = {p.name for p in BPF.glob("*.c")}
    assert programs == {n for n in bcc_loader.BPF_SOURCES if n.endswith(".c")}


def test_the_heap_profile_events_decode_as_the_header_lays_them_out() -> None:
    """The profile events are decoded from raw bytes (a bucket's is as long
    as its stack), so their struct formats are checked field by field."""
    c_types = {"u32": "I", "s32": "i", "u64": "Q", "s64": "q"}

    def layout(name: str) -> str:
        m = re.search(rf"struct {name} \{{(.*?)\}};", HEADER, re.S)
        assert m, name
        body = re.sub(r"/\*.*?\*/", "", m.group(1), flags=re.S)
        fields = re.findall(r"\b(u32|s32|u64|s64) (\w+)(\[[^\]]*\])?;", body)
        return "<" + "".join(c_types[t] for t, _n, array in fields if not array)

    assert decode._BUCKET.format == layout("oomt_go_bucket")
    assert decode._PROFILE.format == layout("oomt_go_profile")
    d = defines(HEADER)
    assert d["OOMT_GO_STACK_DEPTH"] == decode.GO_STACK_DEPTH
    assert d["OOMT_GO_PROFILE_DUE"] == decode.GO_F_PROFILE_DUE
    why = {"OOMT_PROFILE_AT_KILL", "OOMT_PROFILE_BEFORE"}
    assert {f"OOMT_PROFILE_{s.name}": int(s) for s in decode.ProfileStatus} == {
        k: v for k, v in d.items() if k.startswith("OOMT_PROFILE_") and k not in why
    }
    assert d["OOMT_PROFILE_BEFORE"] == decode.PROFILE_BEFORE


def test_the_heap_profile_layout_fields_are_the_ones_user_space_writes() -> None:
    fields = struct_fields((BPF / "go.c").read_text(), "go_proc")
    assert [f for f in fields if f.startswith(("bucket_", "record_"))] == list(
        bcc_loader.GO_PROFILE_FIELDS
    )
