"""The heap profile's parts that need no root: where the profile is in each
Go build (read from the code, compared with the symbol table where there is
one), PCs to frames (compared with the toolchain's own addr2line), the
layouts generated from DWARF, and the pprof file built from buckets."""

from __future__ import annotations

import gzip
import random
import subprocess
from pathlib import Path
from typing import Any

import pytest

from oomtrace.agent.kernel.decode import Counts, GoBucket, GoProfileEnd, ProfileStatus
from oomtrace.agent.runtimes.go.frames import Symbolizer
from oomtrace.agent.runtimes.go.heap import SiteTotals, build, growth, scale
from oomtrace.agent.runtimes.go.layouts import HEAP_PROFILE
from oomtrace.agent.runtimes.go.settings import version_tuple
from oomtrace.agent.runtimes.go.symbols import (
    MPROF_FLUSH,
    SCHEDINIT,
    entries_in,
    profile_globals,
    read_binary,
)
from oomtrace.v1 import pprof_pb2
from tests.integration.containers import (
    GO_TOOLCHAINS,
    GO_VARIANT_IDS,
    GO_VARIANTS,
    LEAKGO_SRC,
    oomgo_or_skip,
)
from tests.unit.test_gosymbols import gen_layouts, symbols

WANTED = {MPROF_FLUSH, SCHEDINIT}


def go_version(toolchain: str) -> tuple[int, int]:
    out = subprocess.run(
        [str(GO_TOOLCHAINS[toolchain]), "version"], capture_output=True, text=True, check=True
    ).stdout.split()[2]
    return version_tuple(out)


@pytest.fixture(scope="module", params=GO_VARIANTS, ids=GO_VARIANT_IDS)
def leakgo(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, str, Path]:
    toolchain, build_kind = request.param
    path = oomgo_or_skip(tmp_path_factory.mktemp("go"), toolchain, build_kind, LEAKGO_SRC)
    return toolchain, build_kind, path


def test_the_profile_is_found_in_the_code_of_every_build(leakgo: tuple[str, str, Path]) -> None:
    _toolchain, build_kind, path = leakgo
    data = read_binary(path)
    found = profile_globals(data, entries_in(data, WANTED))
    assert not found.disabled  # leakgo references runtime/pprof
    if build_kind == "stripped":
        return  # no symbol table to compare with: the privileged tests walk it
    syms = symbols(path)
    assert found.mbuckets == syms["runtime.mbuckets"]
    assert found.mem_profile_rate == syms["runtime.MemProfileRate"]


@pytest.mark.parametrize("toolchain", ["newest", "1.21"])
def test_a_binary_that_never_profiles_memory_is_known_as_such(
    toolchain: str, tmp_path: Path
) -> None:
    """oomgo references nothing that reads the profile: its linker set
    runtime.disableMemoryProfiling."""
    path = oomgo_or_skip(tmp_path, toolchain)
    data = read_binary(path)
    assert profile_globals(data, entries_in(data, WANTED)).disabled


@pytest.mark.parametrize("toolchain", list(GO_TOOLCHAINS))
def test_the_heap_profile_layouts_match_each_versions_dwarf(toolchain: str, tmp_path: Path) -> None:
    path = oomgo_or_skip(tmp_path, toolchain)
    layout = gen_layouts().profile_layout(path)  # type: ignore[attr-defined]
    assert layout == HEAP_PROFILE[go_version(toolchain)]


