"""Run map creation in a forked child with fewer effective capabilities, fds sent back."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import struct
import time
from typing import Callable, Iterable

from .sysbpf import Fd

CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 21, 38, 39
_VERSION_3 = 0x20080522  # _LINUX_CAPABILITY_VERSION_3: two 32-bit words per set

_libc = ctypes.CDLL(None, use_errno=True)


def drop_effective(caps: Iterable[int]) -> None:
    """Clear caps from this process's effective set (permitted stays: no way back needed)."""
    header = ctypes.create_string_buffer(struct.pack("<Ii", _VERSION_3, 0), 8)
    data = ctypes.create_string_buffer(24)
    if _libc.capget(header, data) != 0:
        raise OSError(ctypes.get_errno(), "capget")
    words = list(struct.unpack("<6I", data.raw))  # (eff, perm, inh) x 2
    for cap in caps:
        words[3 * (cap // 32)] &= ~(1 << (cap % 32)) & 0xFFFFFFFF
    data = ctypes.create_string_buffer(struct.pack("<6I", *words), 24)
    if _libc.capset(header, data) != 0:
        raise OSError(ctypes.get_errno(), "capset")


def _child(sock: socket.socket, caps: Iterable[int], make: Callable[[], list[Fd]]) -> None:
    try:
        drop_effective(caps)
        objs = make()
        socket.send_fds(sock, [b"ok"], [o.fd for o in objs])
    except BaseException as e:  # noqa: B902 - everything must reach the parent
        sock.sendall(f"error: {e!r}".encode()[:1000])


def without_caps(caps: Iterable[int], make: Callable[[], list[Fd]],
                 timeout: float = 30.0) -> list[int]:
    """Call make() in a child lacking caps; return the fds of the objects it made."""
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:
        parent.close()
        _child(child, caps, make)
        os._exit(0)  # no pytest teardown, no atexit in the child
    child.close()
    try:
        parent.settimeout(timeout)
        msg, fds, _, _ = socket.recv_fds(parent, 1024, 16)
    finally:
        parent.close()
        _reap(pid, timeout)
    if msg != b"ok":
        raise RuntimeError(f"unprivileged child failed: {msg.decode(errors='replace')}")
    return fds


def _reap(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
