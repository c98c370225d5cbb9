"""JUnit in and out: pytest files and TAP become cases; kernel reports tie to cases."""

from __future__ import annotations

from dataclasses import replace

from pathlib import Path

from junitparser import JUnitXml

from harness import junit
from harness.junit import Case
from harness.config import ExpectedReport
from harness.kreport import Report
from harness.results import Status

UAF = "bpf_tests/python/test_uaf.py::test_inner_map_freed_while_prog_runs"


def report(test: str | None, sig: str = "KASAN: use-after-free Write in array_map_update_elem"
           ) -> Report:
    return Report("KASAN", sig, "BUG: KASAN: use-after-free in array_map_update_elem+0x81/0x1fa",
                  "BUG: KASAN: ...\nWrite of size 4", 10, test)


def cases() -> list[Case]:
    return [Case("python", "bpf_tests.python.test_uaf", "test_inner_map_freed_while_prog_runs",
                 Status.PASS, 1.5),
            Case("python", "bpf_tests.python.test_basic", "test_lookup_returns_inner_id",
                 Status.PASS, 0.1)]


def test_tap_results_become_cases_with_skip_reasons_and_diagnostics() -> None:
    lines = ["TAP version 13", "1..3", "ok 1 - spin_lock_in_inner_map",
             "# expected 0x2222, got 0x1111 (cba41bb78d)", "not ok 2 - elem_size",
             "ok 3 - timer # SKIP no CONFIG_BPF_EVENTS"]
    tap = junit.from_tap(lines, "c", "c.map_in_map")
    got = tap.cases
    assert tap.plan == 3 and tap.problem() == ""
    assert [(c.name, c.status) for c in got] == [("spin_lock_in_inner_map", Status.PASS),
                                                 ("elem_size", Status.FAIL),
                                                 ("timer", Status.SKIP)]
    assert got[1].message == "expected 0x2222, got 0x1111 (cba41bb78d)"
    assert got[2].message == "no CONFIG_BPF_EVENTS"


def test_a_report_inside_a_tests_markers_becomes_an_error_on_that_case() -> None:
    tied = junit.tie_reports(cases(), [report(UAF)], expected=())
    uaf = tied[0]
    assert uaf.status is Status.ERROR and uaf.reports[0].test == UAF
    assert uaf.message.startswith("kernel report during the test: KASAN: use-after-free")
    assert tied[1].status is Status.PASS
    assert tied[-1].name == "kernel-health" and tied[-1].status is Status.PASS


def test_a_report_outside_any_test_fails_kernel_health() -> None:
    tied = junit.tie_reports(cases(), [report(None)], expected=())
    assert [c.status for c in tied[:2]] == [Status.PASS, Status.PASS]
    assert tied[-1].status is Status.FAIL
    assert "outside any test: KASAN: use-after-free" in tied[-1].message


SIG = "KASAN: use-after-free Write in array_map_update_elem"


def test_an_expected_report_keeps_the_case_green_and_a_missing_one_fails_health() -> None:
    expected = (ExpectedReport(UAF, (SIG,)),)
    tied = junit.tie_reports(cases(), [report(UAF)], expected)
    assert tied[0].status is Status.PASS and tied[0].reports
    assert tied[-1].status is Status.PASS
    missing = junit.tie_reports(cases(), [], expected)
    assert missing[-1].status is Status.FAIL
    assert f"never appeared: {SIG} in {UAF}" in missing[-1].message


def test_a_skipped_reproducers_report_is_not_demanded_and_the_skip_is_said() -> None:
    expected = (ExpectedReport(UAF, (SIG,)),)
    skipped = [replace(c, status=Status.SKIP, message="one CPU: the race cannot run")
               if c.name == "test_inner_map_freed_while_prog_runs" else c for c in cases()]
    tied = junit.tie_reports(skipped, [], expected)
    assert tied[-1].status is Status.PASS
    assert tied[-1].message == f"expected report not demanded: {UAF} skipped (one CPU: " \
        "the race cannot run)"


def test_a_report_is_expected_only_from_the_test_the_variant_names() -> None:
    expected = (ExpectedReport(UAF, (SIG,)),)
    other = "bpf_tests/python/test_basic.py::test_lookup_returns_inner_id"
    tied = junit.tie_reports(cases(), [report(UAF), report(other)], expected)
    assert tied[0].status is Status.PASS
    assert tied[1].status is Status.ERROR and SIG in tied[1].message
    boot = junit.tie_reports(cases(), [report(UAF), report(None)], expected)
    assert boot[-1].status is Status.FAIL and "outside any test" in boot[-1].message
    worded = junit.tie_reports(cases(), [report(UAF, "KASAN: use-after-free Read in f")],
                               expected)
    assert worded[0].status is Status.ERROR  # another signature, even from that test


def test_tap_plans_that_do_not_match_and_bail_outs_are_problems() -> None:
    assert "1..3 but 1" in junit.from_tap(["1..3", "ok 1 - a"], "c", "m").problem()
    assert "no TAP plan" in junit.from_tap(["ok 1 - a"], "c", "m").problem()
    assert "no root" in junit.from_tap(["Bail out! no root"], "c", "m").problem()