@pytest.mark.parametrize("build_kind", ["normal", "pie", "cgo"])
@pytest.mark.parametrize("toolchain", ["newest", "1.21"])
def test_frames_agree_with_the_toolchains_addr2line(
    toolchain: str, build_kind: str, tmp_path: Path
) -> None:
    """300 PCs across the Go code: the same file and line as `go tool
    addr2line`, and the same function where the PC is not in inlined code
    (addr2line names the physical function; a profile wants the inlined one,
    as runtime.CallersFrames gives)."""
    path = oomgo_or_skip(tmp_path, toolchain, build_kind, LEAKGO_SRC)
    sym = Symbolizer(read_binary(path), HEAP_PROFILE[go_version(toolchain)]["moduledata_gofunc"])
    rng = random.Random(17)
    lo = sym.h.text_start + sym.entry_offs[0]
    hi = sym.h.text_start + sym.entry_offs[-1]
    pcs = [rng.randrange(lo, hi) for _ in range(300)]
    out = subprocess.run(
        [str(GO_TOOLCHAINS[toolchain]), "tool", "addr2line", str(path)],
        input="\n".join(hex(pc - 1) for pc in pcs),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    compared = inlined = 0
    for i, pc in enumerate(pcs):
        frame = sym.frame(pc)
        assert frame is not None
        function, where = out[2 * i], out[2 * i + 1]
        if where.startswith(":") or where.endswith(":-1"):  # padding, markers: no line
            assert frame.line == 0
            continue
        assert where == f"{frame.file}:{frame.line}", (hex(pc), frame, where)
        if frame.inlined:
            inlined += 1
        else:
            assert frame.function == function, (hex(pc), frame, function)
        compared += 1
    assert compared > 200
    assert inlined > 10


def test_samples_are_scaled_as_runtime_pprof_scales_them() -> None:
    assert scale(0, 0, 512 << 10) == (0, 0)
    assert scale(10, 320 << 10, 1) == (10, 320 << 10)  # every allocation sampled
    # 32 KiB objects at one sample per 512 KiB: each sample stands for ~16.5.
    objects, size = scale(10, 320 << 10, 512 << 10)
    assert 160 < objects < 170
    assert size == pytest.approx(objects * (32 << 10), rel=0.01)


def test_the_pprof_file_folds_inlined_frames_and_hides_the_runtime() -> None:
    """Frames as the symboliser gives them: an allocation in runtime.mallocgc
    under touch (inlined into leak) under main; the runtime frame is hidden,
    touch and leak share one location, main has its own."""
    frames: dict[int, list[Any] | None] = {
        0x1000: ["runtime.mallocgc", "malloc.go", 900, 890, 0x900, False],
        0x2000: ["main.touch", "main.go", 10, 9, 0x1F00, True],
        0x2010: ["main.leak", "main.go", 20, 19, 0x1F00, False],
        0x3000: ["main.main", "main.go", 30, 29, 0x2F00, False],
    }
    bias = 0x400000
    # Since the last GC: 3 more allocated, 1 of the earlier ones swept.
    pending = Counts(3, 1, 3 * 32768, 32768)
    bucket = GoBucket(
        1, 5, 32768, 4, 1, 4 * 32768, 32768, pending, 4, tuple(pc + bias for pc in sorted(frames))
    )
    end = GoProfileEnd(1, 5, 6, 7, 32768, bias + 0x10, ProfileStatus.OK, 1, False, 0, 0)
    hp, sites = build([bucket], end, frames, bias, "prog", 1_700_000_000 * 10**9)
    p = pprof_pb2.Profile.FromString(gzip.decompress(hp.pprof))
    (sample,) = p.sample
    names = {f.id: p.string_table[f.name] for f in p.function}
    locs = {loc.id: [names[line.function_id] for line in loc.line] for loc in p.location}
    assert [locs[i] for i in sample.location_id] == [["main.touch", "main.leak"], ["main.main"]]
    assert p.period == 32768
    assert p.string_table[0] == ""
    alloc_objects, alloc_space, inuse_objects, inuse_space = sample.value
    assert (inuse_objects, inuse_space) == scale(3, 3 * 32768, 32768)
    assert (alloc_objects, alloc_space) == scale(4, 4 * 32768, 32768)
    # The pprof file is what runtime/pprof would write: the published cycle
    # only; the record adds what was not published yet.
    since_objects, since_space = scale(2, 2 * 32768, 32768)
    assert hp.since_gc_bytes == since_space
    (site,) = hp.top
    assert (site.function, site.line, site.inuse_bytes, site.since_gc_bytes) == (
        "main.touch",
        10,
        inuse_space,
        since_space,
    )
    assert sites == {
        ("main.touch", "main.go", 10): SiteTotals(
            inuse_space,
            inuse_objects,
            alloc_space,
            since_space,
            since_objects,
            scale(3, 3 * 32768, 32768)[1],
        )
    }


def test_growth_is_what_each_site_gained_since_the_profile_before() -> None:
    """Each side counts what its last GC had not published, so two walks
    with no GC between them still show what was allocated in between."""
    before = {("a", "f.go", 1): SiteTotals(100, 1, 100), ("b", "f.go", 2): SiteTotals(50, 1, 50)}
    at_kill = {
        ("a", "f.go", 1): SiteTotals(100, 1, 100, 20, 1, since_gc_alloc_bytes=20),
        # b: 600 allocated since its last GC, 100 of its earlier bytes swept.
        ("b", "f.go", 2): SiteTotals(400, 4, 400, 500, 5, since_gc_alloc_bytes=600),
        ("c", "g", 3): SiteTotals(0, 0, 0, 7, 1, since_gc_alloc_bytes=7),
        ("d", "g", 4): SiteTotals(0, 0, 0, -3, -1),
    }
    grew = growth(at_kill, before)
    # In use: what was allocated less what was freed; allocated: the
    # allocations alone, published or not.
    assert [(s.function, s.inuse_bytes, s.inuse_objects, s.alloc_bytes) for s in grew] == [
        ("b", 850, 8, 950),
        ("a", 20, 1, 20),
        ("c", 7, 1, 7),
    ]


def test_a_negative_count_scales_as_its_opposite() -> None:
    """More swept than allocated since the last GC: the estimate is negative,
    by the same factor."""
    assert scale(-3, -3 * 4096, 512 * 1024) == tuple(-x for x in scale(3, 3 * 4096, 512 * 1024))
