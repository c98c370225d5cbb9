"""The in-guest suite's BPF assembler against encodings the kernel prints and documents."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bpf_tests" / "python"))

from bpfkit import asm  # noqa: E402
from bpfkit.asm import R0, R1, R2, R10  # noqa: E402


def hexes(code: bytes) -> list[str]:
    return [code[i:i + 8].hex() for i in range(0, len(code), 8)]


# From the xlated dump in commit 9d5564ddcf's message: (opcode) text -> instruction.
KNOWN = [
    ("62 *(u32 *)(r10 -4) = 0", asm.st("w", R10, -4, 0), "620afcff00000000"),
    ("bf r2 = r10", asm.mov64_reg(R2, R10), "bfa2000000000000"),
    ("07 r2 += -4", asm.alu64_imm("add", R2, -4), "07020000fcffffff"),
    ("07 r1 += 272", asm.alu64_imm("add", R1, 272), "0701000010010000"),
    ("61 r0 = *(u32 *)(r2 +0)", asm.ldx("w", R0, R2, 0), "6120000000000000"),
    ("35 if r0 >= 0x1 goto pc+6", asm.jmp_imm("jge", R0, 1, 6), "3500060001000000"),
    ("54 (u32) r0 &= (u32) 0", asm.alu32_imm("and", R0, 0), "5400000000000000"),
    ("67 r0 <<= 3", asm.alu64_imm("lsh", R0, 3), "6700000003000000"),
    ("0f r0 += r1", asm.alu64_reg("add", R0, R1), "0f10000000000000"),
    ("79 r0 = *(u64 *)(r0 +0)", asm.ldx("dw", R0, R0, 0), "7900000000000000"),
    ("15 if r0 == 0x0 goto pc+1", asm.jmp_imm("jeq", R0, 0, 1), "1500010000000000"),
    ("05 goto pc+1", asm.ja(1), "0500010000000000"),
    ("b7 r0 = 0", asm.mov64_imm(R0, 0), "b700000000000000"),
    ("95 exit", asm.exit_(), "9500000000000000"),
    ("85 call bpf_map_lookup_elem#1", asm.call(asm.MAP_LOOKUP_ELEM), "8500000001000000"),
    ("7b *(u64 *)(r10 -8) = r1", asm.stx("dw", R10, R1, -8), "7b1af8ff00000000"),
    ("b4 w0 = 0xdead", asm.mov32_imm(R0, 0xDEAD), "b4000000adde0000"),
]


@pytest.mark.parametrize("text, insn, encoded", KNOWN, ids=[k[0] for k in KNOWN])
def test_each_instruction_encodes_as_the_kernel_prints_it(text: str, insn: asm.Insn,
                                                          encoded: str) -> None:
    assert insn.encode().hex() == encoded


def test_ld_map_fd_is_two_slots_with_the_pseudo_map_fd_source() -> None:
    # (18) r1 = map[fd 7]: src_reg 1 = BPF_PSEUDO_MAP_FD, second slot all zero.
    assert hexes(asm.assemble([asm.ld_map_fd(R1, 7)])) == ["1811000007000000",
                                                           "0000000000000000"]


def test_ld_imm64_splits_the_constant_into_low_and_high_halves() -> None:
    code = asm.assemble([asm.ld_imm64(R2, 0x1122334455667788)])
    assert hexes(code) == ["1802000088776655", "0000000044332211"]


def test_negative_immediates_wrap_to_32_bits() -> None:
    assert asm.alu64_imm("add", R1, 0xFFFFFFFF).encode() == asm.alu64_imm("add", R1, -1).encode()


def test_labels_resolve_to_offsets_relative_to_the_next_slot() -> None:
    code = asm.assemble([asm.jmp_imm("jeq", R0, 0, "out"), asm.ld_imm64(R1, 1),
                         asm.mov64_imm(R0, 1), asm.Label("out"), asm.exit_()])
    jump = asm.decode(code)[0]
    assert jump.off == 3  # skips the 2-slot ld_imm64 and the mov


def test_backward_jumps_get_negative_offsets() -> None:
    code = asm.assemble([asm.Label("top"), asm.alu64_imm("sub", R1, 1),
                         asm.jmp_imm("jne", R1, 0, "top"), asm.exit_()])
    assert asm.decode(code)[1].off == -2


def test_unknown_and_duplicate_labels_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown label"):
        asm.assemble([asm.ja("nowhere")])
    with pytest.raises(ValueError, match="defined twice"):
        asm.assemble([asm.Label("a"), asm.Label("a"), asm.exit_()])


def test_decode_reads_back_what_assemble_wrote() -> None:
    insns = [asm.stx("w", R10, R2, -12), asm.jmp_imm("jne", R2, 5, -3), asm.call(148)]
    assert asm.decode(asm.assemble(insns)) == insns


def test_decode_refuses_a_partial_instruction() -> None:
    with pytest.raises(ValueError):
        asm.decode(b"\x95" * 7)
