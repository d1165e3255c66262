"""Where things are in a Go binary, found without a symbol table so that
stripped and PIE binaries work: function entries from pclntab; from there,
decoding the code (capstone), the instruction a uprobe goes on and the
runtime globals the probe reads. Uprobes go only at instruction boundaries
decoded from an entry pclntab vouches for.

Go 1.18+ layout (runtime/symtab.go, pcHeader): magic, two pad bytes,
minLC, ptrSize, nfunc, nfiles, textStart, funcnameOffset, cuOffset,
filetabOffset, pctabOffset, pclnOffset; the function table at pclnOffset is
nfunc+1 pairs of (entryOff, funcOff) uint32, and each _func starts with
entryOff uint32, nameOff int32. Go 1.26+ leaves textStart 0; runtime.text
then comes from the module's moduledata."""

from __future__ import annotations

import functools
import mmap
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

from capstone import CS_ARCH_X86, CS_MODE_64, Cs, CsError
from capstone import x86_const as x86
from capstone.x86 import X86_OP_IMM, X86_OP_MEM, X86_REG_RAX, X86_REG_RCX, X86_REG_RIP

MAGICS = {0xFFFFFFF1: "1.20+", 0xFFFFFFF0: "1.18-1.19"}
# A binary as parsed: its bytes, or the file mapped (go/worker.py).
Binary = bytes | mmap.mmap
MAX_PCLNTAB = 64 << 20
MAX_BINARY = 4 * MAX_PCLNTAB


class SymbolError(Exception):
    """No usable pclntab; the message says why."""


# What a malformed (or hostile) file makes the parsers below raise: offsets
# past the end, counts that do not fit, bytes that are not instructions. The
# binary belongs to whatever process runs on the node, so each becomes a
# SymbolError, a reason on the record, never an agent that crashes at start.
_MALFORMED = (struct.error, ValueError, OverflowError, IndexError, UnicodeError, CsError)

F = TypeVar("F", bound=Callable[..., Any])


def _refuses_malformed(fn: F) -> F:
    @functools.wraps(fn)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except _MALFORMED as exc:
            raise SymbolError(f"malformed binary ({type(exc).__name__}: {exc})") from None

    return cast(F, guarded)


