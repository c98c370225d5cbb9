"""A BTF blob builder (include/uapi/linux/btf.h) and a reader for names in vmlinux BTF."""

from __future__ import annotations

import struct
from dataclasses import dataclass

MAGIC, VERSION, HDR_LEN = 0xEB9F, 1, 24
KIND_INT, KIND_PTR, KIND_ARRAY, KIND_STRUCT, KIND_UNION, KIND_ENUM = 1, 2, 3, 4, 5, 6
KIND_FWD, KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT = 7, 8, 9, 10, 11
KIND_FUNC, KIND_FUNC_PROTO, KIND_VAR, KIND_DATASEC, KIND_FLOAT = 12, 13, 14, 15, 16
KIND_DECL_TAG, KIND_TYPE_TAG, KIND_ENUM64 = 17, 18, 19
INT_SIGNED = 1


def info(kind: int, vlen: int = 0, kind_flag: bool = False) -> int:
    return (int(kind_flag) << 31) | (kind << 24) | vlen


class BtfBuilder:
    """Types get ids 1, 2, ... in the order they are added (0 is void)."""

    def __init__(self) -> None:
        self._types: list[bytes] = []
        self._strings = bytearray(b"\0")  # offset 0 is the empty name
        self._offsets: dict[str, int] = {"": 0}

    def name(self, text: str) -> int:
        """Offset of text in the string section, added once."""
        if text not in self._offsets:
            self._offsets[text] = len(self._strings)
            self._strings += text.encode() + b"\0"
        return self._offsets[text]

    def _add(self, record: bytes) -> int:
        self._types.append(record)
        return len(self._types)

    def add_int(self, name: str, size: int, signed: bool = False) -> int:
        encoding = INT_SIGNED if signed else 0
        return self._add(struct.pack("<IIII", self.name(name), info(KIND_INT), size,
                                     (encoding << 24) | (size * 8)))

    def add_ptr(self, target: int) -> int:
        return self._add(struct.pack("<III", 0, info(KIND_PTR), target))

    def add_type_tag(self, tag: str, target: int) -> int:
        return self._add(struct.pack("<III", self.name(tag), info(KIND_TYPE_TAG), target))

    def add_struct(self, name: str, size: int,
                   members: list[tuple[str, int, int]] | None = None) -> int:
        """members: (name, type id, byte offset); BTF stores offsets in bits."""
        members = members or []
        record = struct.pack("<III", self.name(name), info(KIND_STRUCT, len(members)), size)
        for mname, mtype, off in members:
            record += struct.pack("<III", self.name(mname), mtype, off * 8)
        return self._add(record)

    def blob(self) -> bytes:
        types = b"".join(self._types)
        strings = bytes(self._strings)
        header = struct.pack("<HBBIIIII", MAGIC, VERSION, 0, HDR_LEN, 0, len(types),
                             len(types), len(strings))
        return header + types + strings


@dataclass(frozen=True)
class ValueBtf:
    """A map value type: the blob, the key (u32) and value type ids, the value size."""

    blob: bytes
    key_type: int
    value_type: int
    value_size: int


def value_with(field: str, kptr_tag: str = "kptr") -> ValueBtf:
    """struct { int cnt; <special field> } for field in spin_lock, timer, kptr, none."""
    b = BtfBuilder()
    i32 = b.add_int("int", 4, signed=True)
    u32 = b.add_int("unsigned int", 4)
    u64 = b.add_int("long long unsigned int", 8)
    if field == "spin_lock":
        lock = b.add_struct("bpf_spin_lock", 4, [("val", u32, 0)])
        members, size = [("cnt", i32, 0), ("lock", lock, 4)], 8
    elif field == "timer":
        # struct bpf_timer is 16 bytes, 8-aligned: the kernel checks name and size.
        timer = b.add_struct("bpf_timer", 16, [("a", u64, 0), ("b", u64, 8)])
        members, size = [("cnt", i32, 0), ("t", timer, 8)], 24
    elif field == "kptr":
        # PTR -> TYPE_TAG("kptr") -> struct task_struct, resolved by name in vmlinux BTF.
        task = b.add_struct("task_struct", 0)
        ptr = b.add_ptr(b.add_type_tag(kptr_tag, task))
        members, size = [("cnt", i32, 0), ("p", ptr, 8)], 16
    elif field == "none":
        members, size = [("cnt", i32, 0), ("pad", u32, 4)], 8
    else:
        raise ValueError(f"unknown special field {field!r}")
    value = b.add_struct("val", size, members)
    return ValueBtf(b.blob(), i32, value, size)


def parse_header(blob: bytes) -> tuple[int, int, int, int, int]:
    """(hdr_len, type_off, type_len, str_off, str_len), offsets after the header."""
    magic, version, _flags, hdr_len, t_off, t_len, s_off, s_len = struct.unpack_from(
        "<HBBIIIII", blob)
    if magic != MAGIC or version != VERSION:
        raise ValueError(f"not BTF: magic {magic:#x} version {version}")
    return hdr_len, t_off, t_len, s_off, s_len


def _record_len(kind: int, vlen: int) -> int:
    """Bytes after the 12-byte common header, per kind."""
    per_member = {KIND_STRUCT: 12, KIND_UNION: 12, KIND_ENUM: 8, KIND_FUNC_PROTO: 8,
                  KIND_DATASEC: 12, KIND_ENUM64: 12}
    fixed = {KIND_INT: 4, KIND_ARRAY: 12, KIND_VAR: 4, KIND_DECL_TAG: 4}
    return fixed.get(kind, 0) + per_member.get(kind, 0) * vlen


def find_type(blob: bytes, name: str, kind: int) -> tuple[int, int]:
    """(type id, size) of the first type of kind named name, e.g. in vmlinux BTF."""
    hdr_len, t_off, t_len, s_off, s_len = parse_header(blob)
    strings = blob[hdr_len + s_off:hdr_len + s_off + s_len]
    # Find the name once: comparing an offset per type is what keeps the walk over
    # vmlinux's ~100k types affordable under emulation.
    at = strings.find(b"\0" + name.encode() + b"\0")
    if at < 0:
        raise KeyError(f"no BTF string {name!r}")
    name_off = at + 1
    pos, end, type_id = hdr_len + t_off, hdr_len + t_off + t_len, 0
    while pos < end:
        off, inf, size = struct.unpack_from("<III", blob, pos)
        type_id += 1
        k, vlen = (inf >> 24) & 0x1F, inf & 0xFFFF
        if off == name_off and k == kind:
            return type_id, size
        pos += 12 + _record_len(k, vlen)
    raise KeyError(f"no BTF type {name!r} of kind {kind}")
