"""userfaultfd: one page whose first touch blocks until the test resolves the fault."""

from __future__ import annotations

import ctypes
import fcntl
import os
import platform
import select
import struct

NR_USERFAULTFD = {"x86_64": 323, "aarch64": 282}
UFFD_API, EVENT_PAGEFAULT, MODE_MISSING = 0xAA, 0x12, 1


def _iowr(nr: int, size: int) -> int:
    return (3 << 30) | (size << 16) | (0xAA << 8) | nr


UFFDIO_API, UFFDIO_REGISTER, UFFDIO_COPY = _iowr(0x3F, 24), _iowr(0x00, 32), _iowr(0x03, 40)
PROT_RW, MAP_PRIVATE_ANON = 0x1 | 0x2, 0x02 | 0x20

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]


class UserFaultPage:
    """A private anonymous page registered for missing-page faults.

    Kernel-mode faults (copy_from_user) are caught too: the fd is opened without
    UFFD_USER_MODE_ONLY, which needs root (CAP_SYS_PTRACE).
    """

    def __init__(self) -> None:
        self.size = os.sysconf("SC_PAGE_SIZE")
        nr = NR_USERFAULTFD[platform.machine()]
        fd = _libc.syscall(ctypes.c_long(nr), ctypes.c_int(os.O_CLOEXEC | os.O_NONBLOCK))
        if fd < 0:
            raise OSError(ctypes.get_errno(), "userfaultfd")
        self.fd = int(fd)
        addr = _libc.mmap(None, self.size, PROT_RW, MAP_PRIVATE_ANON, -1, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            os.close(self.fd)
            raise OSError(ctypes.get_errno(), "mmap")
        self.addr = int(addr)
        fcntl.ioctl(self.fd, UFFDIO_API, bytearray(struct.pack("<QQQ", UFFD_API, 0, 0)), True)
        fcntl.ioctl(self.fd, UFFDIO_REGISTER,
                    bytearray(struct.pack("<QQQQ", self.addr, self.size, MODE_MISSING, 0)), True)

    def wait_fault(self, timeout: float) -> int | None:
        """Address of the first page fault, or None if none came within timeout."""
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return None
        msg = os.read(self.fd, 32)
        if msg[0] != EVENT_PAGEFAULT:
            raise RuntimeError(f"unexpected userfaultfd event {msg[0]:#x}")
        flags, address = struct.unpack_from("<QQ", msg, 8)
        return int(address)

    def resolve(self, content: bytes) -> None:
        """Fill the page (UFFDIO_COPY), waking the faulting task."""
        src = ctypes.create_string_buffer(content.ljust(self.size, b"\0"), self.size)
        fcntl.ioctl(self.fd, UFFDIO_COPY, bytearray(struct.pack(
            "<QQQQq", self.addr, ctypes.addressof(src), self.size, 0, 0)), True)

    def close(self) -> None:
        # Closing the fd also wakes a task still blocked on the page (it gets EFAULT).
        if self.fd >= 0:
            os.close(self.fd)
            _libc.munmap(self.addr, self.size)
            self.fd = -1
