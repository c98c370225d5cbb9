"""Program load (with the verifier log), test runs and translated instructions."""

from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass

from .asm import Insn, decode
from .sysbpf import (PROG_LOAD, PROG_TEST_RUN, BpfError, Fd, ProgLoadError, addr, bpf,
                     obj_info)

LOG_SIZE = 1 << 20


@dataclass(frozen=True)
class RunResult:
    retval: int
    duration_ns: int


def load(prog_type: int, code: bytes, *, flags: int = 0, license: str = "GPL",
         name: str = "bpflab", log_level: int = 1) -> Fd:
    """PROG_LOAD; a refusal raises ProgLoadError carrying the verifier log."""
    insns = ctypes.create_string_buffer(code, len(code))
    lic = ctypes.create_string_buffer(license.encode())
    log = ctypes.create_string_buffer(LOG_SIZE)

    def attempt(level: int) -> int:
        attr = struct.pack("<IIQQIIQII16sII", prog_type, len(code) // 8, addr(insns),
                           addr(lic), level, LOG_SIZE if level else 0,
                           addr(log) if level else 0, 0, flags, name.encode()[:15], 0, 0)
        return bpf(PROG_LOAD, attr)

    try:
        # Without a log first: a log level changes nothing in the verdict, and
        # the verbose log costs time under emulation.
        return Fd(attempt(0))
    except BpfError as first:
        try:
            Fd(attempt(log_level)).close()
        except BpfError:
            # first.errno, not the retry's: a log too small for the verdict is ENOSPC.
            raise ProgLoadError(PROG_LOAD, first.errno or 0,
                                log.value.decode(errors="replace")) from None
        raise AssertionError(f"PROG_LOAD failed without a log ({first}) but "
                             "passed with one") from None


def run(prog: Fd, *, data: bytes = b"", ctx: bytes = b"", repeat: int = 0) -> RunResult:
    """BPF_PROG_TEST_RUN; SYSCALL programs take ctx only, and refuse repeat != 0."""
    din = ctypes.create_string_buffer(data, len(data)) if data else None
    dout = ctypes.create_string_buffer(len(data) + 256) if data else None
    cin = ctypes.create_string_buffer(ctx, len(ctx)) if ctx else None
    attr = ctypes.create_string_buffer(struct.pack(
        "<IIIIQQIIIIQQIIII", prog.fd, 0, len(data), len(dout) if dout else 0, addr(din),
        addr(dout), repeat, 0, len(ctx), 0, addr(cin), 0, 0, 0, 0, 0), 80)
    bpf(PROG_TEST_RUN, attr)
    retval, = struct.unpack_from("<I", attr.raw, 4)
    duration, = struct.unpack_from("<I", attr.raw, 36)
    return RunResult(retval, duration)


def xlated(prog: Fd) -> list[Insn]:
    """The program as the verifier rewrote it (inlined lookups, masking)."""
    # struct bpf_prog_info: xlated_prog_len at 20, xlated_prog_insns at 32.
    first = obj_info(prog.fd, 80)
    length, = struct.unpack_from("<I", first, 20)
    if not length:
        raise PermissionError("prog info hides the translated instructions (needs CAP_BPF "
                              "/ kernel.kptr_restrict allowing raw dumps)")
    buf = ctypes.create_string_buffer(length)
    patch = struct.pack("<IIQQ", 0, length, 0, addr(buf))
    obj_info(prog.fd, 80, patch, 16)
    return decode(buf.raw)
