"""The report is rebuilt from the store: table, summary, first-bad/first-good, HTML."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness import junit, report
from harness.junit import Case
from harness.results import Status, write_json
from harness.store import Store, TargetOutcome, counts
from dataclasses import asdict

OK = {"build": "pass", "boot": "pass", "tests": "pass"}


def outcome(name: str, order: int, arch: str, variant: str = "base",
            sigs: tuple[str, ...] = ()) -> TargetOutcome:
    return TargetOutcome(commit=name * 4, name=name, subject="s", arch=arch, variant=variant,
                         order=order, fingerprint="f", stages=dict(OK), signatures=sigs)


def put(store: Store, o: TargetOutcome, statuses: dict[str, Status]) -> None:
    d = store.root / "targets" / f"{o.name}__{o.arch}__{o.variant}"
    cases = [Case("python", "t", n, s) for n, s in statuses.items()]
    junit.write(cases, d.name, {}, d / "junit.xml")
    data = asdict(o)
    data["counts"] = counts(cases)
    write_json(d / "metadata.json", data)


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
    assert summary["reports"][0]["where"] == ["v6.1.176 x86_64/uaf-inject"]
    html = page.read_text()
    assert 'id="matrix"' in html and sig in html and "junit.xml" in html


def test_a_report_names_the_test_it_was_tied_to_and_whether_it_was_expected(
        tmp_path: Path) -> None:
    store = Store(tmp_path)
    sig = "KASAN: use-after-free Read in array_map_update_elem"
    o = outcome("v6.1.192", 0, "x86_64", "uaf-inject", (sig,))
    o = TargetOutcome(**{**asdict(o), "expected_reports": ("KASAN: use-after-free",)})
    put(store, o, {"test_a": Status.PASS})
    (tmp_path / "targets" / "v6.1.192__x86_64__uaf-inject" / "kasan").mkdir()
    (tmp_path / "targets" / "v6.1.192__x86_64__uaf-inject" / "kasan" / "01-kasan.txt") \
        .write_text(f"# {sig}\n# test: test_free.py::test_uaf\n# console line 3\nBUG: ...\n")
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
