"""A reader for the kernel's BTF type information (/sys/kernel/btf/vmlinux).

The agent resolves every kernel struct offset it needs from the running
kernel's BTF, so the kernel headers BCC compiles against only have to provide
helpers, not layouts (Debian's 6.1 headers put task_struct.tgid in the wrong
place for 6.18, for one). The format is documented in the kernel tree at
Documentation/bpf/btf.rst; only what offset resolution needs is decoded.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from oomtrace.agent.errors import BtfError

VMLINUX_BTF = Path("/sys/kernel/btf/vmlinux")

_MAGIC = 0xEB9F

# BTF_KIND_* from include/uapi/linux/btf.h
KIND_INT = 1
KIND_PTR = 2
KIND_ARRAY = 3
KIND_STRUCT = 4
KIND_UNION = 5
KIND_ENUM = 6
KIND_FWD = 7
KIND_TYPEDEF = 8
KIND_VOLATILE = 9
KIND_CONST = 10
KIND_RESTRICT = 11
KIND_FUNC = 12
KIND_FUNC_PROTO = 13
KIND_VAR = 14
KIND_DATASEC = 15
KIND_FLOAT = 16
KIND_DECL_TAG = 17
KIND_TYPE_TAG = 18
KIND_ENUM64 = 19

# Bytes of kind-specific data after the 12-byte common header: fixed, or per vlen entry.
_FIXED_EXTRA = {KIND_INT: 4, KIND_ARRAY: 12, KIND_VAR: 4, KIND_DECL_TAG: 4}
_PER_MEMBER = {
    KIND_STRUCT: 12,
    KIND_UNION: 12,
    KIND_ENUM: 8,
    KIND_FUNC_PROTO: 8,
    KIND_DATASEC: 12,
    KIND_ENUM64: 12,
}
_MODIFIERS = {KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_TYPE_TAG}


@dataclass(frozen=True, slots=True)
class Member:
    """One field of a struct or union; offsets in bits as BTF keeps them."""

    name: str
    type_id: int
    bit_offset: int
    bitfield_size: int


@dataclass(frozen=True, slots=True)
class ResolvedField:
    """Where a field lives, counted from the start of the outermost struct."""

    offset: int  # bytes
    size: int  # bytes
    type_id: int


class Btf:
    """Types of one BTF blob, indexed by id; looked up by name on demand."""

    def __init__(self, data: bytes, source: str = "<bytes>") -> None:
        self.source = source
        if len(data) < 24:
            raise BtfError(f"{source}: {len(data)} bytes is too short to hold a BTF header")
        magic, _version, _flags, hdr_len = struct.unpack_from("<HBBI", data, 0)
        if magic != _MAGIC:
            raise BtfError(f"{source}: bad BTF magic {magic:#x} (big-endian BTF is not supported)")
        type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", data, 8)
        self._types = memoryview(data)[hdr_len + type_off : hdr_len + type_off + type_len]
        self._strings = data[hdr_len + str_off : hdr_len + str_off + str_len]
        if len(self._types) != type_len or len(self._strings) != str_len:
            raise BtfError(f"{source}: BTF sections run past the end of the data (truncated?)")
        # Per type id: (offset of its header in the type section). Id 0 is void.
        self._offsets: list[int] = [0]
        self._by_name: dict[str, list[int]] | None = None
        self._index()

    @classmethod
    def load(cls, path: Path = VMLINUX_BTF) -> Btf:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise BtfError(
                f"no BTF at {path}: this kernel was built without CONFIG_DEBUG_INFO_BTF, "
                "and oomtrace reads every kernel struct layout from it"
            ) from None
        except PermissionError:
            raise BtfError(
                f"cannot read {path}: permission denied (run the agent as root)"
            ) from None
        return cls(data, str(path))

    # -- indexing --------------------------------------------------------

    def _index(self) -> None:
        types = self._types
        pos = 0
        end = len(types)
        offsets = self._offsets
        unpack = struct.Struct("<III").unpack_from
        while pos < end:
            if pos + 12 > end:
                raise BtfError(f"{self.source}: truncated type header at byte {pos}")
            _name_off, info, _size = unpack(types, pos)
            kind = (info >> 24) & 0x1F
            vlen = info & 0xFFFF
            offsets.append(pos)
            pos += 12
            if kind in _FIXED_EXTRA:
                pos += _FIXED_EXTRA[kind]
            elif kind in _PER_MEMBER:
                pos += _PER_MEMBER[kind] * vlen
            elif kind not in _MODIFIERS and kind not in (
                KIND_PTR,
                KIND_FWD,
                KIND_FUNC,
                KIND_FLOAT,
            ):
                raise BtfError(f"{self.source}: unknown BTF kind {kind} at type {len(offsets) - 1}")
        if pos != end:
            raise BtfError(f"{self.source}: type section ends mid-type")

    def _name(self, off: int) -> str:
        end = self._strings.find(b"\0", off)
        return self._strings[off : end if end >= 0 else None].decode("utf-8", "replace")

    def _header(self, type_id: int) -> tuple[str, int, int, int, int]:
        """(name, kind, vlen, kind_flag, size_or_type) of a type."""
        if not 0 < type_id < len(self._offsets):
            raise BtfError(f"{self.source}: no type with id {type_id}")
        name_off, info, size_or_type = struct.unpack_from(
            "<III", self._types, self._offsets[type_id]
        )
        return (
            self._name(name_off),
            (info >> 24) & 0x1F,
            info & 0xFFFF,
            info >> 31,
            size_or_type,
        )

    def ids_named(self, name: str) -> list[int]:
        if self._by_name is None:
            by_name: dict[str, list[int]] = {}
            strings = self._strings
            unpack = struct.Struct("<I").unpack_from
            for type_id in range(1, len(self._offsets)):
                name_off = unpack(self._types, self._offsets[type_id])[0]
                if name_off:
                    end = strings.find(b"\0", name_off)
                    key = strings[name_off:end].decode("utf-8", "replace")
                    by_name.setdefault(key, []).append(type_id)
            self._by_name = by_name
        return self._by_name.get(name, [])

    # -- queries ---------------------------------------------------------

    def kind(self, type_id: int) -> int:
        return self._header(type_id)[1]

    def name(self, type_id: int) -> str:
        return self._header(type_id)[0]

    def find(self, name: str, kind: int) -> int | None:
        for type_id in self.ids_named(name):
            _n, k, vlen, _kf, _s = self._header(type_id)
            # A struct may also appear as a forward declaration or, rarely, empty.
            if k == kind and not (kind in (KIND_STRUCT, KIND_UNION) and vlen == 0):
                return type_id
        return None

    def struct_id(self, name: str) -> int:
        type_id = self.find(name, KIND_STRUCT)
        if type_id is None:
            raise BtfError(f"{self.source}: no struct {name} in this kernel's BTF")
        return type_id

    def has_struct(self, name: str) -> bool:
        return self.find(name, KIND_STRUCT) is not None

    def strip(self, type_id: int) -> int:
        """Follows typedefs and qualifiers to the underlying type."""
        while type_id:
            _n, kind, _v, _kf, target = self._header(type_id)
            if kind not in _MODIFIERS:
                return type_id
            type_id = target
        return 0

    def size_of(self, type_id: int) -> int:
        type_id = self.strip(type_id)
        if type_id == 0:
            raise BtfError(f"{self.source}: void has no size")
        _n, kind, _v, _kf, size = self._header(type_id)
        if kind == KIND_PTR:
            return 8
        if kind == KIND_ARRAY:
            elem, _index, nelems = self.array_info(type_id)
            return self.size_of(elem) * nelems
        return size

    def array_info(self, type_id: int) -> tuple[int, int, int]:
        """(element type, index type, element count) of an array type."""
        type_id = self.strip(type_id)
        if self.kind(type_id) != KIND_ARRAY:
            raise BtfError(f"{self.source}: type {type_id} is not an array")
        elem, index, nelems = struct.unpack_from("<III", self._types, self._offsets[type_id] + 12)
        return elem, index, nelems

    def pointee(self, type_id: int) -> int:
        type_id = self.strip(type_id)
        _n, kind, _v, _kf, target = self._header(type_id)
        if kind != KIND_PTR:
            raise BtfError(f"{self.source}: type {type_id} is not a pointer")
        return target

    def members(self, type_id: int) -> list[Member]:
        type_id = self.strip(type_id)
        _n, kind, vlen, kind_flag, _size = self._header(type_id)
        if kind not in (KIND_STRUCT, KIND_UNION):
            raise BtfError(f"{self.source}: type {type_id} is not a struct or union")
        base = self._offsets[type_id] + 12
        out = []
        for i in range(vlen):
            name_off, mtype, moff = struct.unpack_from("<III", self._types, base + 12 * i)
            if kind_flag:
                bit_offset, bitfield_size = moff & 0xFFFFFF, moff >> 24
            else:
                bit_offset, bitfield_size = moff, 0
            out.append(Member(self._name(name_off), mtype, bit_offset, bitfield_size))
        return out

    def _find_member(self, type_id: int, name: str) -> tuple[int, int] | None:
        """(bit offset, type id) of a named member, looking inside anonymous
        structs and unions the way C does."""
        for m in self.members(type_id):
            if m.name == name:
                return m.bit_offset, m.type_id
            if not m.name:
                inner = self.strip(m.type_id)
                if self.kind(inner) in (KIND_STRUCT, KIND_UNION):
                    found = self._find_member(inner, name)
                    if found is not None:
                        return m.bit_offset + found[0], found[1]
        return None

    def field(self, struct_name: str, path: str) -> ResolvedField:
        """Offset of `a.b.c` inside `struct struct_name`, through nested
        (not pointed-to) structs. Alternatives separated by `|` are tried in
        order, for fields the kernel renamed: `__parent|parent`."""
        for candidate in path.split("|"):
            resolved = self._field(struct_name, candidate)
            if resolved is not None:
                return resolved
        raise BtfError(f"{self.source}: struct {struct_name} has no field {path}")

    def has_field(self, struct_name: str, path: str) -> bool:
        return self.has_struct(struct_name) and self._field(struct_name, path) is not None

    def _field(self, struct_name: str, path: str) -> ResolvedField | None:
        type_id = self.struct_id(struct_name)
        bits = 0
        for part in path.split("."):
            if self.kind(self.strip(type_id)) not in (KIND_STRUCT, KIND_UNION):
                return None
            found = self._find_member(type_id, part)
            if found is None:
                return None
            bits += found[0]
            type_id = found[1]
        if bits % 8:
            raise BtfError(f"{self.source}: {struct_name}.{path} is a bitfield")
        return ResolvedField(bits // 8, self.size_of(type_id), type_id)

    def enum_value(self, value_name: str, enum_name: str | None = None) -> int:
        """Value of an enumerator, from the named enum or from any enum."""
        candidates = self.ids_named(enum_name) if enum_name else range(1, len(self._offsets))
        for type_id in candidates:
            _n, kind, vlen, kind_flag, _size = self._header(type_id)
            if kind == KIND_ENUM:
                base = self._offsets[type_id] + 12
                for i in range(vlen):
                    name_off, val = struct.unpack_from("<Ii", self._types, base + 8 * i)
                    if self._name(name_off) == value_name:
                        # kind_flag marks a signed enum; otherwise the bits are unsigned.
                        return int(val) if kind_flag else int(val) & 0xFFFFFFFF
            elif kind == KIND_ENUM64:
                base = self._offsets[type_id] + 12
                for i in range(vlen):
                    name_off, lo, hi = struct.unpack_from("<III", self._types, base + 12 * i)
                    if self._name(name_off) == value_name:
                        return (int(hi) << 32) | int(lo)
        where = f"enum {enum_name}" if enum_name else "any enum"
        raise BtfError(f"{self.source}: no enumerator {value_name} in {where}")

    def func_proto_params(self, typedef_name: str) -> list[int]:
        """Parameter type ids of the function pointer a typedef names; used
        for `btf_trace_<tracepoint>`, which gives a raw tracepoint's arguments
        (after the leading `void *` context)."""
        ids = [i for i in self.ids_named(typedef_name) if self.kind(i) == KIND_TYPEDEF]
        if not ids:
            raise BtfError(f"{self.source}: no typedef {typedef_name}")
        proto = self.strip(ids[0])
        if self.kind(proto) == KIND_PTR:
            proto = self.strip(self.pointee(proto))
        _n, kind, vlen, _kf, _ret = self._header(proto)
        if kind != KIND_FUNC_PROTO:
            raise BtfError(f"{self.source}: {typedef_name} is not a function pointer")
        base = self._offsets[proto] + 12
        return [struct.unpack_from("<II", self._types, base + 8 * i)[1] for i in range(vlen)]

    def type_name(self, type_id: int) -> str:
        """A C-ish spelling of a type, enough to tell `struct task_struct *` from `int`."""
        if type_id == 0:
            return "void"
        name, kind, _v, _kf, target = self._header(type_id)
        if kind == KIND_PTR:
            return self.type_name(target) + " *"
        if kind == KIND_STRUCT:
            return f"struct {name}"
        if kind == KIND_UNION:
            return f"union {name}"
        if kind in (KIND_CONST, KIND_VOLATILE, KIND_RESTRICT, KIND_TYPE_TAG) and not name:
            return self.type_name(target)
        return name or f"<kind {kind}>"
