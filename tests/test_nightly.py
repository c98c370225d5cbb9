"""./lab nightly over fakes at the matrix's seams (the fake kbuild tree as the remote
branch, scripted guests): the first night, a regression confirmed on a fresh boot, a
flaky test classified unstable, the commits chosen since the last night and capped,
and a remote that cannot be reached."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import kcidb_io
import pytest

from harness import history
from harness.config import load_lab
from harness.errors import LabError, UserError
from harness.history import Change
from harness.main import Session
from harness.model import Verdict
from harness.nightly import NightResult, nightly, nights_text
from harness.ops import Ops
from tests.conftest import git
from tests.test_bisect import BROKEN, ByKernel
from tests.test_matrix import PY, Guests, Script, junit_xml, seams

FAIL = '<failure message="inner map lookup returned the wrong value"/>'


@pytest.fixture
def lab(fake_tree: Path, tmp_path: Path) -> Session:
    path = tmp_path / "next.yaml"
    path.write_text(f"workdir: {tmp_path / 'work'}\n"
                    f"source: {{git: next.git, remote: {fake_tree}, branch: master,\n"
                    "         paths: [map_in_map.c], max_commits: 2}\n"
                    "arches: [x86_64]\nbuild: {ccache: false, jobs: 1}\n"
                    "guest: {max_boots: 4}\n")
    return Session(load_lab(path), Ops(verbose=False))


def push(repo: Path, path: str, subject: str, line: str = "", drop: str = "") -> str:
    text = (repo / path).read_text().replace(f"{drop}\n", "") if drop else \
        (repo / path).read_text()
    (repo / path).write_text(text + f"{line or f'/* {subject} */'}\n")
    git(repo, "commit", "-q", "-am", subject)
    return git(repo, "rev-parse", "HEAD")


def night(lab: Session, tmp_path: Path, *scripts: Script) -> tuple[NightResult, Guests]:
    guests = Guests(list(scripts) or [Script()])
    return nightly(lab, tmp_path / "run", False, seams(guests)), guests


def test_nights_follow_the_branch_and_a_regression_is_confirmed_then_bisected(
        lab: Session, fake_tree: Path, tmp_path: Path) -> None:
    first = nightly(lab, tmp_path / "run", False, seams(ByKernel()))
    assert first.verdict is Verdict.OK and first.plan.commits == (git(fake_tree, "rev-parse",
                                                                      "HEAD"),)
    assert "first night" in first.summary
    # three map_in_map.c changes land, and one outside source.paths that breaks test_one
    landed = [push(fake_tree, "map_in_map.c", f"bpf: change {i}") for i in range(2)]
    culprit = push(fake_tree, "arraymap.c", "bpf: Inline the inner lookup differently",
                   BROKEN)
    head = push(fake_tree, "map_in_map.c", "bpf: change 2")
    guests = ByKernel()
    second = nightly(lab, tmp_path / "run", False, seams(guests))
    # max_commits 2: the head and the newest map_in_map.c change before it; one named
    assert second.plan.commits == (landed[1], head)
    assert second.plan.dropped == (landed[0],)
    assert second.plan.since == first.plan.head
    assert [(c.key, c.change) for c in second.changes] == [
        ((PY[0], "x86_64", "base"), Change.REGRESSION)]
    assert second.verdict is Verdict.FAILED
    assert "regression     test_a.py::test_one (x86_64/base): pass -> fail" in second.summary
    # bisected over every commit, the one outside source.paths included; verified
    [found] = second.bisections
    assert found.culprit == culprit and found.verification == "verified", found.text()
    assert f"bisected test_a.py::test_one (x86_64/base): {culprit[:12]}" in second.summary
    # the night in KCIDB's schema, as a KernelCI submitter would send it
    data = json.loads((tmp_path / "run" / "kcidb.json").read_text())
    kcidb_io.schema.LATEST.validate(data)
    assert ("bpflab.python.test_a.test_one", "FAIL") in {(t["path"], t["status"])
                                                        for t in data["tests"]}
    assert {c["git_commit_hash"] for c in data["checkouts"]} >= {head}
    # the third night: a fix lands
    fixed = push(fake_tree, "arraymap.c", "bpf: fix the lookup", "", drop=BROKEN)
    third = nightly(lab, tmp_path / "run", False, seams(ByKernel()))
    assert third.plan.commits == (fixed,)
    assert [(c.key[0], c.change) for c in third.changes] == [(PY[0], Change.FIXED)]
    assert third.verdict is Verdict.OK and third.bisections == []
    page = (tmp_path / "run" / "nights.html").read_text()
    assert f"{culprit[:12]} bpf: Inline the inner lookup differently [verified, " in page
    assert page.count("<tr>") == 2 + 3 + 1  # two headers, 3 nights, "none" for signatures
    assert "none: no unexpected report in any night" in page
    # a night with nothing new: no build, no boot, nothing changed
    guests = ByKernel()
    fourth = nightly(lab, tmp_path / "run", False, seams(guests))
    assert guests.boots == [] and fourth.changes == [] and fourth.verdict is Verdict.OK
    assert "nothing new since last night" in fourth.summary
    text = nights_text(lab)
    assert [line.split()[-1] for line in text.splitlines()[1:]] == ["ok", "failed", "ok", "ok"]


def test_a_failure_that_passes_on_a_fresh_boot_is_unstable_and_counted(
        lab: Session, fake_tree: Path, tmp_path: Path) -> None:
    night(lab, tmp_path)
    push(fake_tree, "map_in_map.c", "bpf: harmless")
    flaky, _ = night(lab, tmp_path, Script(junit=junit_xml({PY[0]: FAIL, PY[1]: "",
                                                            PY[2]: ""})), Script())
    assert [(c.key[0], c.change) for c in flaky.changes] == [(PY[0], Change.UNSTABLE)]
    assert flaky.verdict is Verdict.OK and flaky.bisections == []  # not declared
    assert "passed on a fresh boot (2 flips so far)" in flaky.summary
    assert (tmp_path / "run" / "night.txt").read_text() == flaky.summary + "\n"
    engine = history.open_db(history.default_url(lab.lab.workdir))
    assert history.flips(engine, "next", (PY[0], "x86_64", "base")) == 2


def test_a_remote_that_cannot_be_reached_is_one_line(lab: Session, fake_tree: Path,
                                                     tmp_path: Path) -> None:
    shutil.rmtree(fake_tree)
    with pytest.raises(LabError) as err:
        night(lab, tmp_path)
    assert str(err.value).startswith(f"fetching master from {fake_tree}: ")
    assert "\n" not in str(err.value)


def test_a_lab_without_a_branch_to_follow_is_refused(fake_tree: Path, tmp_path: Path) -> None:
    path = tmp_path / "plain.yaml"
    path.write_text(f"workdir: {tmp_path / 'w'}\nsource: {{git: {fake_tree}, commits: [v1]}}\n")
    with pytest.raises(UserError, match="source.remote and source.branch"):
        nightly(Session(load_lab(path), Ops(verbose=False)))


def test_a_head_that_stops_building_is_one_regression_not_bisected_here(
        lab: Session, fake_tree: Path, tmp_path: Path) -> None:
    night(lab, tmp_path)
    (fake_tree / "BREAK").write_text("x\n")
    git(fake_tree, "add", "BREAK")
    git(fake_tree, "commit", "-q", "-m", "bpf: does not build")
    push(fake_tree, "map_in_map.c", "bpf: touch")
    broken, guests = night(lab, tmp_path)
    assert [(c.key[0], c.change) for c in broken.changes] == [("lab.build", Change.REGRESSION)]
    assert broken.verdict is Verdict.FAILED and broken.bisections == [] and guests.boots == []
    assert "regression     lab.build (x86_64/base): pass -> fail" in broken.summary
    # building again: the build is fixed, and its tests are not new
    (fake_tree / "BREAK").unlink()
    git(fake_tree, "commit", "-q", "-am", "bpf: builds again")
    again, _ = night(lab, tmp_path)
    assert [(c.key[0], c.change) for c in again.changes] == [("lab.build", Change.FIXED)]
