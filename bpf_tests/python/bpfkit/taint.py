"""KASAN seen from user space: taint bit 5, and whether the kernel has KASAN at all.

A test that expects a KASAN report (a use-after-free reproducer on a kernel without
the fix) says so with expect_kasan(request): the suite's marker fixture then does not
fail it for the taint, and the harness ties the console report to it."""

from __future__ import annotations

import pytest

TAINT_BAD_PAGE = 1 << 5  # KASAN's end_report() sets it (6.1 and later)
KASAN_EXPECTED = pytest.StashKey[bool]()
_KASAN_SYMBOLS = ("kasan_report", "__kasan_report")


def read_taint() -> int:
    with open("/proc/sys/kernel/tainted") as f:
        return int(f.read())


def kasan_built_in(kallsyms: str = "/proc/kallsyms") -> bool:
    """What the kernel was built with (its symbol table), not what a test provoked."""
    with open(kallsyms) as f:
        return any(line.split()[2] in _KASAN_SYMBOLS for line in f if len(line.split()) > 2)


def expect_kasan(request: pytest.FixtureRequest) -> None:
    request.node.stash[KASAN_EXPECTED] = True
