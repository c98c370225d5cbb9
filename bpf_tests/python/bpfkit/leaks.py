"""Kernel memory leaks: slab fault injection through fail-nth, and kmemleak's verdict.

fail-nth (CONFIG_FAULT_INJECTION, CONFIG_FAILSLAB): writing N to
/proc/thread-self/fail-nth makes the N-th slab allocation of this thread fail; reading
it back gives 0 once the fault was injected, else what is left of N. failslab skips
allocations that may sleep unless its ignore-gfp-wait knob is off, and counts only
those it does not skip, so the sweep turns the knob off for its duration.

kmemleak (CONFIG_DEBUG_KMEMLEAK): an allocated object that no other memory points to
is reported once it is older than 5 s and unchanged since the previous scan, so a
caller waits and scans twice before reading /sys/kernel/debug/kmemleak.
"""

from __future__ import annotations

import errno
import os
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

from .markers import write_kmsg
from .sysbpf import BpfError

DEBUGFS = "/sys/kernel/debug"
KMEMLEAK = f"{DEBUGFS}/kmemleak"
FAILSLAB = f"{DEBUGFS}/failslab"
FAIL_NTH = "/proc/thread-self/fail-nth"
MIN_AGE_S = 5.0  # kmemleak's MSECS_MIN_AGE: younger objects are never reported

_OBJECT = re.compile(r"^unreferenced object (0x[0-9a-f]+) \(size (\d+)\):")
_COMM = re.compile(r'^\s+comm "(.*)", pid (\d+), jiffies \d+(?: \(age ([\d.]+)s\))?')
# "[<ffffffff8123>] kmalloc_trace+0x26/0x90" (up to 6.6) or "kmalloc_trace+0x26/0x90"
_FRAME = re.compile(r"^\s+(?:\[<[0-9a-f]+>\]\s+)?([A-Za-z0-9_.$]+)\+0x[0-9a-f]+/0x[0-9a-f]+")


@dataclass(frozen=True)
class Leak:
    """One object kmemleak reports as unreferenced."""

    address: str
    size: int
    comm: str
    pid: int
    age_s: float | None
    backtrace: tuple[str, ...]  # function names, innermost first
    lines: tuple[str, ...] = ()  # the record as kmemleak printed it

    def allocated_in(self, function: str) -> bool:
        """Is function in the backtrace (compiler suffixes such as .isra.0 ignored)?"""
        return any(frame.split(".", 1)[0] == function for frame in self.backtrace)

    def __str__(self) -> str:
        return (f"{self.size} bytes at {self.address} by {self.comm} (pid {self.pid}): "
                + " <- ".join(self.backtrace))


def parse_kmemleak(text: str) -> list[Leak]:
    """The objects in a read of /sys/kernel/debug/kmemleak, in the order listed."""
    leaks: list[Leak] = []
    head: tuple[str, int] | None = None
    comm, pid, age = "", 0, None
    frames: list[str] = []
    raw: list[str] = []
    in_trace = False

    def close() -> None:
        if head is not None:
            leaks.append(Leak(head[0], head[1], comm, pid, age, tuple(frames), tuple(raw)))

    for line in text.splitlines():
        m = _OBJECT.match(line)
        if m:
            close()
            head, comm, pid, age, frames, in_trace = (m[1], int(m[2])), "", 0, None, [], False
            raw = [line]
            continue
        if head is None:
            continue
        raw.append(line)
        m = _COMM.match(line)
        if m:
            comm, pid, age = m[1], int(m[2]), float(m[3]) if m[3] else None
        elif line.strip().startswith("backtrace"):
            in_trace = True
        elif in_trace:
            f = _FRAME.match(line)
            if f:
                frames.append(f[1])
    close()
    return leaks


def missing() -> str | None:
    """Why this kernel cannot run a leak test, or None."""
    if not os.path.ismount(DEBUGFS):
        return f"debugfs is not mounted on {DEBUGFS}"
    for path, option in ((KMEMLEAK, "CONFIG_DEBUG_KMEMLEAK"),
                         (FAIL_NTH, "CONFIG_FAULT_INJECTION"),
                         (FAILSLAB, "CONFIG_FAILSLAB and CONFIG_FAULT_INJECTION_DEBUG_FS")):
        if not os.path.exists(path):
            return f"no {path}: the kernel lacks {option}"
    return None


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


@contextmanager
def failslab_on_every_allocation() -> Iterator[None]:
    """Let fail-nth reach allocations that may sleep (GFP_KERNEL, GFP_USER), quietly."""
    knobs = {"ignore-gfp-wait": "N", "verbose": "0"}
    saved = {k: _read(f"{FAILSLAB}/{k}").strip() for k in knobs}
    try:
        for knob, value in knobs.items():
            _write(f"{FAILSLAB}/{knob}", value)
        yield
    finally:
        for knob, value in saved.items():
            _write(f"{FAILSLAB}/{knob}", value)


