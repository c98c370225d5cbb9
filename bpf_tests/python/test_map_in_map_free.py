"""Freeing inner maps removed from an outer map while programs may still use them.

On a kernel with the fix the use-after-free tests pass when the program completes and
KASAN stays quiet. On a KASAN kernel without it (by release, or a variant reverting
it) the deterministic reproducer must make KASAN report, and the race may. A report is
caught twice: by taint bit 5 here, and from the console (between the kmsg markers)
by the harness, which ties it to the test. Without KASAN they can only show the
program completing.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from typing import Callable, Iterator

import pytest

from bpfkit import maps, programs
from bpfkit.asm import (MAP_UPDATE_ELEM, R0, R1, R2, R3, R4, R6, R7, R10, Label, alu64_imm,
                        assemble, call, exit_, jmp_imm, ld_map_fd, mov64_imm, mov64_reg, st,
                        stx)
from bpfkit.expect import Declared, Expectation, introduced
from bpfkit.park import Parked
from bpfkit.prog import load, run
from bpfkit.sysbpf import (F_SLEEPABLE, PROG_SOCKET_FILTER, PROG_SYSCALL, Fd, Map,
                           ProgLoadError, u32)
from bpfkit.taint import TAINT_BAD_PAGE, expect_kasan, kasan_built_in, read_taint
from bpfkit.uffd import UserFaultPage

FAULT_WAIT_S, RELEASE_WAIT_S = 10.0, 20.0


@pytest.fixture
def page() -> Iterator[UserFaultPage]:
    try:
        p = UserFaultPage()
    except OSError as e:
        pytest.skip(f"no userfaultfd ({errno.errorcode.get(e.errno or 0, e.errno)}): "
                    "CONFIG_USERFAULTFD unset or not permitted")
    yield p
    p.close()


def load_sleepable(code: bytes) -> Fd:
    try:
        return load(PROG_SYSCALL, code, flags=F_SLEEPABLE)
    except ProgLoadError as e:
        if "unknown func bpf_copy_from_user" in e.log:
            pytest.skip(f"bpf_copy_from_user unavailable to SYSCALL programs "
                        f"(CONFIG_BPF_EVENTS unset?): {e.log.strip()[-200:]}")
        raise


BLINDED = "taint bit 5 was already set"  # the lab reruns tests skipped so on a fresh boot


def skip_if_blinded(fix: Expectation, before: int) -> None:
    """KASAN reports once per boot and sets taint bit 5: once it is set, a new report
    cannot be told from the taint, with the fix or without it. Skipping (not passing
    without looking) sends the test to a fresh boot."""
    if before & TAINT_BAD_PAGE:
        pytest.skip(f"{BLINDED}: a new KASAN report could not be told from the taint "
                    f"({fix.state()})")


def judge_kasan(request: pytest.FixtureRequest, before: int, fix: Expectation, what: str,
                must_report: bool) -> None:
    """With the fix: no new KASAN taint. Without it, on a KASAN kernel: a report is
    expected, and required when the reproducer is deterministic (must_report); a race
    that was not won proves nothing either way (skip). Either way a taint already set
    before the test leaves it blind (skip_if_blinded)."""
    if not fix.present:
        expect_kasan(request)
    skip_if_blinded(fix, before)
    reported = bool(read_taint() & TAINT_BAD_PAGE)
    if fix.present:
        if reported:
            pytest.fail(f"KASAN (taint bit 5) during {what}: {fix.state()}; see the console "
                        "between the markers")
        return
    if not kasan_built_in():
        pytest.skip(f"{fix.state()}: kernel without KASAN, the use-after-free is silent")
    if must_report and not reported:
        pytest.fail(f"no KASAN report during {what}: {fix.state()}, so the use-after-free "
                    "was expected")
    if not reported:
        pytest.skip(f"{fix.state()}: the race was not won within the bounds ({what})")
    print(f"KASAN reported: {fix.state()}")


@introduced("20c20bd11a")
@introduced("8766733641")
def test_inner_map_replaced_under_a_parked_sleepable_program_is_not_used_after_free(
        commits: Declared, page: UserFaultPage, request: pytest.FixtureRequest) -> None:
    skip_if_blinded(commits["8766733641"], read_taint())  # before writing into freed memory
    inner = maps.array(4, 1)
    outer = maps.outer(inner)
    maps.put(outer, 0, inner)
    inner.close()  # from now on outer[0] holds the last reference
    prog = load_sleepable(programs.update_inner_after_fault(outer.fd, page.addr))
    before = read_taint()
    parked = Parked(prog, page)
    parked.start(FAULT_WAIT_S)  # the program holds the inner map, parked in copy_from_user
    maps.put(outer, 0, maps.array(4, 1))  # drops the old inner map's last reference
    time.sleep(1.0)  # room for an immediate (buggy) free to happen
    result = parked.release(RELEASE_WAIT_S)  # now it updates the old inner map
    judge_kasan(request, before, commits["8766733641"], "the parked program's inner map update",
                must_report=True)
    if commits["8766733641"].present:  # without the fix it wrote into freed memory
        assert result.retval == 0, f"inner update after the fault returned {result.retval:#x}"


RACE_UPDATES = 2048  # inner updates per run, after one outer lookup
RACE_RUNS, RACE_MAX_RUNS = 300, 100_000
RACE_MIN_S, RACE_BUDGET_S = 3.0, 15.0


def racing(runs: int, elapsed: float) -> bool:
    """At least RACE_MIN_S (native runs are fast, replacements wait for an RCU grace
    period) and RACE_RUNS runs, never past RACE_BUDGET_S or RACE_MAX_RUNS."""
    if elapsed >= RACE_BUDGET_S or runs >= RACE_MAX_RUNS:
        return False
    return elapsed < RACE_MIN_S or runs < RACE_RUNS


def update_loop(outer_fd: int) -> bytes:
    """inner = outer[0]; then RACE_UPDATES updates of inner[0] (a bounded loop)."""
    return assemble([
        st("w", R10, -4, 0), mov64_reg(R2, R10), alu64_imm("add", R2, -4),
        ld_map_fd(R1, outer_fd), call(1), jmp_imm("jeq", R0, 0, "out"),
        mov64_reg(R6, R0), mov64_imm(R7, RACE_UPDATES),
        Label("loop"), st("w", R10, -8, 0), stx("w", R10, R7, -12),
        mov64_reg(R1, R6), mov64_reg(R2, R10), alu64_imm("add", R2, -8),
        mov64_reg(R3, R10), alu64_imm("add", R3, -12), mov64_imm(R4, 0),
        call(MAP_UPDATE_ELEM), alu64_imm("sub", R7, 1), jmp_imm("jne", R7, 0, "loop"),
        Label("out"), mov64_imm(R0, 0), exit_()])


def inner_id(outer: Map) -> int:
    return int.from_bytes(outer.lookup(u32(0)), "little")


def replace_forever(outer_fd: int, budget: float) -> None:
    """Child: keep putting fresh inner maps into outer[0], each dropping the previous."""
    end = time.monotonic() + budget
    outer = Map(outer_fd, 4, 4)
    while time.monotonic() < end:
        maps.put(outer, 0, maps.array(4, 1))


@introduced("8766733641")
def test_inner_map_replaced_while_programs_update_it_is_not_used_after_free(
        commits: Declared, record_property: Callable[[str, object], None],
        request: pytest.FixtureRequest) -> None:
    if os.cpu_count() == 1:
        pytest.skip("one CPU: the replacing child cannot run during a program run")
    skip_if_blinded(commits["8766733641"], read_taint())  # before racing for nothing
    outer = maps.outer(maps.array(4, 1))
    maps.put(outer, 0, maps.array(4, 1))
    prog = load(PROG_SOCKET_FILTER, update_loop(outer.fd))
    first_id = inner_id(outer)
    before = read_taint()
    pid = os.fork()
    if pid == 0:
        try:
            replace_forever(outer.fd, RACE_BUDGET_S + 5)
        finally:
            os._exit(0)
    start = time.monotonic()
    runs = 0
    try:
        while racing(runs, time.monotonic() - start):
            assert run(prog, data=bytes(64)).retval == 0
            runs += 1
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    last_id = inner_id(outer)
    record_property("racing_runs", runs)
    record_property("inner_map_ids", f"{first_id}..{last_id}")
    assert runs > 0 and last_id != first_id, "no race happened: nothing was replaced"
    judge_kasan(request, before, commits["8766733641"], f"{runs} racing runs",
                must_report=False)


VMALLOC_BIG = (4096, 16384)  # value size x entries: a 64 MiB vmalloc'ed inner ARRAY
FREED_KIB = 48 * 1024
PARKED_WINDOW_S = 5.0  # an RCU grace period plus a work item: far less, even under TCG


def vmalloc_used_kib() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("VmallocUsed:"):
                return int(line.split()[1])
    raise RuntimeError("no VmallocUsed in /proc/meminfo")


def freed_within(baseline: int, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if vmalloc_used_kib() <= baseline - FREED_KIB:
            return True
        time.sleep(0.05)
    return False


def free_timing(page: UserFaultPage, blocker_uses_outer: bool) -> tuple[bool, bool]:
    """Remove a 64 MiB inner map while a sleepable program is parked: (freed while
    parked, freed once it finished). The program may reference the outer map or not."""
    inner = maps.array(*VMALLOC_BIG)
    outer = maps.outer(inner)
    maps.put(outer, 0, inner)
    inner.close()
    code = programs.park_in_copy_from_user(page.addr)
    if blocker_uses_outer:  # a map load puts the outer map in the program's used maps
        code = assemble([ld_map_fd(R1, outer.fd)]) + code
    parked = Parked(load_sleepable(code), page)
    parked.start(FAULT_WAIT_S)
    baseline = vmalloc_used_kib()
    outer.delete(u32(0))
    while_parked = freed_within(baseline, PARKED_WINDOW_S)
    parked.release(RELEASE_WAIT_S)
    return while_parked, while_parked or freed_within(baseline, 10.0)


@introduced("8766733641")
def test_inner_map_of_an_outer_map_used_by_a_sleepable_program_outlives_the_program(
        commits: Declared, page: UserFaultPage) -> None:
    # The deferred free without KASAN: removed inner maps wait for an RCU tasks trace
    # grace period, which a parked sleepable program holds off.
    while_parked, after = free_timing(page, blocker_uses_outer=True)
    commits["8766733641"].check(("freed while parked", while_parked, "freed", after),
                                new=("freed while parked", False, "freed", True),
                                old=("freed while parked", True, "freed", True))


@introduced("8766733641")
@introduced("af66bfd3c8")
def test_inner_map_unused_by_sleepable_programs_is_freed_without_waiting_for_them(
        commits: Declared, page: UserFaultPage) -> None:
    # af66bfd3c8 skips the tasks trace wait when no sleepable program uses the outer
    # map; with 8766733641 alone the wait is unconditional; before both, no wait.
    while_parked, after = free_timing(page, blocker_uses_outer=False)
    old = not commits["8766733641"].present
    commits["af66bfd3c8"].check(("freed while parked", while_parked, "freed", after),
                                new=("freed while parked", True, "freed", True),
                                old=("freed while parked", old, "freed", True))