def _sections(data: Binary) -> dict[str, tuple[int, int, int]]:
    """name -> (address, file offset, size) of an ELF64 LE file's sections."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise SymbolError("not a 64-bit little-endian ELF")
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    if shentsize != 64 or shoff + 64 * shnum > len(data) or shstrndx >= shnum:
        raise SymbolError("no usable ELF section table")
    out = {}
    str_off = struct.unpack_from("<Q", data, shoff + 64 * shstrndx + 24)[0]
    for i in range(shnum):
        name_off, _t, _f, addr, offset, size = struct.unpack_from("<IIQQQQ", data, shoff + 64 * i)
        end = data.find(b"\0", str_off + name_off)
        out[data[str_off + name_off : end].decode("ascii", "replace")] = (addr, offset, size)
    return out


def read_binary(path: str | Path) -> bytes:
    """The file's first MAX_BINARY bytes: enough for any real Go binary's
    code and pclntab, and a bound on what a hostile file can cost."""
    with open(path, "rb") as f:
        return f.read(MAX_BINARY)


@dataclass(frozen=True, slots=True)
class PcHeader:
    """A binary's pclntab: where it starts in the file, its bytes, and the
    header's counts and offsets (relative to the table's start)."""

    offset: int
    tab: Binary
    nfunc: int
    text_start: int
    funcname_off: int
    cu_off: int
    filetab_off: int
    pctab_off: int
    pcln_off: int
    func_size: int  # sizeof(runtime._func): 44 from Go 1.20, 40 before


def pclntab(data: Binary) -> PcHeader:
    """The pclntab of a Go 1.18+ binary, found by section name or by magic."""
    secs = _sections(data)
    for name in (".gopclntab", ".data.rel.ro.gopclntab"):
        if name in secs:
            _addr, tab_off, size = secs[name]
            break
    else:
        # An external linker merges it into .data.rel.ro, and sstrip drops
        # section names: find the header by its magic, pad, minLC 1, ptrSize 8.
        for magic in MAGICS:
            tab_off = data.find(struct.pack("<I", magic) + b"\0\0\x01\x08")
            if tab_off >= 0:
                size = MAX_PCLNTAB
                break
        else:
            raise SymbolError("no pclntab")
    tab = data[tab_off : tab_off + size]
    magic = struct.unpack_from("<I", tab, 0)[0]
    if magic not in MAGICS:
        raise SymbolError(f"pclntab magic {magic:#x} is not Go 1.18+")
    ptr = tab[7]
    if ptr != 8:
        raise SymbolError(f"pointer size {ptr} is not supported")
    nfunc, _nfiles, text_start, funcname_off, cu_off, filetab_off, pctab_off, pcln_off = (
        struct.unpack_from("<QQQQQQQQ", tab, 8)
    )
    if nfunc > 10_000_000 or pcln_off + 8 * (nfunc + 1) + 4 > len(tab):
        raise SymbolError("pclntab function table runs past its end")
    if not text_start:
        # Go 1.26+ no longer stores runtime.text in the header.
        first_off = struct.unpack_from("<I", tab, pcln_off)[0]
        end_off = struct.unpack_from("<I", tab, pcln_off + 8 * nfunc)[0]
        _pos, text_start = moduledata(data, tab_off, funcname_off, cu_off, first_off, end_off)
    return PcHeader(
        tab_off,
        tab,
        nfunc,
        text_start,
        funcname_off,
        cu_off,
        filetab_off,
        pctab_off,
        pcln_off,
        44 if magic == 0xFFFFFFF1 else 40,
    )


@_refuses_malformed
def entries_in(data: Binary, wanted: set[str]) -> dict[str, int]:
    """Virtual addresses of the wanted functions' entries."""
    h = pclntab(data)
    tab = h.tab
    found: dict[str, int] = {}
    for i in range(h.nfunc):
        entry_off, func_off = struct.unpack_from("<II", tab, h.pcln_off + 8 * i)
        fpos = h.pcln_off + func_off
        if fpos + 8 > len(tab):
            continue
        _entry, name_off = struct.unpack_from("<Ii", tab, fpos)
        start = h.funcname_off + name_off
        end = tab.find(b"\0", start, start + 512)
        name = tab[start:end].decode("utf-8", "replace")
        if name in wanted:
            found[name] = h.text_start + entry_off
            if len(found) == len(wanted):
                break
    return found


def moduledata(
    data: Binary, tab_off: int, funcname_off: int, cu_off: int, first_off: int, end_off: int
) -> tuple[int, int]:
    """(file offset of the module's moduledata, runtime.text). Its first word points at
    the pclntab header, the next slices at funcnametab and cutab inside it,
    and its minpc and maxpc are runtime.text plus the function table's first
    and end offsets. The .text section's start is no stand-in: an external
    linker (cgo) puts the C runtime's code before Go's. The file holds the
    link-time values even in a PIE (relocations add the load bias)."""
    segments = _segments(data)
    tab_addr = next(
        (va + tab_off - off for _f, off, va, fsz, _m in segments if off <= tab_off < off + fsz),
        None,
    )
    if tab_addr is None:
        raise SymbolError("pclntab is outside the file's segments")
    needle = struct.pack("<Q", tab_addr)
    for flags, off, _vaddr, filesz, _memsz in segments:
        if not flags & PF_W:
            continue  # moduledata is data the runtime writes (firstmoduledata)
        pos = data.find(needle, off, off + filesz)
        while pos >= 0:
            if pos % 8 == 0 and pos + 8 * _MODULEDATA_WORDS <= off + filesz:
                f = struct.unpack_from(f"<{_MODULEDATA_WORDS}Q", data, pos)
                text = f[_MD_TEXT]
                if (
                    f[_MD_FUNCNAMETAB] == tab_addr + funcname_off
                    and f[_MD_CUTAB] == tab_addr + cu_off
                    and f[_MD_MINPC] == text + first_off
                    and f[_MD_MAXPC] == text + end_off
                ):
                    return pos, int(text)
            pos = data.find(needle, pos + 1, off + filesz)
    raise SymbolError("no moduledata points at the pclntab, so runtime.text is unknown")


