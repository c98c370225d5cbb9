"""The bpf() system call over ctypes: maps, programs, BTF, object ids and info."""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct
from dataclasses import dataclass
from typing import Callable

# bpf(2) is not wrapped by glibc: the number differs per arch.
SYSCALL_NR = {"x86_64": 321, "aarch64": 280, "arm64": 280}

# The kernel-internal ENOTSUPP leaks to user space from map_in_map.c; it is
# not EOPNOTSUPP (95) and has no name in the errno module.
ENOTSUPP = 524

# enum bpf_cmd
MAP_CREATE, MAP_LOOKUP_ELEM, MAP_UPDATE_ELEM, MAP_DELETE_ELEM, MAP_GET_NEXT_KEY = 0, 1, 2, 3, 4
PROG_LOAD, PROG_TEST_RUN = 5, 10
PROG_GET_NEXT_ID, MAP_GET_NEXT_ID, PROG_GET_FD_BY_ID, MAP_GET_FD_BY_ID = 11, 12, 13, 14
OBJ_GET_INFO_BY_FD, BTF_LOAD, BTF_GET_FD_BY_ID, BTF_GET_NEXT_ID = 15, 18, 19, 23

# enum bpf_map_type (the ones the suite uses)
MAP_HASH, MAP_ARRAY, MAP_PROG_ARRAY = 1, 2, 3
MAP_CGROUP_STORAGE, MAP_ARRAY_OF_MAPS, MAP_HASH_OF_MAPS = 19, 12, 13
MAP_PERCPU_CGROUP_STORAGE, MAP_STRUCT_OPS = 21, 26

# enum bpf_prog_type
PROG_SOCKET_FILTER, PROG_SYSCALL = 1, 31

F_NO_PREALLOC, F_INNER_MAP, F_SLEEPABLE = 1 << 0, 1 << 12, 1 << 4
ANY, NOEXIST, EXIST = 0, 1, 2

_CMD_NAMES = {MAP_CREATE: "MAP_CREATE", MAP_LOOKUP_ELEM: "MAP_LOOKUP_ELEM",
              MAP_UPDATE_ELEM: "MAP_UPDATE_ELEM", MAP_DELETE_ELEM: "MAP_DELETE_ELEM",
              MAP_GET_NEXT_KEY: "MAP_GET_NEXT_KEY", PROG_LOAD: "PROG_LOAD",
              PROG_TEST_RUN: "PROG_TEST_RUN", MAP_GET_FD_BY_ID: "MAP_GET_FD_BY_ID",
              PROG_GET_FD_BY_ID: "PROG_GET_FD_BY_ID", OBJ_GET_INFO_BY_FD: "OBJ_GET_INFO_BY_FD",
              BTF_LOAD: "BTF_LOAD", BTF_GET_FD_BY_ID: "BTF_GET_FD_BY_ID",
              BTF_GET_NEXT_ID: "BTF_GET_NEXT_ID", MAP_GET_NEXT_ID: "MAP_GET_NEXT_ID",
              PROG_GET_NEXT_ID: "PROG_GET_NEXT_ID"}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def errno_name(err: int) -> str:
    # Python names 95 ENOTSUP; the kernel (and its messages) say EOPNOTSUPP.
    special = {ENOTSUPP: "ENOTSUPP", errno.EOPNOTSUPP: "EOPNOTSUPP"}
    return special.get(err) or errno.errorcode.get(err, str(err))


class BpfError(OSError):
    """A failed bpf() command; .errno is the kernel's error number."""

    def __init__(self, cmd: int, err: int, log: str = "") -> None:
        self.cmd = _CMD_NAMES.get(cmd, str(cmd))
        self.log = log
        super().__init__(err, f"bpf({self.cmd}) failed: {errno_name(err)} ({err})")


class ProgLoadError(BpfError):
    """PROG_LOAD refused; .log holds the verifier log."""

    def __str__(self) -> str:
        tail = "\n".join(self.log.strip().splitlines()[-15:])
        return f"{super().__str__()}\nverifier log (tail):\n{tail}"


def syscall_nr(machine: str | None = None) -> int:
    machine = machine or platform.machine()
    if machine not in SYSCALL_NR:
        raise RuntimeError(f"no bpf() syscall number known for {machine}")
    return SYSCALL_NR[machine]


def bpf(cmd: int, attr: bytes | ctypes.Array[ctypes.c_char], log: str = "") -> int:
    """Raw bpf(cmd, attr); returns the result or raises BpfError."""
    buf = attr if isinstance(attr, ctypes.Array) else ctypes.create_string_buffer(attr, len(attr))
    # Looked up here, not at import: the lab collects the suite on any host.
    nr = syscall_nr()
    ret = _libc.syscall(ctypes.c_long(nr), ctypes.c_int(cmd), buf, ctypes.c_uint(len(buf)))
    if ret < 0:
        err = ctypes.get_errno()
        raise BpfError(cmd, err, log)
    return int(ret)


def addr(buf: ctypes.Array[ctypes.c_char] | None) -> int:
    return ctypes.addressof(buf) if buf is not None else 0


def u32(value: int) -> bytes:
    return struct.pack("<I", value & 0xFFFFFFFF)


def u64(value: int) -> bytes:
    return struct.pack("<Q", value & 0xFFFFFFFFFFFFFFFF)


@dataclass(frozen=True)
class MapInfo:
    type: int
    id: int
    key_size: int
    value_size: int
    max_entries: int
    map_flags: int
    name: str
    btf_id: int


