"""End to end: the lab's own fault variants (labs/faults.yaml) through ./lab matrix on
real kernels, and a guest killed from the host mid-test: each fault is a recorded
result with its verdict, exit code and words, never a pass."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
PROJECT = Path(__file__).resolve().parents[2]
LAB = PROJECT / "labs" / "faults.yaml"
TARGET = "v6.1.192__x86_64__"
# The C race runs 8 s on a fixed kernel: long enough to be killed inside it.
KILLED_IN = "map_in_map::race_kprobe_inner_map_free"
PANICS_IN = "test_map_in_map_basic.py::test_cgroup_storage_maps_are_refused_as_inner_maps[shared]"


def lab_matrix(variant: str, run_dir: Path) -> subprocess.Popen[bytes]:
    """./lab matrix on one fault variant; its output goes to a file next to the run
    (a pipe nobody reads while the test waits would stall the lab once full)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with output_of(run_dir).open("wb") as out:
        return subprocess.Popen([str(PROJECT / "lab"), "matrix", "--lab", str(LAB),
                                 "--variant", variant, "--run-dir", str(run_dir)],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def output_of(run_dir: Path) -> Path:
    return run_dir.parent / f"{run_dir.name}.out"


def finish(proc: subprocess.Popen[bytes], run_dir: Path,
           limit: float = 2400) -> tuple[int, str, float]:
    started = time.monotonic()
    try:
        proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        stop(proc)
        pytest.fail(f"./lab matrix did not finish in {limit} s:\n{tail(run_dir)}")
    return proc.returncode, tail(run_dir), time.monotonic() - started


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the lab we started and its QEMU (its own process group), and wait."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    proc.wait(timeout=60)


def tail(run_dir: Path) -> str:
    return output_of(run_dir).read_text(errors="replace")[-6000:]


def live_console(run_dir: Path) -> Path | None:
    found = re.search(r"live: (\S+/console\.log)",
                      output_of(run_dir).read_text(errors="replace"))
    return Path(found[1]) if found else None


def outcome(run_dir: Path, variant: str) -> dict[str, object]:
    return json.loads((run_dir / "targets" / f"{TARGET}{variant}" / "metadata.json")
                      .read_text())


def junit(run_dir: Path, variant: str) -> str:
    return (run_dir / "targets" / f"{TARGET}{variant}" / "junit.xml").read_text()


def test_a_patch_that_does_not_compile_is_a_failed_build(tmp_path: Path) -> None:
    code, out, _ = finish(lab_matrix("compile-error", tmp_path), tmp_path)
    assert code == 1, out[-3000:]
    m = outcome(tmp_path, "compile-error")
    assert m["stages"] == {"build": "fail", "boot": "skip", "tests": "skip"}
    assert "undeclared_on_purpose" in str(m["reason"])
    assert "build fail" in out


@pytest.mark.parametrize(("variant", "state", "words"), [
    ("boot-panic", "panic", "bpflab fault variant: panic at boot"),
    ("boot-hang", "hang", "console silent"),
])
def test_a_kernel_that_dies_at_boot_is_a_failed_boot(tmp_path: Path, variant: str,
                                                     state: str, words: str) -> None:
    code, out, _ = finish(lab_matrix(variant, tmp_path), tmp_path)
    assert code == 1, out[-3000:]
    m = outcome(tmp_path, variant)
    assert m["stages"] == {"build": "pass", "boot": "fail", "tests": "skip"}
    assert m["exit_reason"] == state and words in str(m["reason"]), m["reason"]
    assert f"boot {state}" in out  # the table's cell: short, lower case
    assert "not run: the kernel did not boot" in junit(tmp_path, variant)


def test_a_kernel_that_panics_inside_a_test_fails_that_test_and_the_rest_still_runs(
        tmp_path: Path) -> None:
    code, out, _ = finish(lab_matrix("test-panic", tmp_path), tmp_path)
    assert code == 1, out[-3000:]
    m = outcome(tmp_path, "test-panic")
    assert m["stages"] == {"build": "pass", "boot": "pass", "tests": "fail"}
    # 2 boots, or 3 when the fresh one printed the lab's known early-boot report
    # (KASAN reports once per boot: that boot is no use for the UAF reruns)
    assert m["boots"] in (2, 3)
    counts = m["counts"]
    assert isinstance(counts, dict) and counts["error"] == 1 and counts["fail"] == 0
    reports = m["reports"]
    assert isinstance(reports, list)
    # the panic is the one report not expected (a known early-boot report may precede it)
    [panic] = [r for r in reports if not r["expected"]]
    assert panic["test"] == PANICS_IN, reports
    assert "bpflab fault variant: panic inside a test" in panic["signature"]
    assert PANICS_IN in str(m["reason"])
    page = (tmp_path / "index.html").read_text()
    assert "panic inside a test" in page


def test_a_guest_killed_from_the_host_mid_test_is_an_error_on_that_test(
        tmp_path: Path) -> None:
    proc = lab_matrix("base", tmp_path)
    deadline = time.monotonic() + 2400
    while time.monotonic() < deadline and proc.poll() is None:
        console = live_console(tmp_path)  # the lab says where the guest's console is
        if console and console.exists() and f"bpflab: begin {KILLED_IN}" in \
                console.read_text(errors="replace"):
            break
        time.sleep(0.2)
    killed = kill_qemu_under(proc.pid)
    if not killed:
        stop(proc)
        pytest.fail(f"no QEMU of ours ran {KILLED_IN} (lab exit {proc.returncode}):\n"
                    f"{tail(tmp_path)}")
    code, out, _ = finish(proc, tmp_path)
    assert code == 1, out[-3000:]
    m = outcome(tmp_path, "base")
    assert m["stages"] == {"build": "pass", "boot": "pass", "tests": "fail"}
    assert m["boots"] in (2, 3) and KILLED_IN in str(m["reason"])
    counts = m["counts"]
    assert isinstance(counts, dict) and counts["error"] == 1
    assert counts["pass"] + counts["skip"] == counts["total"] - 1
    assert "the guest died during this test" in junit(tmp_path, "base")


def kill_qemu_under(root: int) -> list[int]:
    """SIGKILL the QEMU processes descended from `root` (the lab we started), by pid."""
    parents: dict[int, int] = {}
    names: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            names[int(entry.name)] = (entry / "cmdline").read_bytes().split(b"\0")[0].decode()
        except OSError:
            continue
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])

    def ours(pid: int) -> bool:
        while pid > 1:
            if pid == root:
                return True
            pid = parents.get(pid, 0)
        return False
    victims = [p for p, n in names.items() if "qemu-system" in n and ours(p)]
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    return victims