@dataclass(frozen=True)
class Sweep:
    """Outcomes (errno, 0 for success) of a call with its n-th allocation failing."""

    outcomes: tuple[int, ...]  # index n-1: the run where allocation n failed
    clean: int  # outcome of the first run in which no fault was injected

    @property
    def failed(self) -> int:
        """Injected faults that failed the call (the others were tolerated)."""
        return sum(1 for e in self.outcomes if e)

    def __str__(self) -> str:
        names = [errno.errorcode.get(e, str(e)) if e else "ok" for e in self.outcomes]
        return f"{len(self.outcomes)} injected faults ({' '.join(names)}); clean run: {self.clean}"


def sweep_fail_nth(call: Callable[[], object], limit: int = 200) -> Sweep:
    """Run call with allocation n = 1, 2, ... failing, until one run injects nothing.

    call should do nothing but the syscall under test (prepare its arguments
    beforehand): any allocation of the thread between the write and the read of
    fail-nth counts. What call returns is dropped only after that read, so closing it
    is never a run's n-th allocation.
    """
    outcomes: list[int] = []
    fd = os.open(FAIL_NTH, os.O_RDWR)
    try:
        for n in range(1, limit + 1):
            kept, outcome = None, 0
            os.write(fd, b"%d" % n)
            try:
                kept = call()
            except BpfError as e:
                outcome = int(e.errno or 0)
            left = int(os.pread(fd, 32, 0))
            os.write(fd, b"0")
            del kept
            if left:
                return Sweep(tuple(outcomes), outcome)
            outcomes.append(outcome)
    finally:
        os.write(fd, b"0")
        os.close(fd)
    raise AssertionError(f"{limit} allocations failed one by one and the call still "
                         f"allocated more: {outcomes[-5:]}")


# The objects already written to the kernel log in this boot, so that the final scan
# does not report a test's leak a second time (kmemleak lists it until it is freed).
REPORTED = "/tmp/bpflab-reported-leaks"


def to_kernel_log(found: list[Leak], limit: int = 16) -> None:
    """Each leak's record into the kernel log, line by line, between the running
    test's markers: the lab's console parser makes a `memory leak in ...` report of
    each, tied to the test, like any other kernel report."""
    for leak in found[:limit]:
        for line in leak.lines:
            text = "".join(c if 32 <= ord(c) < 127 else "?" for c in line)
            write_kmsg(f"<3>{text}\n".encode("ascii"))
    try:
        with open(REPORTED, "a") as f:
            f.writelines(f"{leak.address}\n" for leak in found)
    except OSError:
        pass  # the final scan may then report them again: seen, never lost


def _reported() -> set[str]:
    try:
        return set(_read(REPORTED).split())
    except OSError:
        return set()


def scan() -> None:
    _write(KMEMLEAK, "scan")


def leaks_of_this_process(start: float) -> list[Leak]:
    """What kmemleak reports as leaked by this process (its pid, so earlier tests of
    the same pytest run count too), once every object allocated since
    time.monotonic() == start is old enough to be reported.

    Not filtered by the age kmemleak prints (6.1.190 does, 6.1.192 does not): it is
    counted in jiffies, which under TCG ran ahead of CLOCK_MONOTONIC here (an object
    allocated in the window was printed older than the window)."""
    wait = start + MIN_AGE_S + 1.0 - time.monotonic()
    if wait > 0:
        time.sleep(wait)
    # Twice: an object whose contents changed since the previous scan is not reported.
    scan()
    scan()
    return [leak for leak in parse_kmemleak(_read(KMEMLEAK)) if leak.pid == os.getpid()]


# A frame of the BPF subsystem: what the final scan keeps (kmemleak also lists objects
# of early boot and drivers that only look unreferenced; the lab answers for BPF).
_BPF_FRAME = re.compile(r"^(__)?(bpf|btf|array_map|htab|fd_array|map_)|_map_(alloc|update)")


def in_bpf(leak: Leak) -> bool:
    return any(_BPF_FRAME.search(frame) for frame in leak.backtrace)


def final_scan() -> int:
    """After the suites of a boot: what kmemleak finds unreferenced in BPF code goes to
    the kernel log (outside any test: the lab's console parser makes each a `memory
    leak in ...` report against the kernel's health). Prints what it did; 0, or 2
    when the kernel has no kmemleak."""
    if not os.path.exists(KMEMLEAK):
        print(f"final kmemleak scan: no {KMEMLEAK}, nothing scanned")
        return 2
    time.sleep(MIN_AGE_S + 1.0)  # the last test's objects old enough to be reported
    scan()
    scan()
    told = _reported()
    found = [leak for leak in parse_kmemleak(_read(KMEMLEAK)) if leak.address not in told]
    mine = [leak for leak in found if in_bpf(leak)]
    to_kernel_log(mine)
    print(f"final kmemleak scan: {len(mine)} unreferenced object(s) in BPF code, "
          f"{len(found) - len(mine)} elsewhere (not the lab's to judge)")
    for leak in mine:
        print(f"  {leak}")
    return 0


if __name__ == "__main__":
    raise SystemExit(final_scan())