class Fd:
    """An owned file descriptor that closes once."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "Fd":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # Tests drop fds on purpose to free maps; leaks would keep maps alive.
        try:
            self.close()
        except OSError:
            pass


class Map(Fd):
    """A BPF map fd with the element commands; keys and values are bytes."""

    def __init__(self, fd: int, key_size: int, value_size: int) -> None:
        super().__init__(fd)
        self.key_size = key_size
        self.value_size = value_size

    def _elem(self, cmd: int, key: bytes, value: ctypes.Array[ctypes.c_char] | None,
              flags: int = 0) -> None:
        kbuf = ctypes.create_string_buffer(key, len(key))
        bpf(cmd, struct.pack("<IIQQQ", self.fd, 0, addr(kbuf), addr(value), flags))

    def update(self, key: bytes, value: bytes, flags: int = ANY) -> None:
        self._elem(MAP_UPDATE_ELEM, key, ctypes.create_string_buffer(value, len(value)), flags)

    def lookup(self, key: bytes) -> bytes:
        out = ctypes.create_string_buffer(self.value_size)
        self._elem(MAP_LOOKUP_ELEM, key, out)
        return out.raw

    def delete(self, key: bytes) -> None:
        self._elem(MAP_DELETE_ELEM, key, None)

    def next_key(self, key: bytes | None) -> bytes:
        out = ctypes.create_string_buffer(self.key_size)
        kbuf = ctypes.create_string_buffer(key, len(key)) if key is not None else None
        bpf(MAP_GET_NEXT_KEY, struct.pack("<IIQQQ", self.fd, 0, addr(kbuf), addr(out), 0))
        return out.raw

    def info(self) -> MapInfo:
        raw = obj_info(self.fd, 88)
        f = struct.unpack_from("<6I16sIIQQIIIIQ", raw)
        return MapInfo(f[0], f[1], f[2], f[3], f[4], f[5], f[6].rstrip(b"\0").decode(), f[10])


def create_map(map_type: int, key_size: int, value_size: int, max_entries: int, *,
               flags: int = 0, inner: Map | None = None, name: str = "",
               btf_fd: int = 0, btf_key: int = 0, btf_value: int = 0,
               vmlinux_value_type: int = 0) -> Map:
    """BPF_MAP_CREATE; inner is the template map for an ARRAY/HASH_OF_MAPS."""
    attr = map_create_attr(map_type, key_size, value_size, max_entries, flags=flags,
                           inner=inner, name=name, btf_fd=btf_fd, btf_key=btf_key,
                           btf_value=btf_value, vmlinux_value_type=vmlinux_value_type)
    return Map(bpf(MAP_CREATE, attr), key_size, value_size)


def map_create_attr(map_type: int, key_size: int, value_size: int, max_entries: int, *,
                    flags: int = 0, inner: Map | None = None, name: str = "",
                    btf_fd: int = 0, btf_key: int = 0, btf_value: int = 0,
                    vmlinux_value_type: int = 0) -> bytes:
    """The union bpf_attr of BPF_MAP_CREATE (up to map_extra)."""
    return struct.pack("<7I16s5IQ", map_type, key_size, value_size, max_entries, flags,
                       inner.fd if inner else 0, 0, name.encode()[:15], 0, btf_fd,
                       btf_key, btf_value, vmlinux_value_type, 0)


def map_from_id(map_id: int) -> Map:
    fd = bpf(MAP_GET_FD_BY_ID, struct.pack("<III", map_id, 0, 0))
    m = Map(fd, 0, 0)
    info = m.info()
    m.key_size, m.value_size = info.key_size, info.value_size
    return m


def obj_info(fd: int, size: int, patch: bytes = b"", at: int = 0) -> bytes:
    """OBJ_GET_INFO_BY_FD into a zeroed struct of size bytes (patch written at offset at)."""
    info = ctypes.create_string_buffer(size)
    ctypes.memmove(ctypes.addressof(info) + at, patch, len(patch))
    bpf(OBJ_GET_INFO_BY_FD, struct.pack("<IIQ", fd, size, addr(info)))
    return info.raw


def next_id(cmd: int, start: int) -> int | None:
    """PROG/MAP/BTF_GET_NEXT_ID; None past the last object."""
    attr = ctypes.create_string_buffer(struct.pack("<III", start, 0, 0), 12)
    try:
        bpf(cmd, attr)
    except BpfError as e:
        if e.errno == errno.ENOENT:
            return None
        raise
    return int(struct.unpack_from("<I", attr.raw, 4)[0])


def all_ids(cmd: int, limit: int = 1_000_000) -> list[int]:
    """Every id the kernel hands out for cmd, bounded by limit."""
    ids: list[int] = []
    cur = 0
    for _ in range(limit):
        nxt = next_id(cmd, cur)
        if nxt is None:
            return ids
        ids.append(nxt)
        cur = nxt
    raise RuntimeError(f"more than {limit} ids: refusing to walk further")


def btf_load(blob: bytes, log_size: int = 1 << 16) -> Fd:
    """BTF_LOAD; on failure the kernel's BTF log is in the exception."""
    data = ctypes.create_string_buffer(blob, len(blob))
    log = ctypes.create_string_buffer(log_size)
    attr = struct.pack("<QQIIII", addr(data), addr(log), len(blob), log_size, 1, 0)
    try:
        return Fd(bpf(BTF_LOAD, attr))
    except BpfError as e:
        raise BpfError(BTF_LOAD, e.errno or 0, log.value.decode(errors="replace")) from None


def btf_id(fd: int) -> int:
    # struct bpf_btf_info { u64 btf; u32 btf_size; u32 id; ... }
    return int(struct.unpack_from("<I", obj_info(fd, 16), 12)[0])


def errno_of(action: Callable[[], object]) -> int:
    """0 if action succeeds, else the bpf() errno: one assertion covers both outcomes."""
    try:
        action()
    except BpfError as e:
        return int(e.errno or 0)
    return 0
