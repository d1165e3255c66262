"""Program counters to source frames, from a Go binary's own pclntab: what
`runtime.CallersFrames` does inside the process, done from outside it for a
process that is gone. Works on stripped and PIE binaries (pclntab is never
stripped), and runs in the parser process (go/worker.py), as every parse of
a binary a node's process hands us does.

The heap profile's stacks hold the PCs `runtime.callers` gives: return
addresses, one per frame, inlined frames included (each at the PC of its
inline mark, plus one). So each PC is looked up at PC-1 and gives one frame,
the innermost at that instruction:
  - the function containing it: the function table (pairs of entry offset,
    _func offset) searched by entry;
  - file and line: the _func's pcfile and pcln tables, run-length encoded
    (value delta, PC delta) pairs, evaluated at the PC;
  - when the PC lies in inlined code, the inline tree (funcdata 3) entry the
    pcdata 2 table gives names the inlined function instead; the frame is
    marked inlined, so the caller can fold it into its physical frame.
Layout: runtime/symtab.go and runtime/runtime2.go (_func, inlinedCall),
Go 1.20+; funcdata offsets count from moduledata.gofunc, whose place in
moduledata is generated per version (go/layouts.py)."""

from __future__ import annotations

import bisect
import struct
from dataclasses import dataclass

from oomtrace.agent.runtimes.go.symbols import (
    Binary,
    SymbolError,
    _code_at,
    _refuses_malformed,
    _segments,
    moduledata,
    pclntab,
)

PCDATA_INL_TREE_INDEX = 2
FUNCDATA_INL_TREE = 3
INLINED_CALL_SIZE = 16  # funcID u8, pad [3], nameOff int32, parentPc int32, startLine int32
NO_FUNCDATA = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class Frame:
    function: str
    file: str
    line: int
    start_line: int  # the function's `func` line
    entry: int  # link-time entry of the physical function holding the PC
    inlined: bool  # the PC is in code inlined into that function


class Symbolizer:
    """One binary's pclntab, read once, for many PCs."""

    @_refuses_malformed
    def __init__(self, data: Binary, moduledata_gofunc: int) -> None:
        self.data = data
        self.h = h = pclntab(data)
        tab = h.tab
        offs = struct.unpack_from(f"<{2 * (h.nfunc + 1)}I", tab, h.pcln_off)
        self.entry_offs = list(offs[0::2])  # sorted: the table is in address order
        self.func_offs = list(offs[1::2])
        self.segments = _segments(data)
        # Only the inline tree needs moduledata (for gofunc).
        pos, _text = moduledata(
            data, h.offset, h.funcname_off, h.cu_off, self.entry_offs[0], self.entry_offs[-1]
        )
        self.gofunc = struct.unpack_from("<Q", data, pos + moduledata_gofunc)[0]

    @_refuses_malformed
    def frame(self, return_pc: int) -> Frame | None:
        """The innermost frame at a return address (link-time), or None when
        it is not in the binary's Go code."""
        h = self.h
        pc = return_pc - 1
        off = pc - h.text_start
        if off < self.entry_offs[0] or off >= self.entry_offs[-1]:
            return None
        i = bisect.bisect_right(self.entry_offs, off) - 1
        if i < 0 or i >= h.nfunc:
            return None
        fpos = h.pcln_off + self.func_offs[i]
        tab = h.tab
        (entry_off, name_off, _args, _defer, _pcsp, pcfile, pcln, npcdata, cu_offset) = (
            struct.unpack_from("<IiiIIIIII", tab, fpos)
        )
        start_line = struct.unpack_from("<i", tab, fpos + 36)[0] if h.func_size == 44 else 0
        nfuncdata = tab[fpos + h.func_size - 1]
        entry = h.text_start + entry_off
        function = self._name(name_off)
        file_no = self._pcvalue(pcfile, entry, pc)
        line = self._pcvalue(pcln, entry, pc)
        inlined = False
        if npcdata > PCDATA_INL_TREE_INDEX and nfuncdata > FUNCDATA_INL_TREE:
            inl_tab = struct.unpack_from("<I", tab, fpos + h.func_size + 4 * PCDATA_INL_TREE_INDEX)[
                0
            ]
            tree = struct.unpack_from(
                "<I", tab, fpos + h.func_size + 4 * npcdata + 4 * FUNCDATA_INL_TREE
            )[0]
            if inl_tab and tree != NO_FUNCDATA:
                ix = self._pcvalue(inl_tab, entry, pc)
                if ix >= 0:
                    addr = self.gofunc + tree + INLINED_CALL_SIZE * ix
                    call = _code_at(
                        self.data, self.segments, addr, INLINED_CALL_SIZE, "inline tree"
                    )
                    _fid, inl_name, _parent_pc, inl_start = struct.unpack("<B3xiii", call)
                    function, start_line, inlined = self._name(inl_name), inl_start, True
        return Frame(
            function, self._file(cu_offset, file_no), max(line, 0), start_line, entry, inlined
        )

    def _name(self, name_off: int) -> str:
        start = self.h.funcname_off + name_off
        end = self.h.tab.find(b"\0", start, start + 4096)
        if end < 0:
            raise SymbolError("a function name runs past its table")
        return bytes(self.h.tab[start:end]).decode("utf-8", "replace")

    def _file(self, cu_offset: int, file_no: int) -> str:
        if file_no < 0:
            return "?"
        h = self.h
        file_off = struct.unpack_from("<I", h.tab, h.cu_off + 4 * (cu_offset + file_no))[0]
        if file_off == NO_FUNCDATA:
            return "?"
        start = h.filetab_off + file_off
        end = h.tab.find(b"\0", start, start + 4096)
        return bytes(h.tab[start:end]).decode("utf-8", "replace")

    def _pcvalue(self, table_off: int, entry: int, target: int) -> int:
        """The value a pc-value table holds at target (runtime.pcvalue):
        zigzag value deltas and PC deltas (quantum 1 on amd64), from -1 at
        the function's entry; -1 when the table has no entry for target."""
        if table_off == 0:
            return -1
        tab = self.h.tab
        p = self.h.pctab_off + table_off
        val, pc, first = -1, entry, True
        while True:
            uv, p = _varint(tab, p)
            if uv == 0 and not first:
                return -1
            first = False
            val += -(uv >> 1) - 1 if uv & 1 else uv >> 1
            delta, p = _varint(tab, p)
            pc += delta
            if target < pc:
                return val


def _varint(buf: Binary, p: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        b = buf[p]
        p += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, p
        shift += 7
        if shift > 35:
            raise SymbolError("a pc-value table's varint is too long")
