"""The hsperfdata parser on files captured from two JDKs, and on hostile
ones: truncated, corrupted, fuzzed. A bad buffer is a reason, never a crash."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oomtrace.agent.runtimes.jvm import perfdata, state

FIXTURES = Path(__file__).parent.parent / "fixtures" / "hsperfdata"
FILES = sorted(FIXTURES.glob("*.hsperfdata"))
MIB = 1 << 20


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_captured_files(path: Path) -> None:
    """Both captured with -Xmx64m, G1, 20 MiB of arrays kept after System.gc()."""
    pd = perfdata.parse(path.read_bytes())
    assert pd.bad_entries == 0
    assert pd.entries > 150
    part = state.perf_part(pd, "before_exit")
    assert part.gc_policy == "GarbageFirst"
    assert part.heap_max_bytes // MIB == 64
    assert [g.name for g in part.generations] == ["young", "old"]
    assert [s.name for s in part.spaces] == ["eden", "s0", "s1", "space"]
    assert 20 * MIB < part.heap_used_bytes < 64 * MIB
    assert part.heap_used_bytes <= part.heap_committed_bytes
    assert part.metaspace.used_bytes > 1 * MIB
    assert part.compressed_class_space.max_bytes == 1 << 30
    assert part.code_bytes > 0
    assert part.threads_live == 6
    assert part.last_gc_cause == "System.gc()"
    assert part.collectors[0].name == "G1 young collection pauses"
    assert part.collectors[1].count == 1  # the one full GC System.gc() asked for
    assert 0 < part.collectors[0].time_ns < 10**10
    assert part.vm_version.split(".")[0] in ("17", "25")


def test_not_hsperfdata() -> None:
    for data, why in (
        (b"", "shorter than the prologue"),
        (b"\0" * 64, "magic"),
        (b"\xca\xfe\xc0\xc0\x05" + b"\0" * 60, "byte order"),
        (b"\xca\xfe\xc0\xc0\x01\x01" + b"\0" * 60, "version 1"),
        (b"\xca\xfe\xc0\xc0\x01\x02\x00\x00" + b"\0" * 60, "accessible"),
        (b"\0" * (perfdata.MAX_FILE_BYTES + 1), "larger"),
    ):
        with pytest.raises(perfdata.PerfDataError, match=why):
            perfdata.parse(data)


def test_truncated_and_corrupt_entries_are_counted() -> None:
    data = bytearray(FILES[0].read_bytes())
    whole = perfdata.parse(bytes(data))
    cut = perfdata.parse(bytes(data[: len(data) // 3]))
    assert 0 < len(cut.longs) < len(whole.longs)
    # An entry whose length runs past the end stops the walk, counted.
    first = struct.unpack_from("<i", data, 24)[0]
    struct.pack_into("<i", data, first, 1 << 30)
    broken = perfdata.parse(bytes(data))
    assert broken.bad_entries == 1
    assert broken.longs == {}


def test_entry_count_is_bounded() -> None:
    data = bytearray(FILES[0].read_bytes())
    struct.pack_into("<i", data, 28, 1 << 30)  # num_entries
    pd = perfdata.parse(bytes(data))
    assert pd.entries <= perfdata.MAX_ENTRIES


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4096))
def test_fuzzed_bytes(data: bytes) -> None:
    _parse_or_reason(b"\xca\xfe\xc0\xc0\x01\x02\x00\x01" + data)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 32767), st.integers(0, 255)), max_size=40))
def test_fuzzed_mutations_of_a_real_file(edits: list[tuple[int, int]]) -> None:
    data = bytearray(FILES[-1].read_bytes())
    for at, value in edits:
        data[at % len(data)] = value
    _parse_or_reason(bytes(data))


def _parse_or_reason(data: bytes) -> None:
    try:
        pd = perfdata.parse(data)
    except perfdata.PerfDataError:
        return
    part = state.perf_part(pd, "before_exit")
    part.SerializeToString()  # every field fits its type
    assert all(len(s) <= perfdata.MAX_STRING for s in pd.strings.values())


def test_find_only_the_victims_file(tmp_path: Path) -> None:
    """Every hsperfdata_<user> directory is looked in; a symlink planted in
    place of the file, or another uid's file, is not read."""
    real = FILES[0].read_bytes()
    (tmp_path / "hsperfdata_app").mkdir()
    (tmp_path / "hsperfdata_app" / "7").write_bytes(real)
    (tmp_path / "hsperfdata_evil").mkdir()
    (tmp_path / "hsperfdata_evil" / "8").symlink_to("/etc/shadow")
    assert state.find(tmp_path, 7, None) == real
    got = state.find(tmp_path, 8, None)
    assert isinstance(got, str)
    assert "cannot be opened" in got
    other = state.find(tmp_path, 7, 12345)
    assert isinstance(other, str)
    assert "not the victim's 12345" in other
    assert "no hsperfdata_*/9" in str(state.find(tmp_path, 9, None))
