"""Where the Go probe reads: function entries from pclntab, the runtime's
globals from gcStart's code, field offsets from the generated layouts. Real
binaries of two Go versions in three builds, checked against the symbol table
and DWARF; synthetic code for what must be refused."""

from __future__ import annotations

import importlib.util
import struct
import subprocess
from pathlib import Path

import pytest

from oomtrace.agent.runtimes.go.layouts import GC_CONTROLLER
from oomtrace.agent.runtimes.go.symbols import (
    GC_START,
    START_CYCLE,
    SymbolError,
    elf_entry,
    entries_in,
    probe_address,
    read_binary,
    runtime_globals,
)
from tests.integration.containers import GO_TOOLCHAINS, GO_VARIANT_IDS, GO_VARIANTS, oomgo_or_skip

REPO = Path(__file__).resolve().parents[2]
GC_DONE = "runtime.gcMarkTermination"
WANTED = {GC_DONE, GC_START, START_CYCLE}


def symbols(binary: Path) -> dict[str, int]:
    out = subprocess.run(["nm", str(binary)], capture_output=True, text=True, check=True).stdout
    return {f[2]: int(f[0], 16) for f in (line.split() for line in out.splitlines()) if len(f) == 3}


@pytest.fixture(scope="module", params=GO_VARIANTS, ids=GO_VARIANT_IDS)
def binary(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, str, Path]:
    toolchain, build = request.param
    return toolchain, build, oomgo_or_skip(tmp_path_factory.mktemp("go"), toolchain, build)


def test_entries_and_globals_match_the_symbol_table(binary: tuple[str, str, Path]) -> None:
    _toolchain, build, path = binary
    data = read_binary(path)
    entries = entries_in(data, WANTED)
    assert set(entries) == WANTED
    # The probe goes on the frame's push rbp, a few bytes into the prologue.
    probe = probe_address(data, entries[GC_DONE], GC_DONE)
    assert 0 < probe - entries[GC_DONE] <= 32
    assert byte_at(data, probe) == 0x55  # push rbp
    found = runtime_globals(data, entries)
    pie, entry = elf_entry(data)
    assert pie == (build == "pie")
    assert entry > 0
    if build == "stripped":
        assert symbols_absent(path)
        return  # nothing to compare with; the privileged Go tests read through them
    syms = symbols(path)
    for name, addr in entries.items():
        assert syms[name] == addr, name
    assert found.gc_controller == syms["runtime.gcController"]
    assert found.gomaxprocs == syms["runtime.gomaxprocs"]


def byte_at(data: bytes, vaddr: int) -> int:
    """The file's byte at a virtual address (the first PT_LOAD holding it)."""
    phoff = struct.unpack_from("<Q", data, 0x20)[0]
    for i in range(struct.unpack_from("<H", data, 0x38)[0]):
        p_type, _f, off, va, _pa, filesz = struct.unpack_from("<IIQQQQ", data, phoff + 56 * i)
        if p_type == 1 and va <= vaddr < va + filesz:
            return int(data[off + vaddr - va])
    raise AssertionError(f"{vaddr:#x} is not in the file")


def symbols_absent(path: Path) -> bool:
    out = subprocess.run(["nm", str(path)], capture_output=True, text=True)
    return "no symbols" in out.stderr


def gen_layouts() -> object:
    spec = importlib.util.spec_from_file_location(
        "gen_go_layouts", REPO / "tools/gen-go-layouts.py"
    )
    assert spec is not None
    assert spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("toolchain", list(GO_TOOLCHAINS))
def test_generated_layouts_match_each_versions_dwarf(toolchain: str, tmp_path: Path) -> None:
    """The checked-in table says what the DWARF of a binary built now says."""
    path = oomgo_or_skip(tmp_path, toolchain)
    version = subprocess.run(
        [str(GO_TOOLCHAINS[toolchain]), "version"], capture_output=True, text=True, check=True
    ).stdout.split()[2]
    major, minor = (int(x) for x in version.removeprefix("go").split(".")[:2])
    offsets = gen_layouts().struct_offsets(path)  # type: ignore[attr-defined]
    assert offsets == GC_CONTROLLER[(major, minor)]


# -- synthetic code: what must be refused ------------------------------------------

TEXT, DATA = 0x401000, 0x500000
START, CYCLE = TEXT, TEXT + 0x800


