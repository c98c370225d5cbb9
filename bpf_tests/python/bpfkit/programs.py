"""The BPF programs the suite loads, assembled from Python (no clang in the guest)."""

from __future__ import annotations

from .asm import (COPY_FROM_USER, MAP_LOOKUP_ELEM, MAP_UPDATE_ELEM, R0, R1, R2, R3, R4, R6,
                  R7, R10, SPIN_LOCK, SPIN_UNLOCK, TIMER_INIT, Item, Label, alu64_imm, assemble, call,
                  exit_, jmp_imm, ld_imm64, ld_map_fd, ldx, mov32_imm, mov64_imm, mov64_reg,
                  st)

MISS = 0xDEAD  # returned when a lookup comes back NULL: no map value is ever 0xdead


def _lookup(fd_or_reg: tuple[str, int], key: int, slot: int, miss: str) -> list[Item]:
    """r0 = lookup(map, &key) with key stored at r10+slot; jump to miss on NULL."""
    kind, value = fd_or_reg
    load_map: Item = ld_map_fd(R1, value) if kind == "fd" else mov64_reg(R1, value)
    return [st("w", R10, slot, key), mov64_reg(R2, R10), alu64_imm("add", R2, slot),
            load_map, call(MAP_LOOKUP_ELEM), jmp_imm("jeq", R0, 0, miss)]


def read_inner_u32(outer_fd: int, inner_key: int) -> bytes:
    """return *(u32 *)lookup(lookup(outer, 0), inner_key): the elem_size/masking probe."""
    return assemble([*_lookup(("fd", outer_fd), 0, -4, "miss"),
                     *_lookup(("reg", R0), inner_key, -8, "miss"),
                     ldx("w", R0, R0, 0), exit_(),
                     Label("miss"), mov32_imm(R0, MISS), exit_()])


def lock_inner_value(outer_fd: int, lock_off: int) -> bytes:
    """bpf_spin_lock/unlock on the lock inside an inner map value."""
    return assemble([*_lookup(("fd", outer_fd), 0, -4, "miss"),
                     *_lookup(("reg", R0), 0, -8, "miss"),
                     mov64_reg(R6, R0),
                     mov64_reg(R1, R6), alu64_imm("add", R1, lock_off), call(SPIN_LOCK),
                     mov64_reg(R1, R6), alu64_imm("add", R1, lock_off), call(SPIN_UNLOCK),
                     Label("miss"), mov64_imm(R0, 0), exit_()])


def init_inner_timer(outer_fd: int, timer_off: int) -> bytes:
    """bpf_timer_init(&value->timer, inner_map, CLOCK_MONOTONIC) on an inner map value:
    the verifier needs the inner template's BTF to find the timer."""
    return assemble([*_lookup(("fd", outer_fd), 0, -4, "miss"),
                     mov64_reg(R6, R0),
                     *_lookup(("reg", R6), 0, -8, "miss"),
                     mov64_reg(R1, R0), alu64_imm("add", R1, timer_off),
                     mov64_reg(R2, R6), mov64_imm(R3, 1), call(TIMER_INIT),
                     Label("miss"), mov64_imm(R0, 0), exit_()])


def update_inner_after_fault(outer_fd: int, user_addr: int) -> bytes:
    """Sleepable: inner = outer[0]; copy_from_user(user_addr) (parks on a userfaultfd
    page); then update inner[0]: a use after free if the inner map went meanwhile.
    Returns the update's result (0), or MISS if outer[0] was empty."""
    return assemble([*_lookup(("fd", outer_fd), 0, -4, "miss"),
                     mov64_reg(R7, R0),
                     mov64_reg(R1, R10), alu64_imm("add", R1, -16), mov64_imm(R2, 8),
                     *ld_imm64(R3, user_addr), call(COPY_FROM_USER),
                     mov64_reg(R1, R7), mov64_reg(R2, R10), alu64_imm("add", R2, -4),
                     mov64_reg(R3, R10), alu64_imm("add", R3, -16), mov64_imm(R4, 0),
                     call(MAP_UPDATE_ELEM), exit_(),  # r0: the update's result
                     Label("miss"), mov32_imm(R0, MISS), exit_()])


def park_in_copy_from_user(user_addr: int) -> bytes:
    """Sleepable, no maps: holds an RCU tasks trace read section while parked."""
    return assemble([mov64_reg(R1, R10), alu64_imm("add", R1, -8), mov64_imm(R2, 8),
                     *ld_imm64(R3, user_addr), call(COPY_FROM_USER),
                     mov64_imm(R0, 1), exit_()])
