"""The leak test's host-side parts: kmemleak's report read back into objects."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bpf_tests" / "python"))

from bpfkit import leaks  # noqa: E402
from bpfkit.leaks import Sweep, parse_kmemleak  # noqa: E402

DATA = Path(__file__).parent / "data" / "kmemleak"

# Since 6.7 the header has the age again and the backtrace a crc, without addresses.
NEWER = """unreferenced object 0xffff888104e1d800 (size 512):
  comm "python3", pid 214, jiffies 4294937511 (age 12.504s)
  hex dump (first 32 bytes):
    00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00  ................
  backtrace (crc 5b3c1f9a):
    __kmalloc+0x4b/0x60
    bpf_map_meta_alloc.isra.0+0x6c/0x340
    array_of_map_alloc+0x2d/0x90
unreferenced object 0xffff888104e1e000 (size 64):
  comm "swapper/0", pid 1, jiffies 4294892296 (age 57.720s)
  backtrace (crc 0):
    kmemdup+0x1d/0x40
"""


def test_a_recorded_report_of_the_leak_inject_kernel_reads_as_its_three_templates() -> None:
    # Recorded from /sys/kernel/debug/kmemleak on the lab's x86_64 6.1.192 leak-inject
    # kernel after the leak test: 6.1 prints no age and hashed addresses.
    leaks = parse_kmemleak((DATA / "x86_64_6.1.192_leak_inject.txt").read_text())
    assert [(x.size, x.comm, x.pid, x.age_s) for x in leaks] == [(512, "python3", 58, None)] * 3
    assert all(x.allocated_in("bpf_map_meta_alloc") for x in leaks)
    assert leaks[0].backtrace[:4] == ("__kmem_cache_alloc_node", "__kmalloc",
                                      "bpf_map_meta_alloc", "array_of_map_alloc")
    assert leaks[0].address == "0xff1100000938b800"
    assert str(leaks[0]).startswith("512 bytes at 0xff1100000938b800 by python3 (pid 58): "
                                    "__kmem_cache_alloc_node <- __kmalloc <- bpf_map_meta_alloc")


def test_the_newer_format_reads_with_age_and_bare_frames() -> None:
    first, second = parse_kmemleak(NEWER)
    assert (first.pid, first.age_s, first.backtrace) == (
        214, 12.504, ("__kmalloc", "bpf_map_meta_alloc.isra.0", "array_of_map_alloc"))
    # compiler suffixes (.isra.0, .constprop.0) name the same function
    assert first.allocated_in("bpf_map_meta_alloc") and not first.allocated_in("bpf_map")
    assert (second.comm, second.backtrace) == ("swapper/0", ("kmemdup",))


def test_nothing_leaked_reads_as_no_objects() -> None:
    assert parse_kmemleak("") == [] and parse_kmemleak("kmemleak: disabled\n") == []


def test_a_sweep_counts_the_faults_that_failed_the_call() -> None:
    sweep = Sweep((12, 0, 12, 0), 0)
    assert sweep.failed == 2
    assert str(sweep) == "4 injected faults (ENOMEM ok ENOMEM ok); clean run: 0"


def test_the_final_scan_reports_bpf_leaks_once_and_leaves_the_rest(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """After a boot's tests: kmemleak's objects in BPF code go to the kernel log, except
    those a test has already written there; objects of boot and drivers stay out."""
    kmemleak = tmp_path / "kmemleak"
    kmemleak.write_text(NEWER + NEWER.replace("0xffff888104e1d800", "0xffff888104e1f000"))
    reported = tmp_path / "reported"
    reported.write_text("0xffff888104e1d800\n")  # the leak test's, already in the log
    written: list[bytes] = []
    monkeypatch.setattr(leaks, "KMEMLEAK", str(kmemleak))
    monkeypatch.setattr(leaks, "REPORTED", str(reported))
    monkeypatch.setattr(leaks, "MIN_AGE_S", 0.0)
    monkeypatch.setattr(leaks, "scan", lambda: None)
    monkeypatch.setattr(leaks, "write_kmsg", written.append)
    assert leaks.final_scan() == 0
    assert written and all(b"0xffff888104e1d800" not in line for line in written)
    assert written[0].startswith(b"<3>unreferenced object 0xffff888104e1f000 (size 512)")
    out = capsys.readouterr().out
    assert "1 unreferenced object(s) in BPF code, 2 elsewhere" in out  # swapper twice


def test_the_final_scan_without_kmemleak_says_so(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(leaks, "KMEMLEAK", str(tmp_path / "none"))
    assert leaks.final_scan() == 2
