"""Bisection over fakes at the matrix's seams: the fake kbuild tree (whose vmlinux is
its sources) and guests whose test fails on a kernel carrying the breaking change.
A commit that does not build is skipped; the culprit is verified by its revert."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from harness.bisect import bisect
from harness.boot import GuestKit
from harness.config import GuestSettings, load_lab
from harness.errors import UserError
from harness.main import Session
from harness.ops import Ops
from tests.conftest import git
from tests.test_matrix import PY, FakeBooted, Guests, Script, seams

BROKEN = "int broken_lookup;"


class ByKernel(Guests):
    """Boots whose test_one fails when the kernel carries BROKEN (the fake vmlinux is
    the tree's sources)."""

    @contextmanager
    def __call__(self, kit: GuestKit, kernel: Path, settings: GuestSettings,
                 run_dir: Path, *, machine: object = None) -> Iterator[FakeBooted]:
        broken = BROKEN in (kernel.parent / "vmlinux").read_text()
        self.scripts = [Script(fail=(PY[0],)) if broken else Script()]
        with super().__call__(kit, kernel, settings, run_dir) as booted:
            yield booted


def commit(repo: Path, path: str, text: str, subject: str, remove: bool = False) -> str:
    if remove:
        (repo / path).unlink()
        git(repo, "rm", "-q", path)
    else:
        with open(repo / path, "a") as fh:
            fh.write(text)
        git(repo, "add", path)
    git(repo, "commit", "-q", "-m", subject)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def history(fake_tree: Path) -> dict[str, str]:
    """After v3: a harmless change, the breaking one, one that does not build, its fix,
    and another harmless change."""
    return {"harmless": commit(fake_tree, "map_in_map.c", "int a;\n", "bpf: harmless"),
            "culprit": commit(fake_tree, "arraymap.c", f"{BROKEN}\n",
                              "bpf: Inline the inner lookup differently"),
            "nobuild": commit(fake_tree, "BREAK", "x\n", "bpf: does not build"),
            "builds": commit(fake_tree, "BREAK", "", "bpf: builds again", remove=True),
            "head": commit(fake_tree, "map_in_map.c", "int b;\n", "bpf: another")}


@pytest.fixture
def session(fake_tree: Path, tmp_path: Path) -> Session:
    lab = tmp_path / "lab.yaml"
    lab.write_text(f"workdir: {tmp_path / 'work'}\n"
                   f"source: {{git: {fake_tree}, commits: [v3]}}\n"
                   "arches: [x86_64]\nbuild: {ccache: false, jobs: 1}\n")
    return Session(load_lab(lab), Ops(verbose=False))


def test_bisection_names_the_culprit_skips_what_does_not_build_and_verifies_by_revert(
        session: Session, history: dict[str, str], tmp_path: Path) -> None:
    guests = ByKernel()
    found = bisect(session, "v3", history["head"], PY[0], "x86_64", seams=seams(guests))
    assert found.culprit == history["culprit"]
    assert found.subject == "bpf: Inline the inner lookup differently"
    assert found.verification == "verified" and found.confidence in ("high", "medium")
    by_sha = {s.sha: s for s in found.steps}
    assert all(s.verdict == ("bad" if s.sha in (history["culprit"], history["builds"],
                                                history["head"]) else
                             "skip" if s.sha == history["nobuild"] else "good")
               for s in found.steps), found.steps
    if history["nobuild"] in by_sha:
        assert by_sha[history["nobuild"]].why.startswith("does not build")
    assert 1 <= len(found.steps) <= 4
    assert "culprit: " in found.text() and "revert: verified" in found.text()


def test_a_culprit_whose_revert_does_not_apply_is_unverified(
        session: Session, history: dict[str, str], fake_tree: Path) -> None:
    # the breaking line is rewritten after the culprit: its diff no longer reverses
    text = (fake_tree / "arraymap.c").read_text().replace(BROKEN, f"{BROKEN} /* reworked */")
    (fake_tree / "arraymap.c").write_text(text)
    git(fake_tree, "commit", "-q", "-am", "bpf: rework")
    head = git(fake_tree, "rev-parse", "HEAD")
    found = bisect(session, "v3", head, PY[0], "x86_64", seams=seams(ByKernel()))
    # the rework keeps it broken: BROKEN is still in the kernel
    assert found.culprit == history["culprit"]
    assert found.verification.startswith("unverified: the revert does not apply")
    assert found.confidence == "low"


def test_bad_revisions_and_variants_are_refused(session: Session) -> None:
    with pytest.raises(UserError, match="--good nope: not a commit"):
        bisect(session, "nope", "v3", PY[0], "x86_64")
    with pytest.raises(UserError, match="--variant x: not a variant"):
        bisect(session, "v1", "v3", PY[0], "x86_64", variant="x")
