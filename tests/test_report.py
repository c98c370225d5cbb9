"""The report is rebuilt from the store: table, summary, first-bad/first-good, HTML."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness import junit, report
from harness.junit import Case
from harness.model import ReportRef, Stage, Status, TargetOutcome
from harness.results import write_json
from harness.store import Store, counts
from dataclasses import replace

OK = {Stage.BUILD: Status.PASS, Stage.BOOT: Status.PASS, Stage.TESTS: Status.PASS}


def outcome(name: str, order: int, arch: str, variant: str = "base",
            sigs: tuple[str, ...] = (), test: str | None = None,
            expected: bool = False) -> TargetOutcome:
    refs = tuple(ReportRef(s, "KASAN", f"kasan/{i + 1:02d}-kasan.txt", s, test, 1, 0, expected)
                 for i, s in enumerate(sigs))
    return TargetOutcome(commit=name * 4, name=name, subject="s", arch=arch, variant=variant,
                         order=order, fingerprint="f", stages=dict(OK), reports=refs)


def put(store: Store, o: TargetOutcome, statuses: dict[str, Status]) -> None:
    d = store.root / "targets" / f"{o.name}__{o.arch}__{o.variant}"
    cases = [Case("python", "t", n, s) for n, s in statuses.items()]
    junit.write(cases, d.name, {}, d / "junit.xml")
    write_json(d / "metadata.json",
               replace(o, counts=counts([c.status.value for c in cases])).to_json())


def test_first_bad_and_first_good_follow_history_order() -> None:
    seq = [("v1", Status.PASS), ("v2", Status.FAIL), ("v3", Status.ERROR), ("v4", Status.PASS)]
    assert report.first_bad_good(seq) == ("v2", "v4")
    assert report.first_bad_good(seq[:3]) == ("v2", None)
    assert report.first_bad_good([("v1", Status.PASS)]) == (None, None)


def test_the_report_shows_every_cell_transitions_and_signatures(tmp_path: Path) -> None:
    store = Store(tmp_path)
    sig = "KASAN: use-after-free Write in array_map_update_elem"
    put(store, outcome("v6.1.176", 0, "x86_64"), {"test_a": Status.PASS, "test_b": Status.FAIL})
    put(store, outcome("v6.1.176", 0, "x86_64", "uaf-inject", (sig,)),
        {"test_a": Status.PASS, "test_b": Status.PASS})
    put(store, outcome("v6.1.192", 1, "x86_64"), {"test_a": Status.PASS, "test_b": Status.PASS})
    put(store, outcome("v6.1.192", 1, "arm64"), {"test_a": Status.PASS, "test_b": Status.FAIL})
    text, page = report.write_all(store)
    lines = text.splitlines()
    assert lines[0].split() == ["commit", "arm64/base", "x86_64/base", "x86_64/uaf-inject"]
    assert lines[1].startswith("v6.1.176") and "1/2 pass, 1 bad" in lines[1]
    assert "[1 report]" in lines[1]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert {(t["column"], t["first_bad"], t["first_good"]) for t in summary["transitions"]} == {
        ("x86_64/base", "v6.1.176", "v6.1.192"), ("arm64/base", "v6.1.192", None)}
    assert summary["reports"][0]["where"] == ["v6.1.176 x86_64/uaf-inject ((no test))"]
    html = page.read_text()
    assert 'id="matrix"' in html and sig in html and "junit.xml" in html


def test_a_report_names_the_test_it_was_tied_to_and_whether_it_was_expected(
        tmp_path: Path) -> None:
    store = Store(tmp_path)
    sig = "KASAN: use-after-free Read in array_map_update_elem"
    o = outcome("v6.1.192", 0, "x86_64", "uaf-inject", (sig,), "test_free.py::test_uaf", True)
    put(store, o, {"test_a": Status.PASS})
    text, page = report.write_all(store)
    where = json.loads((tmp_path / "summary.json").read_text())["reports"][0]["where"]
    assert where == ["v6.1.192 x86_64/uaf-inject (test_free.py::test_uaf - expected by the "
                     "variant)"]
    assert "test_free.py::test_uaf" in page.read_text() and "test_free.py::test_uaf" in text


def test_rebuilding_a_directory_that_is_not_a_run_is_refused_and_writes_nothing(
        tmp_path: Path) -> None:
    from harness.errors import UserError
    with pytest.raises(UserError, match="not a run directory"):
        report.rebuild(tmp_path / "nowhere")
    assert not (tmp_path / "nowhere").exists()


def test_a_boot_failure_reads_short_in_the_table_and_the_reason_comes_below(
        tmp_path: Path) -> None:
    store = Store(tmp_path)
    o = outcome("v6.1.192", 0, "x86_64")
    o = replace(o, stages={Stage.BUILD: Status.PASS, Stage.BOOT: Status.FAIL,
                           Stage.TESTS: Status.SKIP}, exit_reason="panic",
                reason="boot: panic: [   10.657742] Kernel panic - not syncing: VFS")
    put(store, o, {})
    text, _ = report.write_all(store)
    assert text.splitlines()[1].split() == ["v6.1.192", "boot", "panic"]
    assert "why v6.1.192 x86_64/base: boot: panic" in text


def test_an_unreadable_metadata_file_is_left_out_of_the_report_not_a_crash(
        tmp_path: Path) -> None:
    store = Store(tmp_path)
    put(store, outcome("v1", 0, "x86_64"), {"a": Status.PASS})
    put(store, outcome("v2", 1, "x86_64"), {"a": Status.PASS})
    (tmp_path / "targets/v2__x86_64__base/metadata.json").write_text('{"schema": 2, "na')
    text, _ = report.write_all(store)
    assert "v1" in text and "v2" not in text


def test_signatures_of_earlier_runs_are_rederived_from_the_stored_report_text(
        tmp_path: Path) -> None:
    from harness import kreport
    console = Path(__file__).parent / "data" / "console" / "x86_64_lkdtm_panic_mid_test.log"
    panic = kreport.parse(console.read_text().splitlines())[0]
    store = Store(tmp_path)
    o = outcome("v6.1.192", 0, "x86_64", "base", ("panic: dumptest",), "lkdtm::PANIC")
    put(store, o, {"test_a": Status.PASS})
    (tmp_path / "targets/v6.1.192__x86_64__base/kasan").mkdir()
    (tmp_path / "targets/v6.1.192__x86_64__base/kasan/01-kasan.txt").write_text(panic.text)
    text, _ = report.write_all(store)
    assert "report: kernel panic: dumptest" in text and "report: panic: dumptest" not in text
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["targets"][0]["signatures"] == ["kernel panic: dumptest"]


def test_the_page_shows_each_test_on_each_target_with_its_reason_and_the_run_facts(
        tmp_path: Path) -> None:
    store = Store(tmp_path)
    old, new = outcome("v6.1.192", 0, "x86_64"), outcome("v7.3-rc7", 1, "x86_64")
    put(store, replace(old, accel="tcg"), {"test_a": Status.PASS})
    d = store.root / "targets" / "v7.3-rc7__x86_64__base"
    cases = [Case("python", "t", "test_a", Status.SKIP, 0.25, "no fentry <here>"),
             Case("python", "t", "test_leak", Status.PASS, 3.5,
                  properties=(("leaked_templates", "2"),))]
    junit.write(cases, d.name, {}, d / "junit.xml")
    write_json(d / "metadata.json", replace(new, accel="tcg", counts=counts(
        [c.status.value for c in cases])).to_json())
    html = report.write_all(store)[1].read_text()
    grid = html[html.index('id="tests"'):]
    grid = grid[:grid.index("</table>")]
    rows = grid.split("<tr>")[2:]
    assert [r[len("<th>"):r.index("</th>")] for r in rows] == ["t.py::test_a", "t.py::test_leak"]
    # status and seconds in each cell; the skip's reason (escaped) and the test's
    # figures one click away; a test a target did not run is a dash
    assert "pass 0.0 s" in rows[0] and "no fentry &lt;here&gt;" in rows[0]
    assert "<summary>skip 0.2 s</summary>" in rows[0]
    assert '<td class="skip">-</td>' in rows[1] and "leaked_templates: 2" in rows[1]
    # a run from before run.json says so; the accelerator comes from the targets
    facts = html[html.index('id="facts"'):]
    assert "not recorded" in facts and "<td>accelerator</td><td>tcg</td>" in facts
    write_json(tmp_path / "run.json", {"lab": "/x/lab.yaml", "started": "2026-12-02 09:00:00 UTC",
                                       "qemu": {"x86_64": "QEMU emulator version 7.2.x"}})
    facts = report.write_all(store)[1].read_text()
    assert "<td>qemu (x86_64)</td><td>QEMU emulator version 7.2.x</td>" in facts
    assert "not recorded" not in facts and "/x/lab.yaml" in facts


def test_empty_tables_say_none(tmp_path: Path) -> None:
    store = Store(tmp_path)
    (tmp_path / "targets").mkdir()
    html = report.write_all(store)[1].read_text()
    assert "none: no target ran a test" in html and "none: no kernel printed a report" in html
    assert "none: no target booted" in html
