"""The KCIDB export: what KernelCI's schema (kcidb-io) accepts, built from a run's store;
unexpected reports become issues with incidents, the variant's expected ones do not."""

from __future__ import annotations

from pathlib import Path

import kcidb_io
import pytest

from harness import kcidb
from harness.config import load_lab
from harness.errors import LabError
from harness.model import Commit, Status, Target
from harness.store import Store
from tests.test_report import outcome, put

UAF = "KASAN: use-after-free Read in array_map_update_elem"
WARN = "WARNING in bpf_map_put"


def targets(store: Store) -> list[Target]:
    lab = load_lab()
    x86 = lab.arch("x86_64")
    base, uaf = lab.variants[0], lab.variants[1]
    put(store, outcome("v7.3-rc7", 1, "x86_64", sigs=(WARN,), test="t.py::test_a"),
        {"test_a": Status.FAIL, "test_b[shared]": Status.PASS})
    put(store, outcome("v7.3-rc7", 1, "x86_64", "uaf-inject", (UAF,), "t.py::test_a", True),
        {"test_a": Status.PASS})
    commit = Commit("ab" * 20, "t", "v7.3-rc7", "Linux 7.3-rc7", "7.3")
    return [Target(commit, x86, base), Target(commit, x86, uaf)]


def test_a_run_exports_checkouts_builds_tests_and_its_unexpected_reports(
        tmp_path: Path) -> None:
    store = Store(tmp_path)
    data = kcidb.export(store, targets(store), "master", "https://example.invalid/bpf-next.git")
    path = kcidb.write(data, tmp_path / "kcidb.json")
    kcidb_io.schema.LATEST.validate(data)
    assert path.exists()
    assert [c["git_repository_branch"] for c in data["checkouts"]] == ["master"]
    assert [b["config_name"] for b in data["builds"]] == ["bpflab-base", "bpflab-uaf-inject"]
    assert sorted((t["path"], t["status"]) for t in data["tests"]) == [
        ("bpflab.python.t.test_a", "FAIL"), ("bpflab.python.t.test_a", "PASS"),
        ("bpflab.python.t.test_b_shared_", "PASS")]
    # the WARNING is an issue seen once; uaf-inject's expected KASAN report is not
    assert [i["report_subject"] for i in data["issues"]] == [WARN]
    assert len(data["incidents"]) == 1 and data["incidents"][0]["build_id"] == \
        data["builds"][0]["id"]


def test_an_export_the_schema_refuses_is_not_written(tmp_path: Path) -> None:
    store = Store(tmp_path)
    data = kcidb.export(store, targets(store))
    data["builds"][0]["status"] = "MAYBE"  # type: ignore[index]
    with pytest.raises(LabError, match="does not validate"):
        kcidb.write(data, tmp_path / "kcidb.json")
    assert not (tmp_path / "kcidb.json").exists()