def elf(code: bytes) -> bytes:
    """An ELF64 executable: code at TEXT (R-X), a writable NOBITS page at DATA."""
    header = bytearray(64)
    header[:7] = b"\x7fELF\x02\x01\x01"
    struct.pack_into("<HHIQQQIHHHHHH", header, 16, 2, 62, 1, START, 64, 0, 0, 64, 56, 2, 0, 0, 0)
    text = struct.pack("<IIQQQQQQ", 1, 5, 0x1000, TEXT, TEXT, len(code), len(code), 0x1000)
    data = struct.pack("<IIQQQQQQ", 1, 6, 0x2000, DATA, DATA, 0, 0x1000, 0x1000)
    out = bytes(header) + text + data
    return out.ljust(0x1000, b"\0") + code


def rip(insn_at: int, size: int, target: int) -> bytes:
    return struct.pack("<i", target - (insn_at + size))


def gc_start(lea_target: int = DATA + 0x100, clobber: bytes = b"") -> bytes:
    lea = b"\x48\x8d\x05" + rip(START, 7, lea_target)  # lea rax, [rip+X]
    movsxd = b"\x48\x63\x0d" + rip(START + 7, 7, DATA + 0x40)  # movsxd rcx, [rip+Y]
    at = START + 14 + len(clobber)
    call = b"\xe8" + rip(at, 5, CYCLE)
    return lea + movsxd + clobber + call


ENTRIES = {GC_START: START, START_CYCLE: CYCLE}


def test_synthetic_gc_start_gives_both_globals() -> None:
    found = runtime_globals(elf(gc_start()), ENTRIES)
    assert (found.gc_controller, found.gomaxprocs) == (DATA + 0x100, DATA + 0x40)


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (gc_start(lea_target=TEXT + 0x10), "not in a writable segment"),
        (gc_start(clobber=b"\xb8\x01\x00\x00\x00"), "does not load gcController"),  # mov eax, 1
        (b"\x90" * 64, "no call to"),
    ],
)
def test_code_that_does_not_vouch_is_refused(code: bytes, reason: str) -> None:
    with pytest.raises(SymbolError, match=reason):
        runtime_globals(elf(code), ENTRIES)


def test_go_1_26_binary_without_its_moduledata_is_refused(tmp_path: Path) -> None:
    """Go 1.26+ keeps runtime.text only in moduledata; linked by gcc, .text
    starts with C code, so without moduledata no entry can be vouched for."""
    path = oomgo_or_skip(tmp_path, "newest", "cgo")
    data = bytearray(read_binary(path))
    syms = symbols(path)
    tab = syms["runtime.pclntab"]
    assert entries_in(bytes(data), WANTED)[GC_DONE] == syms[GC_DONE]
    # Every word in the file that points at the pclntab header: moduledata's
    # first word among them.
    needle = struct.pack("<Q", tab)
    pos = data.find(needle)
    while pos >= 0:
        data[pos : pos + 8] = b"\0" * 8
        pos = data.find(needle, pos + 8)
    with pytest.raises(SymbolError, match="no moduledata"):
        entries_in(bytes(data), WANTED)


def test_functions_outside_the_file_are_refused() -> None:
    with pytest.raises(SymbolError, match="outside the file's segments"):
        runtime_globals(elf(gc_start()), {GC_START: 0x900000, START_CYCLE: CYCLE})
    with pytest.raises(SymbolError, match=r"no runtime\.gcStart"):
        runtime_globals(elf(gc_start()), {START_CYCLE: CYCLE})


def test_probe_goes_on_the_frame_push_after_the_stack_check() -> None:
    prologue = (
        b"\x4c\x8d\xa4\x24\x40\xfe\xff\xff"  # lea r12, [rsp-0x1c0]
        b"\x4d\x3b\x66\x10"  # cmp r12, [r14+0x10]
        b"\x0f\x86\x00\x01\x00\x00"  # jbe morestack
        b"\x55"  # push rbp
        b"\x48\x89\xe5"  # mov rbp, rsp
    )
    assert probe_address(elf(prologue), START, "f") == START + 18


def test_probe_stays_on_the_entry_without_a_frame_push() -> None:
    leaf = b"\x48\x8b\x44\x24\x08" + b"\xc3" + b"\x55"  # mov rax, [rsp+8]; ret; (next fn)
    assert probe_address(elf(leaf), START, "f") == START
