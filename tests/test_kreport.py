"""Kernel reports parsed from real consoles (LKDTM-provoked and the lab's own
use-after-free, recorded by tests/data/reports/record.py): kind, signature, the test
whose markers hold them, and the JUnit they turn into (golden files). Then the
titled corpus of tests/data/reports, one case per file as in syzkaller's
pkg/report/testdata: "TITLE:" lines (one per report, in order), "ALT:" alternative
titles and "CORRUPTED: <part of the reason>" of the first report, an empty line,
the log. BPFLAB_REGENERATE=1 rewrites those headers from the parser's output."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness import junit, kreport
from harness.config import ExpectedReport
from harness.junit import Case
from harness.results import Status

DATA = Path(__file__).parent / "data"
CONSOLE = DATA / "console"
REPORTS = DATA / "reports"
GOLDEN = Path(__file__).parent / "golden"
ARCHES = ["x86_64", "arm64"]


def parse(name: str, cut: int | None = None) -> list[kreport.Report]:
    lines = (CONSOLE / name).read_text().splitlines()
    return kreport.parse(lines[:cut] if cut else lines)


def summary(reports: list[kreport.Report]) -> list[tuple[str, str, str | None]]:
    return [(r.kind, r.signature, r.test) for r in reports]


PROVOKED = [
    ("KASAN", "KASAN: use-after-free Read in lkdtm_READ_AFTER_FREE", "lkdtm::READ_AFTER_FREE"),
    ("KASAN", "KASAN: slab-out-of-bounds Write in lkdtm_SLAB_LINEAR_OVERFLOW",
     "lkdtm::SLAB_LINEAR_OVERFLOW"),
    ("WARNING", "WARNING in lkdtm_WARNING", "lkdtm::WARNING"),
    ("BUG", "kernel BUG in lkdtm_BUG", "lkdtm::BUG"),
]
# On arm64 the Oops of the BUG test is followed by a real second report: the dying
# task's context-tracking check warns (ct_kernel_exit.constprop.0), still inside
# the BUG test's markers.
AFTERMATH = {"x86_64": [], "arm64": [("WARNING", "WARNING in ct_kernel_exit", "lkdtm::BUG")]}


@pytest.mark.parametrize("arch", ARCHES)
def test_lkdtm_reports_are_parsed_with_their_tests(arch: str) -> None:
    outside = [("WARNING", "WARNING in lkdtm_WARNING", None)]  # provoked outside markers
    assert summary(parse(f"{arch}_lkdtm_reports.log")) == PROVOKED + AFTERMATH[arch] + outside


def test_signatures_are_the_same_on_both_arches() -> None:
    x86, arm = (parse(f"{a}_lkdtm_reports.log")[:len(PROVOKED)] for a in ARCHES)
    assert [r.signature for r in x86] == [r.signature for r in arm]
    assert [r.title for r in x86] != [r.title for r in arm]  # raw titles carry offsets


@pytest.mark.parametrize("arch", ARCHES)
def test_a_report_keeps_its_text_from_the_header_to_its_end(arch: str) -> None:
    uaf = parse(f"{arch}_lkdtm_reports.log")[0]
    lines = uaf.text.splitlines()
    assert lines[0].startswith("BUG: KASAN: use-after-free in lkdtm_READ_AFTER_FREE+0x")
    assert any(line.startswith("Read of size") for line in lines)
    assert lines[-1].startswith("=====")
    assert not any(" | " in line or line.startswith("[") for line in lines)  # no stamps


@pytest.mark.parametrize("arch", ARCHES)
def test_a_panic_mid_test_belongs_to_the_test_left_open(arch: str) -> None:
    reports = parse(f"{arch}_lkdtm_panic_mid_test.log")
    # syzkaller titles a panic "kernel panic: <message>" (this lab used "panic: ...").
    assert summary(reports)[-1] == ("PANIC", "kernel panic: dumptest", "lkdtm::PANIC")


def test_a_log_cut_inside_a_report_keeps_what_was_printed() -> None:
    lines = (CONSOLE / "x86_64_lkdtm_reports.log").read_text().splitlines()
    header = next(i for i, line in enumerate(lines) if "slab-out-of-bounds" in line)
    reports = parse("x86_64_lkdtm_reports.log", cut=header + 12)
    assert summary(reports)[-1] == (
        "KASAN", "KASAN: slab-out-of-bounds Write in lkdtm_SLAB_LINEAR_OVERFLOW",
        "lkdtm::SLAB_LINEAR_OVERFLOW")
    assert len(reports[-1].text.splitlines()) <= 12


def test_a_log_cut_before_the_access_line_still_yields_a_report() -> None:
    lines = (CONSOLE / "x86_64_lkdtm_reports.log").read_text().splitlines()
    header = next(i for i, line in enumerate(lines) if "use-after-free" in line)
    reports = kreport.parse(lines[:header + 1])
    assert [r.kind for r in reports] == ["KASAN"]
    assert reports[0].signature.startswith("KASAN: use-after-free")


def test_the_lab_fault_injection_report_names_the_map_in_map_test() -> None:
    (report,) = parse("x86_64_uaf_inject_map_in_map.log")
    assert report.signature == "KASAN: use-after-free Read in array_map_update_elem"
    assert report.test == ("test_map_in_map_free.py::test_inner_map_replaced_under_a_"
                           "parked_sleepable_program_is_not_used_after_free")


def golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("BPFLAB_REGEN"):
        path.write_text(text)
    assert path.read_text() == text, f"{path} differs; BPFLAB_REGEN=1 to accept"


def lkdtm_cases() -> list[Case]:
    names = ["READ_AFTER_FREE", "SLAB_LINEAR_OVERFLOW", "WARNING", "BUG", "quiet"]
    return [Case("c", "lkdtm", n, Status.PASS, duration=1.0) for n in names]


def test_lkdtm_reports_become_junit_errors_and_a_kernel_health_failure(
        tmp_path: Path) -> None:
    cases = junit.tie_reports(lkdtm_cases(), parse("x86_64_lkdtm_reports.log"), ())
    assert [(c.name, c.status) for c in cases] == [
        ("READ_AFTER_FREE", Status.ERROR), ("SLAB_LINEAR_OVERFLOW", Status.ERROR),
        ("WARNING", Status.ERROR), ("BUG", Status.ERROR), ("quiet", Status.PASS),
        ("kernel-health", Status.FAIL)]
    out = tmp_path / "junit.xml"
    junit.write(cases, "x86_64/v6.1.190/base", {"arch": "x86_64"}, out)
    golden("junit_lkdtm_reports.xml", out.read_text())


def test_an_expected_report_is_attached_without_an_error(tmp_path: Path) -> None:
    test = Case("python", "test_map_in_map_free", "test_inner_map_replaced_under_a_"
                "parked_sleepable_program_is_not_used_after_free", Status.PASS, 1.2)
    expected = (ExpectedReport(test.test_id,
                               ("KASAN: use-after-free Read in array_map_update_elem",)),)
    cases = junit.tie_reports([test], parse("x86_64_uaf_inject_map_in_map.log"), expected)
    assert [c.status for c in cases] == [Status.PASS, Status.PASS]
    out = tmp_path / "junit.xml"
    junit.write(cases, "x86_64/v6.1.190/uaf-inject", {"variant": "uaf-inject"}, out)
    golden("junit_uaf_inject_expected_report.xml", out.read_text())


@dataclass(frozen=True)
class Titled:
    """A case of the titled corpus: what its header expects, and its log."""

    path: Path
    comments: list[str]
    titles: list[str]
    alt: list[str]
    corrupted: str
    log: list[str]


def read_titled(path: Path) -> Titled:
    lines = path.read_text(errors="replace").splitlines()
    end = lines.index("")
    fields: dict[str, list[str]] = {"TITLE": [], "ALT": [], "CORRUPTED": []}
    for line in lines[:end]:
        key, _, value = line.partition(": ")
        if not line.startswith("#"):
            fields[key].append(value)
    comments = [line for line in lines[:end] if line.startswith("#")]
    return Titled(path, comments, fields["TITLE"], fields["ALT"],
                  "".join(fields["CORRUPTED"]), lines[end + 1:])


def regenerate(case: Titled, reports: list[kreport.Report]) -> None:
    head = case.comments + [f"TITLE: {r.syz_title}" for r in reports]
    if reports:
        head += [f"ALT: {a}" for a in reports[0].alt]
        head += [f"CORRUPTED: {reports[0].corrupted}"] if reports[0].corrupted else []
    case.path.write_text("\n".join(head + [""] + case.log) + "\n")


TITLED = sorted(p for p in REPORTS.iterdir() if p.suffix in (".log", ".txt"))


@pytest.mark.parametrize("path", TITLED, ids=[p.name for p in TITLED])
def test_each_recorded_console_gets_the_titles_its_header_expects(path: Path) -> None:
    case = read_titled(path)
    reports = kreport.parse(case.log)
    if os.environ.get("BPFLAB_REGENERATE"):
        regenerate(case, reports)
        return
    assert [r.syz_title for r in reports] == case.titles
    assert set(case.alt) <= set(reports[0].alt if reports else ())
    if case.corrupted:
        assert case.corrupted in reports[0].corrupted
    else:
        assert [r.corrupted for r in reports] == [""] * len(reports)


def titled(name: str) -> list[kreport.Report]:
    return kreport.parse(read_titled(REPORTS / name).log)


def test_generic_and_hardware_tag_kasan_fold_into_one_alternative_title() -> None:
    (generic,) = titled("arm64_lkdtm_kasan_use_after_free.log")
    (tagged,) = titled("arm64_kasan_hw_tags_use_after_free.log")
    assert generic.signature == "KASAN: use-after-free Read in lkdtm_READ_AFTER_FREE"
    assert tagged.signature == "KASAN: invalid-access Read in lkdtm_READ_AFTER_FREE"
    assert "bad-access in lkdtm_READ_AFTER_FREE" in set(generic.alt) & set(tagged.alt)


def test_slab_use_after_free_is_signed_as_use_after_free_but_keeps_its_syzkaller_title(
        ) -> None:
    lines = (REPORTS / "x86_64_lkdtm_kasan_use_after_free.log").read_text().splitlines()
    newer = [line.replace("KASAN: use-after-free", "KASAN: slab-use-after-free")
             for line in lines]
    (report,) = kreport.parse(newer)
    assert report.syz_title == "KASAN: slab-use-after-free Read in lkdtm_READ_AFTER_FREE"
    assert report.signature == "KASAN: use-after-free Read in lkdtm_READ_AFTER_FREE"


def test_kmemleak_records_copied_to_the_console_are_leaks_of_the_running_test() -> None:
    reports = titled("x86_64_kmemleak_via_kmsg.log")
    assert [(r.kind, r.signature) for r in reports] == [("LEAK", "memory leak in bpf")] * 3
    assert {r.test for r in reports} == {
        "test_map_in_map_leaks.py::test_inner_map_template_is_not_leaked"}
    last = reports[0].text.splitlines()[-1]
    assert last.endswith("entry_SYSCALL_64_after_hwframe+0x4b/0xb5")  # the whole record


def test_a_user_space_general_protection_fault_is_not_a_kernel_report() -> None:
    assert titled("x86_64_user_space_general_protection_fault.log") == []


def test_unreliable_frames_never_name_the_culprit() -> None:
    lines = (REPORTS / "x86_64_uaf_inject_map_in_map.log").read_text().splitlines()
    (report,) = kreport.parse(lines)
    assert "? array_map_update_elem" in report.text  # kept for the reader
    assert report.syz_title == "KASAN: use-after-free Read in array_map_update_elem"


def test_a_report_cut_short_by_the_end_of_the_log_says_so() -> None:
    (report,) = titled("x86_64_lkdtm_kasan_cut_short.log")
    assert report.kind == "KASAN"
    assert report.corrupted == "log ends mid-report"
