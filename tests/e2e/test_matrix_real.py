"""End to end: the built-in default lab through invoke matrix's own code path: real
builds (cached), real guests, both suites, kernel reports, the store and the report;
then a rerun that resumes from the store and boots nothing."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest

from harness import junit, matrix
from harness.boot import boot
from harness.config import load_lab
from harness.main import Session
from harness.model import Selection, Verdict
from harness.ops import Ops
from harness.results import Status
from harness.suites import BLINDED
from tasks import EXIT
from tests.e2e.test_cluster_real import Procs, free_port, wait_for

pytestmark = pytest.mark.e2e
PROJECT = Path(__file__).resolve().parents[2]


def counting(calls: list[str]) -> matrix.Seams:
    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(str(args[3]))
        return boot(*args, **kwargs)
    return matrix.Seams(boot=counted)


# ./lab test runs the default lab's 6.1.192 targets, whose kernels the other real tests
# build anyway (conftest.SHARED_RELEASE); ./lab test --full runs the whole default lab,
# 7.3-rc7 too, as ./lab matrix does (two more cold builds: past CI's time).
ALL = {"v6.1.192": ("arm64 base", "x86_64 base", "x86_64 leak-inject", "x86_64 uaf-inject"),
       "v7.3-rc7": ("arm64 base", "x86_64 base", "x86_64 uaf-inject")}
CI = {"v6.1.192": ALL["v6.1.192"]}


def chosen(config: pytest.Config) -> dict[str, tuple[str, ...]]:
    return ALL if config.getoption("--full") else CI


def releases(config: pytest.Config, variant: str = "") -> tuple[str, ...]:
    return tuple(r for r, targets in chosen(config).items()
                 if not variant or any(t.endswith(f" {variant}") for t in targets))


def selection(config: pytest.Config) -> Selection:
    if config.getoption("--full"):
        return Selection()
    return Selection(labels=tuple(f"{t.split()[0]} {r} {t.split()[1]}"
                                  for r, targets in CI.items() for t in targets))


@pytest.fixture(scope="module")
def run(request: pytest.FixtureRequest,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Verdict, list[str]]]:
    run_dir = tmp_path_factory.mktemp("matrix") / "run"
    calls: list[str] = []
    result = matrix.matrix(Session(load_lab(), Ops()), run_dir, False,
                           selection(request.config), counting(calls))
    yield run_dir, result.verdict, calls


def test_every_target_of_the_default_lab_ran_as_expected(
        run: tuple[Path, Verdict, list[str]], request: pytest.FixtureRequest) -> None:
    run_dir, code, calls = run
    summary = json.loads((run_dir / "summary.json").read_text())
    labels = sorted(f"{t['name']} {t['arch']} {t['variant']}" for t in summary["targets"])
    assert labels == sorted(f"{n} {av}" for n, targets in chosen(request.config).items()
                            for av in targets)
    assert code is Verdict.OK, json.dumps(summary["targets"], indent=1)[:4000]
    # one boot per target; on the uaf-inject kernels a fresh boot after each KASAN
    # report for the tests it left blind and the rest (KASAN reports once per boot):
    # python, its race, C, C's two races, the sleepable race alone. A boot that printed
    # the lab's known early-boot KASAN report (known_reports) is blind from the start:
    # on any kernel it costs one boot more (a base kernel under load took two).
    boots = 0
    for target in sorted((run_dir / "targets").iterdir()):
        meta = json.loads((target / "metadata.json").read_text())
        early = {r["boot"] for r in meta["reports"] if r["test"] is None}
        assert all(r["expected"] for r in meta["reports"] if r["test"] is None), meta
        planned = (5 if target.name.endswith("uaf-inject") else 1) + len(early)
        assert meta["boots"] == planned, (target.name, meta["boots"], meta["reports"])
        boots += meta["boots"]
    assert len(calls) == boots, calls


def test_each_target_left_its_files(run: tuple[Path, Verdict, list[str]]) -> None:
    run_dir, _, _ = run
    for target in sorted((run_dir / "targets").iterdir()):
        for name in ("junit.xml", "console.log", "build.log", "metadata.json", "suites.log"):
            assert (target / name).stat().st_size > 0, (target.name, name)
        meta = json.loads((target / "metadata.json").read_text())
        series = ".".join(target.name[1:].split("-")[0].split(".")[:2])  # v7.3-rc7: 7.3
        assert meta["accel"] in ("tcg", "kvm"), meta["accel"]
        assert meta["kernel_release"].startswith(f"{series}."), (target.name, meta)


def test_the_fault_injection_report_is_tied_to_the_uaf_test(
        run: tuple[Path, Verdict, list[str]], request: pytest.FixtureRequest) -> None:
    run_dir, _, _ = run
    for name in releases(request.config, "uaf-inject"):
        target = run_dir / "targets" / f"{name}__x86_64__uaf-inject"
        meta = json.loads((target / "metadata.json").read_text())
        assert all(r["signature"].startswith("KASAN: use-after-free") and r["expected"]
                   for r in meta["reports"] if r["test"] is not None), meta["reports"]
        assert all(r["expected"] for r in meta["reports"]), meta["reports"]
        # each reproducer on a boot of its own: the deterministic ones and the races
        assert sorted({r["test"] for r in meta["reports"] if r["test"]}) == sorted([
            "test_map_in_map_free.py::test_inner_map_replaced_under_a_parked_sleepable_"
            "program_is_not_used_after_free",
            "test_map_in_map_free.py::test_inner_map_replaced_while_programs_update_"
            "it_is_not_used_after_free",
            "map_in_map::sleepable_uaf_inner_map_free",
            "map_in_map::race_kprobe_inner_map_free",
            "map_in_map::race_sleepable_fentry_inner_map_free"]), meta["reports"]
        junit_text = (target / "junit.xml").read_text()
        # one per reproducer, and kernel-health's when a boot printed the known report
        known = any(r["test"] is None for r in meta["reports"])
        assert junit_text.count("expected kernel report(s)") == 5 + known
        assert BLINDED not in junit_text
        assert (target / "console-5.log").exists()
    # the deterministic reproducers' bug has one signature, the same on every release
    deterministic = ("test_map_in_map_free.py::test_inner_map_replaced_under_a_parked_"
                     "sleepable_program_is_not_used_after_free",
                     "map_in_map::sleepable_uaf_inner_map_free")
    seen = {name: {(r["test"], r["signature"]) for r in json.loads(
        (run_dir / "targets" / f"{name}__x86_64__uaf-inject" / "metadata.json").read_text())[
        "reports"] if r["test"] in deterministic} for name in releases(request.config, "uaf-inject")}
    assert all(sorted(s) == sorted((t, "KASAN: use-after-free Read in array_map_update_elem")
                                   for t in deterministic) for s in seen.values()), seen
    # no report on a base kernel, but the lab's known early-boot one outside any test
    for base in (run_dir / "targets").glob("*__base"):
        reports = json.loads((base / "metadata.json").read_text())["reports"]
        assert all(r["test"] is None and r["expected"] for r in reports), (base, reports)


def test_the_leak_test_finds_the_injected_leak_and_only_there(
        run: tuple[Path, Verdict, list[str]]) -> None:
    run_dir, _, _ = run
    leaked = {}
    for target in sorted((run_dir / "targets").iterdir()):
        for case in junit.from_junit(target / "junit.xml", "any"):
            if case.name.endswith("_leaks_no_template"):
                leaked[target.name] = (case.status, dict(case.properties)["leaked_templates"])
    # kmemleak found the templates the leak-inject patch leaks (one per sweep, and one
    # from the aa3496accc test; a stale pointer may hide one), none elsewhere
    assert sorted(leaked) == sorted(t.name for t in (run_dir / "targets").iterdir())
    for name, (status, count) in leaked.items():
        assert status is Status.PASS, leaked
        assert (int(count) >= 2) if name.endswith("leak-inject") else count == "0", leaked
        # each leak the test found is a kernel report of its own, tied to the test
        reports = json.loads((run_dir / "targets" / name / "metadata.json").read_text())[
            "reports"]
        leaks = [r for r in reports if r["kind"] == "LEAK"]
        if name.endswith("leak-inject"):
            assert leaks and all(r["signature"] == "memory leak in bpf" and r["expected"]
                                 and r["test"].endswith("_leaks_no_template")
                                 for r in leaks), reports
        else:
            assert leaks == [], reports


def test_the_merged_junit_holds_every_target(run: tuple[Path, Verdict, list[str]],
                                            request: pytest.FixtureRequest) -> None:
    run_dir, _, _ = run
    from junitparser import JUnitXml
    suites = [s.name for s in JUnitXml.fromfile(str(run_dir / "junit.xml"))]
    assert sorted(suites) == sorted(f"{t.split()[0]}/{c}/{t.split()[1]}"
                                    for c, targets in chosen(request.config).items()
                                    for t in targets)


def test_a_rerun_resumes_from_the_store_without_booting(
        run: tuple[Path, Verdict, list[str]], request: pytest.FixtureRequest) -> None:
    run_dir, first_code, _ = run
    calls: list[str] = []
    result = matrix.matrix(Session(load_lab(), Ops()), run_dir, False,
                           selection(request.config), counting(calls))
    assert calls == [] and result.verdict == first_code


def test_invoke_report_rebuilds_the_page_from_the_store(
        run: tuple[Path, Verdict, list[str]]) -> None:
    run_dir, _, _ = run
    (run_dir / "index.html").unlink()
    done = subprocess.run([str(PROJECT / "lab"), "report", str(run_dir)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "uaf-inject" in done.stdout and (run_dir / "index.html").exists()


def outcomes(run_dir: Path) -> dict[str, Any]:
    """Per target: each test's status, whether the kernel reported anything and whether
    every report was expected. Not the signatures themselves: the injected
    use-after-free is a race, and which access KASAN catches first (a Read or a Write,
    in array_map_update_elem or in the map's free path) differs from boot to boot."""
    found: dict[str, Any] = {}
    for target in sorted((run_dir / "targets").iterdir()):
        meta = json.loads((target / "metadata.json").read_text())
        found[target.name] = (
            sorted((c.test_id, c.status.value) for c in junit.stored_cases(target / "junit.xml")),
            bool(meta["reports"]), all(r["expected"] for r in meta["reports"]))
    return found


@pytest.mark.full  # the default lab's guests again, on two workers
def test_the_default_lab_on_a_scheduler_and_two_workers_gives_the_single_host_results(
        run: tuple[Path, Verdict, list[str]], tmp_path: Path) -> None:
    run_dir, code, _ = run
    procs = Procs(tmp_path)
    try:
        lab = str(PROJECT / "lab")
        log = procs.start("scheduler", [lab, "scheduler", "--port", str(free_port())], {})
        address = wait_for(log, r"tcp://127\.0\.0\.1:\d+", 120, procs, "scheduler")
        a = procs.start("A", [lab, "worker", "--scheduler", address, "--name", "A"], {})
        # B: a fresh machine that only boots (its rootfs, C suite and kernels its own)
        b = procs.start("B", [lab, "worker", "--scheduler", address, "--name", "B",
                              "--build-slots", "0", "--workdir", str(tmp_path / "B")],
                        {"BPFLAB_CACHE": str(tmp_path / "B-cache")})
        wait_for(a, "worker A: tcp://", 120, procs, "A")
        wait_for(b, "worker B: tcp://", 120, procs, "B")
        # the whole default lab, as the single-host run above (--full) ran it
        out = procs.start("matrix", [lab, "matrix", "--scheduler", address, "--run-dir",
                                     str(tmp_path / "run")], {})
        assert procs.procs["matrix"].wait(timeout=4 * 3600) == EXIT[code], \
            out.read_text(errors="replace")[-5000:]
    finally:
        procs.stop_all()
    text = out.read_text(errors="replace")
    workers = set(re.findall(r"guests on (\w+)", text))
    assert workers == {"A", "B"}, text[-3000:]  # both worked
    assert outcomes(tmp_path / "run") == outcomes(run_dir)
