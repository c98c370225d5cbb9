"""A BPF instruction assembler and decoder (encodings as in include/uapi/linux/bpf.h)."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Iterable, Union

R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, R10 = range(11)

# instruction classes
LD, LDX, ST, STX, ALU, JMP, JMP32, ALU64 = 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07
K, X = 0x00, 0x08  # source: immediate or register
IMM, MEM = 0x00, 0x60  # ld/st modes
SIZES = {"w": 0x00, "h": 0x08, "b": 0x10, "dw": 0x18}
ALU_OPS = {"add": 0x00, "sub": 0x10, "mul": 0x20, "div": 0x30, "or": 0x40, "and": 0x50,
           "lsh": 0x60, "rsh": 0x70, "neg": 0x80, "mod": 0x90, "xor": 0xA0, "mov": 0xB0,
           "arsh": 0xC0}
JMP_OPS = {"ja": 0x00, "jeq": 0x10, "jgt": 0x20, "jge": 0x30, "jset": 0x40, "jne": 0x50,
           "jsgt": 0x60, "jsge": 0x70, "call": 0x80, "exit": 0x90, "jlt": 0xA0,
           "jle": 0xB0, "jslt": 0xC0, "jsle": 0xD0}

PSEUDO_MAP_FD = 1  # src_reg of ld_imm64: imm is a map fd, the verifier turns it into a map pointer

# helper ids (enum bpf_func_id)
MAP_LOOKUP_ELEM, MAP_UPDATE_ELEM, MAP_DELETE_ELEM = 1, 2, 3
SPIN_LOCK, SPIN_UNLOCK, COPY_FROM_USER, TIMER_INIT = 93, 94, 148, 169


@dataclass(frozen=True)
class Insn:
    """One 8-byte slot; off may be a label name until assemble() resolves it."""

    code: int
    dst: int = 0
    src: int = 0
    off: int | str = 0
    imm: int = 0

    def encode(self) -> bytes:
        if isinstance(self.off, str):
            raise ValueError(f"unresolved label {self.off!r}")
        return struct.pack("<BBhi", self.code, (self.src << 4) | self.dst, self.off,
                           _s32(self.imm))


@dataclass(frozen=True)
class Label:
    name: str


Item = Union[Insn, Label, tuple[Insn, ...]]


def _s32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v & 0x80000000 else v


def alu64_imm(op: str, dst: int, imm: int) -> Insn:
    return Insn(ALU64 | ALU_OPS[op] | K, dst, 0, 0, imm)


def alu64_reg(op: str, dst: int, src: int) -> Insn:
    return Insn(ALU64 | ALU_OPS[op] | X, dst, src)


def alu32_imm(op: str, dst: int, imm: int) -> Insn:
    return Insn(ALU | ALU_OPS[op] | K, dst, 0, 0, imm)


def alu32_reg(op: str, dst: int, src: int) -> Insn:
    return Insn(ALU | ALU_OPS[op] | X, dst, src)


def mov64_imm(dst: int, imm: int) -> Insn:
    return alu64_imm("mov", dst, imm)


def mov64_reg(dst: int, src: int) -> Insn:
    return alu64_reg("mov", dst, src)


def mov32_imm(dst: int, imm: int) -> Insn:
    return alu32_imm("mov", dst, imm)


def ld_imm64(dst: int, imm: int, src: int = 0) -> tuple[Insn, Insn]:
    """The only 16-byte instruction: low 32 bits in the first slot, high in the second."""
    return (Insn(LD | IMM | SIZES["dw"], dst, src, 0, imm & 0xFFFFFFFF),
            Insn(0, 0, 0, 0, (imm >> 32) & 0xFFFFFFFF))


def ld_map_fd(dst: int, fd: int) -> tuple[Insn, Insn]:
    return ld_imm64(dst, fd, PSEUDO_MAP_FD)


def ldx(size: str, dst: int, src: int, off: int) -> Insn:
    return Insn(LDX | MEM | SIZES[size], dst, src, off)


def stx(size: str, dst: int, src: int, off: int) -> Insn:
    return Insn(STX | MEM | SIZES[size], dst, src, off)


def st(size: str, dst: int, off: int, imm: int) -> Insn:
    return Insn(ST | MEM | SIZES[size], dst, 0, off, imm)


def jmp_imm(op: str, dst: int, imm: int, off: int | str) -> Insn:
    return Insn(JMP | JMP_OPS[op] | K, dst, 0, off, imm)


def jmp_reg(op: str, dst: int, src: int, off: int | str) -> Insn:
    return Insn(JMP | JMP_OPS[op] | X, dst, src, off)


def jmp32_imm(op: str, dst: int, imm: int, off: int | str) -> Insn:
    return Insn(JMP32 | JMP_OPS[op] | K, dst, 0, off, imm)


def ja(off: int | str) -> Insn:
    return Insn(JMP | JMP_OPS["ja"], 0, 0, off)


def call(helper: int) -> Insn:
    return Insn(JMP | JMP_OPS["call"], 0, 0, 0, helper)


def exit_() -> Insn:
    return Insn(JMP | JMP_OPS["exit"])


def _flatten(items: Iterable[Item]) -> list[Insn | Label]:
    out: list[Insn | Label] = []
    for item in items:
        out.extend(item if isinstance(item, tuple) else (item,))
    return out


def assemble(items: Iterable[Item]) -> bytes:
    """Encode a program; a jump whose off is a label name jumps to that Label."""
    flat = _flatten(items)
    where: dict[str, int] = {}
    slot = 0
    for item in flat:
        if isinstance(item, Label):
            if item.name in where:
                raise ValueError(f"label {item.name!r} defined twice")
            where[item.name] = slot
        else:
            slot += 1
    insns = [i for i in flat if isinstance(i, Insn)]
    out = bytearray()
    for pc, insn in enumerate(insns):
        if isinstance(insn.off, str):
            if insn.off not in where:
                raise ValueError(f"jump to unknown label {insn.off!r}")
            insn = Insn(insn.code, insn.dst, insn.src, where[insn.off] - pc - 1, insn.imm)
        out += insn.encode()
    return bytes(out)


def decode(blob: bytes) -> list[Insn]:
    """Split encoded instructions (e.g. xlated insns from prog info) into slots."""
    if len(blob) % 8:
        raise ValueError(f"{len(blob)} bytes is not a whole number of instructions")
    out = []
    for pos in range(0, len(blob), 8):
        code, regs, off, imm = struct.unpack_from("<BBhi", blob, pos)
        out.append(Insn(code, regs & 0xF, regs >> 4, off, imm))
    return out
