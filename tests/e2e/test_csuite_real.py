"""End to end: the C suite built for both arches against the lab's kernels' BTF, and
the x86_64 binary run for real on the host's kernel (real bpf(), real /dev/kmsg)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from harness import commits, csuite
from harness.config import load_lab
from harness.junit import from_tap
from harness.ops import Ops
from harness.results import Status

from .conftest import ARCHES, lab_kernel

pytestmark = pytest.mark.e2e
TEST_NAMES = ["spin_lock_in_inner_map", "timer_in_inner_map", "kptr_in_inner_map",
              "sleepable_uaf_inner_map_free", "race_kprobe_inner_map_free",
              "race_sleepable_fentry_inner_map_free"]
X86, ARM64 = ARCHES["x86_64"], ARCHES["arm64"]


def kmsg_markers(since: float) -> list[str]:
    """Our markers in the kernel log, from /dev/kmsg (non-blocking, bounded)."""
    boot = time.clock_gettime(time.CLOCK_MONOTONIC) - (time.time() - since)
    found: list[str] = []
    fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    try:
        for _ in range(1_000_000):
            try:
                record = os.read(fd, 8192).decode("ascii", "replace")
            except BlockingIOError:
                break
            except BrokenPipeError:  # overwritten records: keep reading
                continue
            prefix, _, text = record.partition(";")
            usec = int(prefix.split(",")[2])
            if usec / 1e6 >= boot - 1 and "bpflab: " in text and " map_in_map::" in text:
                found.append(text.strip())
    finally:
        os.close(fd)
    return found



def test_the_suite_builds_for_both_arches_and_runs_on_the_host_kernel(tmp_path: Path) -> None:
    lab = load_lab()
    ops = Ops(verbose=False)
    arm = csuite.build_c_suite(lab.workdir, ARM64, lab_kernel("arm64").vmlinux, ops)
    assert csuite.elf_info(arm) == csuite.ElfInfo(183, True)
    described = subprocess.run(["file", "-b", str(arm)], capture_output=True, text=True)
    assert "ARM aarch64" in described.stdout and "statically linked" in described.stdout
    x86 = csuite.build_c_suite(lab.workdir, X86, lab_kernel("x86_64").vmlinux, ops)
    started = time.time()
    identity = commits.Identity(os.uname().release, version=os.uname().version)
    listing = tmp_path / "commits.txt"
    listing.write_text(commits.render(commits.decide(commits.load_table(), identity), identity))
    run = subprocess.run([str(x86)], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "BPFLAB_COMMITS": str(listing)})
    cases = list(from_tap(run.stdout.splitlines(), "c", "c.map_in_map").cases)
    assert run.stdout.startswith(f"TAP version 13\n1..{len(TEST_NAMES)}\n")
    assert [c.name for c in cases] == TEST_NAMES
    # The host kernel (newer than every commit) must show every new behaviour; the
    # use-after-free tests may skip (taint set by someone else, no kprobes/fentry.s).
    assert all(c.status is Status.PASS for c in cases[:3]), run.stdout
    assert all(c.status in (Status.PASS, Status.SKIP) for c in cases[3:]), run.stdout
    assert run.returncode == 0
    markers = kmsg_markers(started)
    for case in cases:
        outcome = {Status.PASS: "pass", Status.SKIP: "skip"}[case.status]
        assert f"bpflab: begin map_in_map::{case.name}" in markers
        assert f"bpflab: end map_in_map::{case.name} {outcome}" in markers