# Word indexes in runtime.moduledata (the same in Go 1.18 to 1.27): pcHeader,
# then slices (pointer, len, cap) funcnametab, cutab, filetab, pctab,
# pclntable, ftab; findfunctab, minpc, maxpc, text.
_MD_FUNCNAMETAB, _MD_CUTAB, _MD_MINPC, _MD_MAXPC, _MD_TEXT = 1, 4, 20, 21, 22
_MODULEDATA_WORDS = 23


# -- the runtime's globals ------------------------------------------------------------

GC_START = "runtime.gcStart"
START_CYCLE = "runtime.(*gcControllerState).startCycle"
PT_LOAD = 1
PF_W = 2
GC_START_SCAN = 16 << 10  # gcStart is about 2 KiB; its startCycle call comes well within
PROLOGUE_SCAN = 64  # a Go prologue: lea, cmp, jbe, push rbp in about 20 bytes


# A write to eax, ax or al is a write to rax (the same for rcx).
_FULL_REGISTER = {
    **{
        r: X86_REG_RAX
        for r in (X86_REG_RAX, x86.X86_REG_EAX, x86.X86_REG_AX, x86.X86_REG_AL, x86.X86_REG_AH)
    },
    **{
        r: X86_REG_RCX
        for r in (X86_REG_RCX, x86.X86_REG_ECX, x86.X86_REG_CX, x86.X86_REG_CL, x86.X86_REG_CH)
    },
}


@dataclass(frozen=True, slots=True)
class RuntimeGlobals:
    """Link-time addresses of the two runtime variables the GC probe reads."""

    gc_controller: int  # runtime.gcController
    gomaxprocs: int  # runtime.gomaxprocs (int32)


def _segments(data: Binary) -> list[tuple[int, int, int, int, int]]:
    """(flags, file offset, vaddr, file size, memory size) of each PT_LOAD."""
    phoff = struct.unpack_from("<Q", data, 0x20)[0]
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    if phentsize != 56 or phoff + 56 * phnum > len(data):
        raise SymbolError("no usable ELF program headers")
    out = []
    for i in range(phnum):
        p_type, flags, off, vaddr, _paddr, filesz, memsz, _align = struct.unpack_from(
            "<IIQQQQQQ", data, phoff + 56 * i
        )
        if p_type == PT_LOAD:
            out.append((flags, off, vaddr, filesz, memsz))
    return out


