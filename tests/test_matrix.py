"""The matrix end to end over fakes at the two seams: the fake kbuild tree for builds,
and a fake boot (QEMU + SSH) replaying a recorded console. Stores, resumes, reports."""

from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from harness import matrix as mx
from harness.config import load_lab
from harness.console import State
from harness.main import EXIT_FAILED, EXIT_LAB, EXIT_OK, Session
from harness.ops import Ops
from harness.ssh import CommandResult

DATA = Path(__file__).parent / "data"
CLEAN_BOOT = DATA / "console" / "x86_64_lean_init_clean_boot.log"
JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">
<testcase classname="test_map_in_map_basic" name="test_lookup_returns_inner_id" time="0.1"/>
<testcase classname="test_map_in_map_btf" name="test_spin_lock" time="0.2">{result}</testcase>
</testsuite></testsuites>"""


C_TAP = "TAP version 13\n1..1\nok 1 - spin_lock_in_inner_map\n"


def fake_c_suite(workdir: Path, arch: Any, vmlinux: Path, ops: Any) -> Path:
    binary = workdir / "fake-csuite" / arch.name / "bpf_map_in_map"
    binary.parent.mkdir(parents=True, exist_ok=True)
    binary.write_bytes(b"\x7fELF fake")
    return binary


class FakeSSH:
    def __init__(self, result: str, tainted: bool = False) -> None:
        self.result = result
        self.taints = tainted  # the Python suite makes KASAN report
        self.tainted = False
        self.commands: list[str] = []

    def run(self, command: str, timeout: float = 60.0, check: bool = False) -> CommandResult:
        self.commands.append(command)
        out = C_TAP if "bpf_map_in_map" in command else ""
        if "pytest" in command and self.taints:
            self.tainted = True
        if "kernel/tainted" in command:
            out = "32\n" if self.tainted else "0\n"
        return CommandResult(command, 0, out, "", 0.01)

    def put(self, local: Path, remote: str) -> None:
        assert local.exists()

    def get(self, remote: str, local: Path) -> None:
        local.write_text(JUNIT.format(result=self.result))


class FakeBooted:
    def __init__(self, run_dir: Path, ready: bool, result: str, tainted: bool = False) -> None:
        self.outcome = type("O", (), {"ready": ready, "accel": "tcg", "ssh_ready_s": 4.2,
                                      "state": State.READY if ready else State.PANIC,
                                      "reason": "ssh answered" if ready else "panic"})()
        self.ssh = FakeSSH(result, tainted)
        self.guest = type("G", (), {"console_log": run_dir / "console.log"})()


def fake_boot(calls: list[str], crash_on: int | None = None, ready: bool = True,
              result: str = "", tainted: bool = False) -> Callable[..., Any]:
    @contextmanager
    def boot(workdir: Path, arch: Any, image: Path, options: Any,
             run_dir: Path) -> Iterator[FakeBooted]:
        calls.append(str(image))
        if crash_on is not None and len(calls) == crash_on:
            raise KeyboardInterrupt
        run_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(CLEAN_BOOT, run_dir / "console.log")
        yield FakeBooted(run_dir, ready, result, tainted)
    return boot


def run_matrix(*args: Any) -> int:
    return mx.matrix(*args, c_suite_fn=fake_c_suite)


@pytest.fixture
def session(fake_tree: Path, tmp_path: Path) -> Session:
    lab = tmp_path / "lab.yaml"
    lab.write_text(f"workdir: {tmp_path / 'work'}\n"
                   f"source: {{git: {fake_tree}, commits: [v1, v3]}}\n"
                   "arches: [x86_64, arm64]\nbuild: {ccache: false, jobs: 1}\n")
    return Session(load_lab(lab), Ops(verbose=False))


def test_a_clean_run_stores_every_target_and_exits_0(session: Session, tmp_path: Path) -> None:
    calls: list[str] = []
    code = run_matrix(session, tmp_path / "run", False, None, None, None, fake_boot(calls))
    assert code == EXIT_OK and len(calls) == 4
    targets = sorted(p.name for p in (tmp_path / "run/targets").iterdir())
    assert targets == ["v1__arm64__base", "v1__x86_64__base", "v3__arm64__base",
                       "v3__x86_64__base"]
    for t in targets:
        for name in ("junit.xml", "console.log", "build.log", "metadata.json"):
            assert (tmp_path / "run/targets" / t / name).exists(), (t, name)
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    assert {t["status"] for t in summary["targets"]} == {"pass"}
    junit = (tmp_path / "run/targets/v3__arm64__base/junit.xml").read_text()
    assert 'name="spin_lock_in_inner_map" classname="c.map_in_map"' in junit
    assert (tmp_path / "run/index.html").exists() and (tmp_path / "run/junit.xml").exists()


def test_an_interrupted_run_keeps_finished_targets_and_resumes(session: Session,
                                                               tmp_path: Path) -> None:
    calls: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        run_matrix(session, tmp_path / "run", False, None, None, None, fake_boot(calls, 3))
    done = sorted(p.parent.name for p in (tmp_path / "run/targets").glob("*/metadata.json"))
    assert done == ["v1__arm64__base", "v1__x86_64__base"]
    again: list[str] = []
    assert run_matrix(session, tmp_path / "run", False, None, None, None,
                     fake_boot(again)) == EXIT_OK
    assert len(again) == 2  # only the two unfinished targets
    forced: list[str] = []
    run_matrix(session, tmp_path / "run", True, "x86_64", None, None, fake_boot(forced))
    assert len(forced) == 2


def test_an_unexpected_test_result_exits_1(session: Session, tmp_path: Path) -> None:
    code = run_matrix(session, tmp_path / "run", False, "x86_64", None, "v3",
                     fake_boot([], result='<failure message="lacks b7ff97925b"/>'))
    assert code == EXIT_FAILED
    meta = json.loads((tmp_path / "run/targets/v3__x86_64__base/metadata.json").read_text())
    assert meta["stages"]["tests"] == "fail" and meta["counts"]["fail"] == 1


def test_a_kernel_that_does_not_boot_is_a_result_not_a_crash(session: Session,
                                                             tmp_path: Path) -> None:
    code = run_matrix(session, tmp_path / "run", False, "arm64", None, None,
                     fake_boot([], ready=False))
    assert code == EXIT_FAILED
    meta = json.loads((tmp_path / "run/targets/v1__arm64__base/metadata.json").read_text())
    assert meta["stages"] == {"build": "pass", "boot": "fail", "tests": "skip"}


def test_a_target_without_a_result_is_a_lab_failure(session: Session, tmp_path: Path) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise mx.LabError("qemu-system-x86_64: not installed")
    code = run_matrix(session, tmp_path / "run", False, "x86_64", None, "v1", broken)
    assert code == EXIT_LAB


def test_a_c_suite_that_does_not_build_is_an_error_case_and_python_still_runs(
        session: Session, tmp_path: Path) -> None:
    def no_clang(workdir: Path, arch: Any, vmlinux: Path, ops: Any) -> Path:
        raise mx.LabError("C suite: clang (BPF object) failed (1)")
    calls: list[str] = []
    code = mx.matrix(session, tmp_path / "run", False, "x86_64", None, "v1",
                     fake_boot(calls), no_clang)
    assert code == EXIT_FAILED and len(calls) == 1
    meta = json.loads((tmp_path / "run/targets/v1__x86_64__base/metadata.json").read_text())
    # the two Python cases and kernel-health pass; the C suite is one error
    assert meta["counts"]["error"] == 1 and meta["counts"]["pass"] == 3


def test_a_kernel_left_tainted_by_the_python_suite_gives_the_c_suite_a_fresh_boot(
        session: Session, tmp_path: Path) -> None:
    calls: list[str] = []
    code = run_matrix(session, tmp_path / "run", False, "x86_64", None, "v1",
                      fake_boot(calls, tainted=True))
    assert code == EXIT_OK and len(calls) == 2
    target = tmp_path / "run/targets/v1__x86_64__base"
    assert (target / "console.log").exists() and (target / "console-2.log").exists()
    junit = (target / "junit.xml").read_text()
    assert 'classname="c.map_in_map"' in junit and 'classname="python.' in junit


def test_documentation_does_not_change_the_suites_fingerprint(tmp_path: Path) -> None:
    from harness.suites import suites_fingerprint
    shutil.copytree(Path(__file__).parents[1] / "bpf_tests", tmp_path / "suites")
    before = suites_fingerprint(tmp_path / "suites")
    (tmp_path / "suites" / "COVERAGE.md").write_text("edited\n")
    assert suites_fingerprint(tmp_path / "suites") == before
    (tmp_path / "suites" / "python" / "conftest.py").write_text("# edited\n")
    assert suites_fingerprint(tmp_path / "suites") != before