def test_guest_junit_that_cannot_be_trusted_is_refused_with_why(tmp_path: Path) -> None:
    import pytest
    bad = {"huge": "<testsuites>" + " " * 5000 + "</testsuites>",
           "dtd": '<!DOCTYPE l [<!ENTITY x "y">]><testsuites/>',
           "time": '<testsuites><testcase name="a" time="nan"/></testsuites>',
           "noname": '<testsuites><testcase classname="a"/></testsuites>',
           "esc": '<testsuites><testcase name="a\x1b"/></testsuites>'.replace("\\x1b", "\x1b")}
    for name, text in bad.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(junit.JUnitError):
            junit.from_junit(tmp_path / name, "python", limit=4096)


def test_written_junit_holds_any_text_as_valid_xml(tmp_path: Path) -> None:
    case = Case("c", "map_in_map", "t\x00", Status.FAIL, message="red \x1b[31m \ud800",
                output="bell \x07")
    junit.write([case], "x86_64/<v>/base", {"k": "\x1b"}, tmp_path / "j.xml")
    back = junit.from_junit(tmp_path / "j.xml", "c")
    assert back[0].name == "t\\x00" and back[0].message == "red \\x1b[31m \\ud800"


def test_junit_round_trips_with_properties_and_the_report_text(tmp_path: Path) -> None:
    tied = junit.tie_reports(cases(), [report(UAF)], expected=())
    out = tmp_path / "junit.xml"
    junit.write(tied, "x86_64/v6.1.192/base", {"commit": "abc", "arch": "x86_64"}, out)
    back = junit.from_junit(out, "python")
    assert [(c.name, c.status) for c in back] == [
        ("test_inner_map_freed_while_prog_runs", Status.ERROR),
        ("test_lookup_returns_inner_id", Status.PASS), ("kernel-health", Status.PASS)]
    assert "Write of size 4" in back[0].output
    xml = JUnitXml.fromfile(str(out))
    suite = next(iter(xml))
    assert {p.name: p.value for p in suite.properties()} == {"commit": "abc", "arch": "x86_64"}
    assert suite.errors == 1 and suite.tests == 3


def test_merged_junit_holds_every_targets_suite(tmp_path: Path) -> None:
    for name in ("a", "b"):
        junit.write(cases(), name, {}, tmp_path / name / "junit.xml")
    junit.merge([tmp_path / "a/junit.xml", tmp_path / "b/junit.xml"], tmp_path / "all.xml")
    merged = JUnitXml.fromfile(str(tmp_path / "all.xml"))
    assert [s.name for s in merged] == ["a", "b"] and merged.tests == 4


def test_a_marker_node_id_finds_its_case_by_module_and_name() -> None:
    assert junit.case_for(UAF, cases()) == cases()[0]
    assert junit.case_for("other.py::test_lookup_returns_inner_id", cases()) == cases()[1]
    assert junit.case_for("x.py::test_nothing_like_it", cases()) is None


def test_a_flood_of_one_report_keeps_the_first_few_per_test_and_counts_the_rest() -> None:
    from harness import kreport
    one = kreport.Report("KASAN", "KASAN: use-after-free Read in f", "t", "text", 1, "a::b")
    other = kreport.Report("KASAN", "KASAN: use-after-free Read in f", "t", "text", 9, "a::c")
    kept, dropped = kreport.bounded([one] * 1000 + [other])
    assert kept == [one] * kreport.KEEP_PER_KEY + [other]
    assert dropped == 1000 - kreport.KEEP_PER_KEY


def test_a_tests_own_properties_survive_into_the_targets_junit(tmp_path: Path) -> None:
    pytest_xml = tmp_path / "python.xml"
    pytest_xml.write_text(
        '<testsuites><testsuite name="pytest"><testcase classname="test_map_in_map_leaks" '
        'name="test_leak" time="9.5"><properties><property name="leaked_templates" '
        'value="3"/><property name="sweeps" value="9 injected faults"/></properties>'
        '</testcase></testsuite></testsuites>')
    read = junit.from_junit(pytest_xml, "python")
    assert read[0].properties == (("leaked_templates", "3"), ("sweeps", "9 injected faults"))
    out = tmp_path / "junit.xml"
    junit.write(read, "x86_64/v6.1.192/leak-inject", {}, out)
    assert junit.from_junit(out, "python")[0].properties == read[0].properties


def test_a_report_the_lab_declares_known_is_kept_but_does_not_fail_health() -> None:
    from harness.config import KnownReport
    noise = report(None, "KASAN: wild-memory-access Write in handle_edge_irq")
    known = (KnownReport(noise.signature, "early boot under TCG"),)
    tied = junit.tie_reports(cases(), [noise], (), known=known)
    assert tied[-1].status is Status.PASS and tied[-1].reports == (noise,)
    assert "known to this lab, not counted" in tied[-1].message
    in_test = junit.tie_reports(cases(), [report(UAF, noise.signature)], (), known=known)
    assert in_test[0].status is Status.ERROR  # only outside any test
    other = junit.tie_reports(cases(), [report(None)], (), known=known)
    assert other[-1].status is Status.FAIL
