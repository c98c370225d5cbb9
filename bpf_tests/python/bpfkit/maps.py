"""Shorthands for the maps the suite builds over and over."""

from __future__ import annotations

from . import btf
from .sysbpf import (MAP_ARRAY, MAP_ARRAY_OF_MAPS, MAP_HASH, MAP_HASH_OF_MAPS, Fd, Map,
                     btf_load, create_map, u32)

VMLINUX_BTF = "/sys/kernel/btf/vmlinux"  # kptr targets and struct_ops types live there


def array(value_size: int = 4, max_entries: int = 1, flags: int = 0, *, btf_fd: int = 0,
          btf_key: int = 0, btf_value: int = 0) -> Map:
    return create_map(MAP_ARRAY, 4, value_size, max_entries, flags=flags, btf_fd=btf_fd,
                      btf_key=btf_key, btf_value=btf_value)


def hash_(value_size: int = 4, max_entries: int = 1, flags: int = 0) -> Map:
    return create_map(MAP_HASH, 4, value_size, max_entries, flags=flags)


def outer(inner: Map, max_entries: int = 1, kind: str = "array") -> Map:
    """ARRAY_OF_MAPS / HASH_OF_MAPS whose template is inner (values are map fds)."""
    map_type = MAP_ARRAY_OF_MAPS if kind == "array" else MAP_HASH_OF_MAPS
    return create_map(map_type, 4, 4, max_entries, inner=inner)


def put(outer_map: Map, key: int, inner: Map) -> None:
    """outer[key] = inner (the syscall side takes an fd, stores the map)."""
    outer_map.update(u32(key), u32(inner.fd))


def value_map(field: str, kptr_tag: str = "kptr") -> tuple[Map, Fd]:
    """An ARRAY(4 entries) whose value type is struct { int cnt; <field> }."""
    v = btf.value_with(field, kptr_tag)
    blob = btf_load(v.blob)
    m = array(v.value_size, 4, btf_fd=blob.fd, btf_key=v.key_type, btf_value=v.value_type)
    return m, blob
