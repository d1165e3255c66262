"""Function entry addresses in a Go binary, from its pclntab: present even in
stripped and PIE binaries, which have no symbol table. Uprobes are attached
only at addresses found here (pclntab vouches for them as function entries).

Go 1.18+ layout (runtime/symtab.go, pcHeader): magic, two pad bytes,
minLC, ptrSize, nfunc, nfiles, textStart, funcnameOffset, cuOffset,
filetabOffset, pctabOffset, pclnOffset; the function table at pclnOffset is
nfunc+1 pairs of (entryOff, funcOff) uint32, and each _func starts with
entryOff uint32, nameOff int32. Go 1.27 leaves textStart 0: the .text
section's address stands in."""

from __future__ import annotations

import struct
from pathlib import Path

MAGICS = {0xFFFFFFF1: "1.20+", 0xFFFFFFF0: "1.18-1.19"}
MAX_PCLNTAB = 64 << 20


class SymbolError(Exception):
    """No usable pclntab; the message says why."""


def _sections(data: bytes) -> dict[str, tuple[int, int, int]]:
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


def function_entries(path: str | Path, wanted: set[str]) -> dict[str, int]:
    """Virtual addresses of the wanted functions' entries."""
    with open(path, "rb") as f:
        data = f.read(MAX_PCLNTAB * 4)
    secs = _sections(data)
    for name in (".gopclntab", ".data.rel.ro.gopclntab"):
        if name in secs:
            _addr, off, size = secs[name]
            tab = data[off : off + size]
            break
    else:
        # Stripped of section names: find the header by its magic.
        tab = b""
        for magic in MAGICS:
            i = data.find(struct.pack("<I", magic) + b"\0\0")
            if i >= 0:
                tab = data[i : i + MAX_PCLNTAB]
                break
        if not tab:
            raise SymbolError("no pclntab")
    magic = struct.unpack_from("<I", tab, 0)[0]
    if magic not in MAGICS:
        raise SymbolError(f"pclntab magic {magic:#x} is not Go 1.18+")
    ptr = tab[7]
    if ptr != 8:
        raise SymbolError(f"pointer size {ptr} is not supported")
    nfunc, _nfiles, text_start, funcname_off, _cu, _filetab, _pctab, pcln_off = struct.unpack_from(
        "<QQQQQQQQ", tab, 8
    )
    if not text_start and ".text" in secs:
        text_start = secs[".text"][0]
    if nfunc > 10_000_000 or pcln_off + 8 * (nfunc + 1) > len(tab):
        raise SymbolError("pclntab function table runs past its end")
    found: dict[str, int] = {}
    for i in range(nfunc):
        entry_off, func_off = struct.unpack_from("<II", tab, pcln_off + 8 * i)
        fpos = pcln_off + func_off
        if fpos + 8 > len(tab):
            continue
        _entry, name_off = struct.unpack_from("<Ii", tab, fpos)
        start = funcname_off + name_off
        end = tab.find(b"\0", start, start + 512)
        name = tab[start:end].decode("utf-8", "replace")
        if name in wanted:
            found[name] = text_start + entry_off
            if len(found) == len(wanted):
                break
    return found
