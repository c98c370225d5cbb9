"""The in-guest suite's BTF builder: header, type records and string offsets."""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bpf_tests" / "python"))

from bpfkit import btf  # noqa: E402


def sections(blob: bytes) -> tuple[bytes, bytes]:
    hdr_len, t_off, t_len, s_off, s_len = btf.parse_header(blob)
    return (blob[hdr_len + t_off:hdr_len + t_off + t_len],
            blob[hdr_len + s_off:hdr_len + s_off + s_len])


def test_header_has_magic_version_and_section_bounds() -> None:
    b = btf.BtfBuilder()
    b.add_int("int", 4, signed=True)
    blob = b.blob()
    magic, version, flags, hdr_len, t_off, t_len, s_off, s_len = struct.unpack_from(
        "<HBBIIIII", blob)
    assert (magic, version, flags, hdr_len) == (0xEB9F, 1, 0, 24)
    assert (t_off, t_len, s_off, s_len) == (0, 16, 16, len(b"\0int\0"))
    assert len(blob) == 24 + 16 + 5


def test_int_record_encodes_signedness_and_bits() -> None:
    b = btf.BtfBuilder()
    b.add_int("int", 4, signed=True)
    types, _ = sections(b.blob())
    assert struct.unpack("<IIII", types) == (1, 1 << 24, 4, (1 << 24) | 32)


def test_string_table_starts_empty_and_stores_each_name_once() -> None:
    b = btf.BtfBuilder()
    first = b.name("val")
    assert b.name("") == 0 and first == 1 and b.name("val") == first
    b.add_struct("val", 0)
    assert sections(b.blob())[1] == b"\0val\0"


def test_type_ids_count_from_one_in_insertion_order() -> None:
    b = btf.BtfBuilder()
    assert [b.add_int("int", 4), b.add_ptr(1), b.add_struct("s", 0)] == [1, 2, 3]


def test_struct_members_carry_bit_offsets_and_vlen() -> None:
    b = btf.BtfBuilder()
    i32 = b.add_int("int", 4)
    b.add_struct("pair", 8, [("a", i32, 0), ("b", i32, 4)])
    types, strings = sections(b.blob())
    name_off, info, size = struct.unpack_from("<III", types, 16)
    assert (info >> 24, info & 0xFFFF, size) == (btf.KIND_STRUCT, 2, 8)
    assert strings[name_off:].startswith(b"pair\0")
    members = [struct.unpack_from("<III", types, 28 + 12 * i) for i in range(2)]
    assert [(m[1], m[2]) for m in members] == [(i32, 0), (i32, 32)]


def test_kptr_chain_is_ptr_to_type_tag_to_struct() -> None:
    v = btf.value_with("kptr", "kptr_untrusted")
    types, strings = sections(v.blob)
    records, pos = [], 0
    while pos < len(types):
        name_off, info, ref = struct.unpack_from("<III", types, pos)
        kind, vlen = info >> 24, info & 0xFFFF
        records.append((kind, strings[name_off:].split(b"\0")[0], ref))
        pos += 12 + (4 if kind == btf.KIND_INT else 12 * vlen if kind == btf.KIND_STRUCT else 0)
    tag_id = next(i + 1 for i, r in enumerate(records) if r[0] == btf.KIND_TYPE_TAG)
    assert records[tag_id - 1][1] == b"kptr_untrusted"
    assert records[records[tag_id - 1][2] - 1][:2] == (btf.KIND_STRUCT, b"task_struct")
    assert any(r[0] == btf.KIND_PTR and r[2] == tag_id for r in records)


@pytest.mark.parametrize("field, size, name", [("spin_lock", 8, "bpf_spin_lock"),
                                                ("timer", 24, "bpf_timer"),
                                                ("kptr", 16, "task_struct")])
def test_special_field_values_have_the_kernel_sizes(field: str, size: int, name: str) -> None:
    v = btf.value_with(field)
    assert v.value_size == size
    type_id, _ = btf.find_type(v.blob, name, btf.KIND_STRUCT)
    assert 0 < type_id < v.value_type
    assert btf.find_type(v.blob, "val", btf.KIND_STRUCT) == (v.value_type, size)


def test_find_type_walks_variable_length_records() -> None:
    b = btf.BtfBuilder()
    i32 = b.add_int("int", 4)
    b.add_struct("big", 12, [("a", i32, 0), ("b", i32, 4), ("c", i32, 8)])
    want = b.add_struct("target", 4, [("x", i32, 0)])
    assert btf.find_type(b.blob(), "target", btf.KIND_STRUCT) == (want, 4)
    with pytest.raises(KeyError):
        btf.find_type(b.blob(), "target", btf.KIND_INT)


def test_a_blob_without_the_magic_is_refused() -> None:
    with pytest.raises(ValueError, match="not BTF"):
        btf.parse_header(bytes(24))
