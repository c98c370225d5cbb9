"""Inlined inner ARRAY lookups: the element size and the spectre v1 index mask."""

from __future__ import annotations

import pytest

from bpfkit import asm, maps, programs
from bpfkit.caps import CAP_PERFMON, CAP_SYS_ADMIN, without_caps
from bpfkit.expect import Declared, introduced
from bpfkit.prog import load, run, xlated
from bpfkit.sysbpf import PROG_SOCKET_FILTER, Fd, Map, u32

PACKET = bytes(64)  # test runs of socket filters need at least an Ethernet header


@introduced("d937bc3449")  # arraymap.c: elem_size everywhere (the bug)
@introduced("cba41bb78d")
def test_inlined_inner_array_lookup_reads_the_requested_element(
        commits: Declared, jit_enabled: None) -> None:
    # Without BPF_F_INNER_MAP the verifier inlines the inner lookup from the template,
    # whose elem_size was left 0 between d937bc3449 and cba41bb78d: every key read [0].
    inner = maps.array(4, 4)
    inner.update(u32(0), u32(0x1111))
    inner.update(u32(1), u32(0x2222))
    outer = maps.outer(inner)
    maps.put(outer, 0, inner)
    prog = load(PROG_SOCKET_FILTER, programs.read_inner_u32(outer.fd, 1))
    got = run(prog, data=PACKET).retval
    buggy = 0x1111 if commits["d937bc3449"].present else 0x2222
    commits["cba41bb78d"].check(hex(got), new=hex(0x2222), old=hex(buggy))


INNER_ENTRIES, INNER_MASK = 5, 7  # index_mask = roundup_pow_of_two(5) - 1


def inner_masked(inner_fds: list[int]) -> bool:
    """Load the two-level lookup as root; is the inner bounds check followed by the mask?"""
    inner = Map(inner_fds[0], 4, 4)
    outer = maps.outer(inner)  # made here, by root: its own lookup is never masked
    insns = xlated(load(PROG_SOCKET_FILTER, programs.read_inner_u32(outer.fd, 1)))
    jge = asm.JMP | asm.JMP_OPS["jge"] | asm.K
    and32 = asm.ALU | asm.ALU_OPS["and"] | asm.K
    for pos, insn in enumerate(insns[:-1]):
        if insn.code == jge and insn.imm == INNER_ENTRIES:
            nxt = insns[pos + 1]
            return nxt.code == and32 and nxt.dst == asm.R0 and nxt.imm == INNER_MASK
    raise AssertionError("no inlined inner lookup (if r0 >= 5) in the translated program: "
                         f"{[hex(i.code) for i in insns]}")


def make_inner() -> list[Fd]:
    return [maps.array(4, INNER_ENTRIES)]


def mitigations_off() -> bool:
    with open("/proc/cmdline") as f:
        return "mitigations=off" in f.read().split()


@pytest.fixture
def spectre_v1_on() -> None:
    if mitigations_off():
        pytest.skip("mitigations=off: newer kernels then skip all spectre v1 masking "
                    "(cpu_mitigations_off(), unrelated to map-in-map)")


@introduced("9d5564ddcf")
def test_inner_array_made_without_perfmon_or_sys_admin_is_index_masked(
        commits: Declared, jit_enabled: None, spectre_v1_on: None) -> None:
    # CAP_BPF stays: with kernel.unprivileged_bpf_disabled set, bpf() needs it at all.
    fds = without_caps([CAP_SYS_ADMIN, CAP_PERFMON], make_inner)
    commits["9d5564ddcf"].check(inner_masked(fds), new=True, old=False)


@introduced("9d5564ddcf")
@introduced("2c78ee898d")
def test_inner_array_made_with_perfmon_alone_is_not_masked(
        commits: Declared, jit_enabled: None, spectre_v1_on: None) -> None:
    # 2c78ee898d: bypass_spec_v1 = perfmon_capable(); before, only CAP_SYS_ADMIN bypassed.
    fds = without_caps([CAP_SYS_ADMIN], make_inner)
    old = commits["9d5564ddcf"].present
    commits["2c78ee898d"].check(inner_masked(fds), new=False, old=old)
