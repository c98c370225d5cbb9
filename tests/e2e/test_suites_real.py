"""End to end: both map-in-map suites in guests of the lab's own kernels, on both
arches; their results come back to the host as JUnit and TAP, and every test agrees
with what it expects of the kernel under test (decided from its release)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from harness import catalog, commits, csuite
from harness.junit import Case
from harness.ops import Ops
from harness.results import Status
from harness.suites import Guard, Install, Rounds, SuiteRun

from .conftest import BuiltKernel, boot_kernel, lab_kernel

# The default lab's matrix runs both suites on these kernels in ./lab test; this
# module's finer checks of them run with ./lab test --full.
pytestmark = [pytest.mark.e2e, pytest.mark.full]
C_TESTS = {"spin_lock_in_inner_map", "timer_in_inner_map", "kptr_in_inner_map",
           "sleepable_uaf_inner_map_free", "race_kprobe_inner_map_free",
           "race_sleepable_fentry_inner_map_free"}


@pytest.fixture(scope="module", params=["x86_64", "arm64"])
def kernel(request: pytest.FixtureRequest) -> BuiltKernel:
    return lab_kernel(request.param)


@pytest.fixture(scope="module")
def ran(kernel: BuiltKernel, lab_workdir: Path,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SuiteRun, Path]]:
    out = tmp_path_factory.mktemp(f"suites-{kernel.arch.name}")
    binary = csuite.build_c_suite(lab_workdir, kernel.arch, kernel.vmlinux, Ops())
    with boot_kernel(kernel) as guest:
        assert guest.outcome.ready, guest.outcome.reason
        identity = commits.Identity(kernel.release, None, (), (), "base")
        listing = out / "commits.txt"
        listing.write_text(commits.render(commits.decide(commits.load_table(), identity),
                                          identity))
        rounds = Rounds({"python": catalog.python_tests(), "c": catalog.c_tests()})
        setup = Install({"BPFLAB_ARCH": kernel.arch.name}, binary, listing)
        rounds.run(guest.ssh, out, setup, Guard(), guest.running_test)
        yield rounds.result(""), out


def by_suite(cases: tuple[Case, ...], suite: str) -> list[Case]:
    return [c for c in cases if c.suite == suite]


def test_the_python_suite_leaves_its_junit_on_the_host(ran: tuple[SuiteRun, Path]) -> None:
    run, out = ran
    assert run.error == "", run.log
    assert (out / "python.xml").stat().st_size > 0
    assert len(by_suite(run.cases, "python")) >= 20, run.log


def test_every_c_test_reports_a_result(ran: tuple[SuiteRun, Path]) -> None:
    run, _ = ran
    assert {c.name for c in by_suite(run.cases, "c")} == C_TESTS, run.log


def test_every_test_matches_what_it_expects_of_this_kernel(
        ran: tuple[SuiteRun, Path]) -> None:
    run, _ = ran
    wrong = [f"{c.suite}.{c.nodeid}: {c.status.value}: {c.message}" for c in run.cases
             if c.status in (Status.FAIL, Status.ERROR)]
    assert wrong == [], run.log


def test_the_capabilities_the_suites_check_are_not_all_skipped(
        ran: tuple[SuiteRun, Path]) -> None:
    run, _ = ran
    passed = [c for c in run.cases if c.status is Status.PASS]
    assert len(passed) >= len(run.cases) // 2, run.log


def test_the_leak_test_runs_on_the_labs_kernels_and_finds_no_leak(
        ran: tuple[SuiteRun, Path]) -> None:
    # The lab's kernels carry kmemleak and failslab (kernels/leaks.config): a skip here
    # would mean the fragment or the test lost its reach.
    run, _ = ran
    leak = [c for c in run.cases if c.name.endswith("_leaks_no_template")]
    assert [(c.status, c.message) for c in leak] == [(Status.PASS, "")], run.log
