"""Builds small BTF blobs for tests: just enough of the format to describe
kernel structs in the shapes different kernel versions have."""

from __future__ import annotations

import struct


class BtfBuilder:
    def __init__(self) -> None:
        self.strings = bytearray(b"\0")
        self.types: list[bytes] = []

    def _str(self, s: str) -> int:
        if not s:
            return 0
        off = len(self.strings)
        self.strings += s.encode() + b"\0"
        return off

    def _add(
        self, name: str, kind: int, vlen: int, size_or_type: int, extra: bytes = b"", kflag: int = 0
    ) -> int:
        info = (kflag << 31) | (kind << 24) | vlen
        self.types.append(struct.pack("<III", self._str(name), info, size_or_type) + extra)
        return len(self.types)

    def int_(self, name: str, size: int) -> int:
        return self._add(name, 1, 0, size, struct.pack("<I", size * 8))

    def ptr(self, target: int) -> int:
        return self._add("", 2, 0, target)

    def array(self, elem: int, nelems: int, index: int) -> int:
        return self._add("", 3, 0, 0, struct.pack("<III", elem, index, nelems))

    def struct(
        self, name: str, size: int, members: list[tuple[str, int, int]], union: bool = False
    ) -> int:
        """members: (name, type id, byte offset)."""
        extra = b"".join(struct.pack("<III", self._str(n), t, off * 8) for n, t, off in members)
        return self._add(name, 5 if union else 4, len(members), size, extra)

    def fwd_struct(self, name: str) -> int:
        return self._add(name, 7, 0, 0)

    def enum(self, name: str, values: list[tuple[str, int]]) -> int:
        extra = b"".join(struct.pack("<Ii", self._str(n), v) for n, v in values)
        return self._add(name, 6, len(values), 4, extra)

    def typedef(self, name: str, target: int) -> int:
        return self._add(name, 8, 0, target)

    def func_proto(self, params: list[int]) -> int:
        extra = b"".join(struct.pack("<II", 0, t) for t in params)
        return self._add("", 13, len(params), 0, extra)

    def build(self) -> bytes:
        types = b"".join(self.types)
        hdr = struct.pack(
            "<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(self.strings)
        )
        return hdr + types + bytes(self.strings)