@_refuses_malformed
def runtime_globals(data: Binary, entries: dict[str, int]) -> RuntimeGlobals:
    """Where runtime.gcController and runtime.gomaxprocs are, read from the
    code rather than a symbol table, so stripped binaries work too. gcStart
    makes one call `gcController.startCycle(now, int(gomaxprocs), trigger)`;
    with Go's register ABI the compiler loads the receiver with
    `lea rax, [rip+gcController]` and the procs argument with
    `movsxd rcx, dword ptr [rip+gomaxprocs]` just before it. Both must be the
    last writes to their registers before that call, and both addresses must
    land in a writable segment, or there is no answer."""
    if GC_START not in entries or START_CYCLE not in entries:
        raise SymbolError(f"no {GC_START} or {START_CYCLE} in pclntab")
    segments = _segments(data)
    start, target = entries[GC_START], entries[START_CYCLE]
    code = _code_at(data, segments, start, GC_START_SCAN, GC_START)
    md = Cs(CS_ARCH_X86, CS_MODE_64)
    md.detail = True
    last: dict[int, tuple[str, int | None]] = {}  # RAX/RCX -> (mnemonic, rip target)
    for insn in md.disasm(code, start):
        if insn.mnemonic == "call" and insn.operands[0].type == X86_OP_IMM:
            if insn.operands[0].imm == target:
                break
            last.clear()  # a call clobbers every argument register
            continue
        _read, written = insn.regs_access()
        for reg in written:
            full = _FULL_REGISTER.get(reg)
            if full is not None:
                last[full] = (insn.mnemonic, _rip_target(insn))
    else:
        raise SymbolError(f"no call to {START_CYCLE} in {GC_START}")
    ctrl = last.get(X86_REG_RAX)
    procs = last.get(X86_REG_RCX)
    if ctrl is None or ctrl[0] != "lea" or ctrl[1] is None:
        raise SymbolError(f"{GC_START} does not load gcController with a lea before startCycle")
    if procs is None or procs[0] not in ("movsxd", "mov") or procs[1] is None:
        raise SymbolError(f"{GC_START} does not load gomaxprocs from memory before startCycle")
    for name, addr in (("gcController", ctrl[1]), ("gomaxprocs", procs[1])):
        if not any(f & PF_W and va <= addr < va + msz for f, _o, va, _fs, msz in segments):
            raise SymbolError(f"{name} at {addr:#x} is not in a writable segment")
    return RuntimeGlobals(ctrl[1], procs[1])


def _code_at(
    data: Binary, segments: list[tuple[int, int, int, int, int]], addr: int, size: int, what: str
) -> bytes:
    """Up to `size` bytes of the file's contents at virtual address addr."""
    for _flags, off, vaddr, filesz, _memsz in segments:
        if vaddr <= addr < vaddr + filesz:
            pos = off + addr - vaddr
            return data[pos : min(pos + size, off + filesz)]
    raise SymbolError(f"{what} at {addr:#x} is outside the file's segments")


@_refuses_malformed
def probe_address(data: Binary, entry: int, what: str) -> int:
    """Where to put a uprobe for the function at `entry`: its frame's
    `push rbp`, right after the stack-growth check, when the prologue has
    one; else the entry itself. The kernel emulates a push, but single-steps
    the entry's compare out of line, and on virtual machines that step can
    cost more than the rest of the probe (about 90 µs against 7 µs a hit
    here). After the check, the push runs once per call even when the stack
    grows (morestack restarts the function from its entry). The address is
    an instruction boundary: decoded from the entry pclntab gives."""
    code = _code_at(data, _segments(data), entry, PROLOGUE_SCAN, what)
    md = Cs(CS_ARCH_X86, CS_MODE_64)
    for i, (address, _size, mnemonic, op_str) in enumerate(md.disasm_lite(code, entry)):
        if mnemonic == "push" and op_str == "rbp":
            return int(address)
        if i >= 4 or mnemonic in ("call", "jmp", "ret"):
            break  # past the prologue: no frame push to use
    return entry


def _rip_target(insn: Any) -> int | None:
    """The address a [rip+disp] memory operand names, if the instruction has one."""
    for op in insn.operands:
        if op.type == X86_OP_MEM and op.mem.base == X86_REG_RIP and op.mem.index == 0:
            return int(insn.address + insn.size + op.mem.disp)
    return None


@_refuses_malformed
def elf_entry(data: Binary) -> tuple[bool, int]:
    """(position-independent, e_entry) of an ELF64 executable."""
    e_type = struct.unpack_from("<H", data, 0x10)[0]
    if e_type not in (2, 3):  # ET_EXEC, ET_DYN
        raise SymbolError(f"ELF type {e_type} is not an executable")
    return e_type == 3, struct.unpack_from("<Q", data, 0x18)[0]


# -- the heap profile's globals ------------------------------------------------------

MPROF_FLUSH = "runtime.mProf_FlushLocked"
SCHEDINIT = "runtime.schedinit"
MPROF_FLUSH_SCAN = 256  # the head is loaded within the first few instructions
SCHEDINIT_SCAN = 16 << 10


@dataclass(frozen=True, slots=True)
class ProfileGlobals:
    """Link-time addresses the heap-profile walk needs, and whether the
    linker turned memory profiling off in this binary."""

    mbuckets: int  # runtime.mbuckets: head of the memory-profile buckets (allnext list)
    mem_profile_rate: int  # runtime.MemProfileRate (int)
    disabled: bool  # runtime.disableMemoryProfiling was set by the linker


@_refuses_malformed
def profile_globals(data: Binary, entries: dict[str, int]) -> ProfileGlobals:
    """Where the heap profile is, read from the code as runtime_globals is.
    mProf_FlushLocked walks every memory-profile bucket from
    `head := mbuckets.Load()`: its first load from memory through rip is the
    head. schedinit runs `if disableMemoryProfiling { MemProfileRate = 0 }`:
    a byte compared with 0, a jump, and a quadword store of 0; the one such
    sequence names both. The linker sets disableMemoryProfiling in the file's
    data when nothing references runtime.MemProfile (a .bss address: it is
    not set)."""
    for name in (MPROF_FLUSH, SCHEDINIT):
        if name not in entries:
            raise SymbolError(f"no {name} in pclntab")
    segments = _segments(data)
    md = Cs(CS_ARCH_X86, CS_MODE_64)
    md.detail = True
    start = entries[MPROF_FLUSH]
    head = None
    for insn in md.disasm(_code_at(data, segments, start, MPROF_FLUSH_SCAN, MPROF_FLUSH), start):
        if insn.mnemonic in ("call", "ret"):
            break
        target = _rip_target(insn)
        if target is not None and insn.mnemonic == "mov" and insn.operands[0].size == 8:
            head = target
            break
    if head is None:
        raise SymbolError(f"{MPROF_FLUSH} does not load the bucket list's head through rip")

    start = entries[SCHEDINIT]
    insns = list(md.disasm(_code_at(data, segments, start, SCHEDINIT_SCAN, SCHEDINIT), start))
    found = []
    for a, b, c in zip(insns, insns[1:], insns[2:], strict=False):
        if (
            a.mnemonic == "cmp"
            and a.operands[0].size == 1
            and a.operands[1].type == X86_OP_IMM
            and a.operands[1].imm == 0
            and b.mnemonic in ("je", "jne")
            and c.mnemonic == "mov"
            and c.operands[0].size == 8
            and c.operands[1].type == X86_OP_IMM
            and c.operands[1].imm == 0
        ):
            flag, rate = _rip_target(a), _rip_target(c)
            if flag is not None and rate is not None:
                found.append((flag, rate))
    if len(found) != 1:
        raise SymbolError(
            f"{SCHEDINIT} has {len(found)} places that could turn memory profiling off, not one"
        )
    flag, rate = found[0]
    for name, addr in (
        ("mbuckets", head),
        ("MemProfileRate", rate),
        ("disableMemoryProfiling", flag),
    ):
        if not any(f & PF_W and va <= addr < va + msz for f, _o, va, _fs, msz in segments):
            raise SymbolError(f"{name} at {addr:#x} is not in a writable segment")
    return ProfileGlobals(head, rate, _byte_at(data, segments, flag) != 0)


def _byte_at(data: Binary, segments: list[tuple[int, int, int, int, int]], addr: int) -> int:
    """A data byte's value as the file holds it: 0 past a segment's file
    size (.bss), which the loader zeroes."""
    for _flags, off, vaddr, filesz, memsz in segments:
        if vaddr <= addr < vaddr + memsz:
            return int(data[off + addr - vaddr]) if addr < vaddr + filesz else 0
    raise SymbolError(f"{addr:#x} is outside the file's segments")
