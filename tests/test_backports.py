"""./lab backports over fakes at the matrix's seams: a fake kbuild tree in the shape of
a stable branch (a release without the UAF fix, its prerequisite and the fix backported
with stable trailers, a later release, and a branch with the fix but not its
prerequisite), and guests that behave as the kernel they boot would: the fix's
reproducers fail where the fix's code is not in the tree."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

from harness import backports as bp
from harness import commits
from harness import matrix as mx
from harness.backports import Judgement, Seen
from harness.boot import GuestKit
from harness.config import GuestSettings, load_lab
from harness.errors import UserError
from harness.main import Session
from harness.model import Selection, Verdict
from harness.ops import Ops
from harness.presence import Evidence
from tests.conftest import DATA, git
from tests.test_matrix import CLEAN_BOOT, FakeBooted, Script, fake_c_suite, fake_kit, junit_xml

TABLE = {c.id: c for c in commits.load_table()}
UAF, PREREQ = TABLE["8766733641"], TABLE["20c20bd11a"]
UAF_FULL = "876673364161da50eed6b472d746ef88242b2368"
PREREQ_FULL = "20c20bd11a0702ce4dc9300c3da58acf551d9725"
FIXED_LINE = "int defer_free_of_inner_maps = 1;\n"  # the fake tree's "fix"
PY_TESTS = tuple(t for t in UAF.tests if "::test_" in t)
C_TESTS = tuple(t for t in UAF.tests if t.startswith("map_in_map::"))


@pytest.fixture
def stable_tree(tmp_path: Path) -> Path:
    """v6.1.74 (no fix) -> prerequisite backport -> fix backport -> v6.1.75 -> v6.1.76;
    branch `incomplete` from v6.1.74: the fix backported without its prerequisite."""
    repo = tmp_path / "linux"
    shutil.copytree(DATA / "fakekernel", repo)
    make = repo / "Makefile"
    make.write_text("VERSION = 6\nPATCHLEVEL = 1\nSUBLEVEL = 74\n" + make.read_text())
    git(repo, "init", "-q", "-b", "linux-6.1.y")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "Linux 6.1.74")
    git(repo, "tag", "v6.1.74")
    git(repo, "commit", "-q", "--allow-empty", "-m",
        f"{PREREQ.subject}\n\ncommit {PREREQ_FULL} upstream.\n")
    fix_message = f"{UAF.subject}\n\n[ Upstream commit {UAF_FULL} ]\n"
    with open(repo / "map_in_map.c", "a") as fh:
        fh.write(FIXED_LINE)
    git(repo, "commit", "-q", "-am", fix_message)
    for sub in (75, 76):
        make.write_text(make.read_text().replace(f"SUBLEVEL = {sub - 1}", f"SUBLEVEL = {sub}"))
        git(repo, "commit", "-q", "-am", f"Linux 6.1.{sub}")
        git(repo, "tag", f"v6.1.{sub}")
    git(repo, "checkout", "-q", "-b", "incomplete", "v6.1.74")
    with open(repo / "map_in_map.c", "a") as fh:
        fh.write(FIXED_LINE)
    git(repo, "commit", "-q", "-am", fix_message)
    git(repo, "tag", "v6.1.74-uaf-only")
    git(repo, "checkout", "-q", "linux-6.1.y")
    return repo


@dataclass
class Kernels:
    """The boot seam: a guest whose fix reproducers fail unless the kernel it boots
    was built from a tree with the fix's line (the fake build copies map_in_map.c)."""

    boots: list[str] = field(default_factory=list)

    @contextmanager
    def __call__(self, kit: GuestKit, kernel: Path, settings: GuestSettings,
                 run_dir: Path, *, machine: object = None) -> Iterator[FakeBooted]:
        fixed = FIXED_LINE.strip() in _built_source(kernel)
        self.boots.append(f"{run_dir.parent.name} fixed={fixed}")
        run_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(CLEAN_BOOT, run_dir / "console.log")
        bad = '<failure message="KASAN-free reproducer saw the inner map freed"/>'
        script = Script(junit=junit_xml({t: "" if fixed else bad for t in PY_TESTS}),
                        c_out=_tap(fixed))
        yield FakeBooted(run_dir, script, [])


def _built_source(kernel: Path) -> str:
    """What the fake kbuild compiled into this kernel: its vmlinux holds the sources."""
    return (kernel.parent / "vmlinux").read_text(errors="replace")


def _tap(fixed: bool) -> str:
    lines = ["TAP version 13", f"1..{len(C_TESTS)}"]
    lines += [f"{'ok' if fixed else 'not ok'} {i + 1} - {t.split('::')[1]}"
              for i, t in enumerate(C_TESTS)]
    return "\n".join(lines) + "\n"


def session(tmp_path: Path, repo: Path, commits_: str) -> Session:
    lab = tmp_path / "lab.yaml"
    lab.write_text(f"workdir: {tmp_path / 'work'}\n"
                   f"source: {{git: {repo}, commits: [{commits_}]}}\n"
                   "arches: [x86_64]\nbuild: {ccache: false, jobs: 1}\n")
    return Session(load_lab(lab), Ops(verbose=False))


def run(tmp_path: Path, repo: Path, commits_: str, kernels: Kernels,
        fix: str = "8766733641") -> bp.BackportsResult:
    catalog = {"python": PY_TESTS + ("test_other.py::test_unrelated",),
               "c": C_TESTS + ("map_in_map::spin_lock_in_inner_map",)}
    seams = mx.Seams(kernels, fake_c_suite, fake_kit, catalog)  # type: ignore[arg-type]
    return bp.backports(session(tmp_path, repo, commits_), tmp_path / "run", False,
                        Selection(), fix, seams)


def by_kernel(result: bp.BackportsResult) -> dict[str, bp.FixVerdict]:
    return {v.check.commit.name: v for v in result.verdicts}


def test_the_revert_of_a_backport_applies_even_when_its_hunk_ends_in_a_blank_line(
        tmp_path: Path) -> None:
    """git diff's last context line may be a lone space: the revert keeps it."""
    repo = tmp_path / "tree"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "map_in_map.c").write_text("{\n\tfree(map);\n}\n\nint next;\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "Linux 6.1.190")
    (repo / "map_in_map.c").write_text("{\n\tdefer(map);\n\tfree(map);\n}\n\nint next;\n")
    git(repo, "commit", "-q", "-am", f"{UAF.subject}\n\ncommit {UAF_FULL} upstream.")
    sha = git(repo, "rev-parse", "HEAD")
    found = Evidence(UAF.id, True, "backport", "backport", sha)
    patch, why = bp._revert_patch(session(tmp_path, repo, "HEAD"), repo, UAF, "6.1.190", found)
    assert patch is not None and not why
    assert subprocess.run(["git", "-C", str(repo), "apply", "--check", str(patch)],
                          capture_output=True, text=True).returncode == 0, patch.read_text()
    git(repo, "apply", str(patch))
    assert (repo / "map_in_map.c").read_text() == "{\n\tfree(map);\n}\n\nint next;\n"


def test_the_fake_kernels_carry_the_fix_only_from_its_backport(stable_tree: Path) -> None:
    assert FIXED_LINE not in git(stable_tree, "show", "v6.1.74:map_in_map.c")
    assert FIXED_LINE.strip() in git(stable_tree, "show", "v6.1.75:map_in_map.c")


def test_a_stable_branch_is_missing_before_the_backport_and_verified_from_it_on(
        tmp_path: Path, stable_tree: Path) -> None:
    kernels = Kernels()
    result = run(tmp_path, stable_tree, "v6.1.74, v6.1.75, v6.1.76", kernels)
    v = by_kernel(result)
    assert v["v6.1.74"].judgement is Judgement.MISSING, v["v6.1.74"]
    for name in ("v6.1.75", "v6.1.76"):
        got = v[name]
        assert got.judgement is Judgement.VERIFIED and not got.check.flags, got
        assert got.as_is.bug is False and got.without is not None and got.without.bug
        assert got.before is not None and got.before.bug  # the release before the backport
        assert got.check.before is not None and got.check.before.commit.name == "v6.1.74"
        assert "backport" in got.check.evidence and UAF.id in got.check.evidence
    assert result.verdict is Verdict.FAILED  # v6.1.74 misses a fix
    data = json.loads((result.root / "backports.json").read_text())["backports"]
    assert {(r["kernel"], r["verdict"]) for r in data} == {
        ("v6.1.74", "missing"), ("v6.1.75", "verified"), ("v6.1.76", "verified")}
    xml = (result.root / "backports.xml").read_text()
    assert xml.count("<testcase") == 3 and xml.count("<failure") == 1
    page = (result.root / "index.html").read_text()
    assert 'id="backports"' in page and "verified" in page and "missing" in page
    # only the fix's reproducers ran: not the rest of the catalogue
    target = (result.root / "targets" / "v6.1.75__x86_64__as-is" / "junit.xml").read_text()
    assert "test_unrelated" not in target and "spin_lock_in_inner_map" not in target
    assert all(t.split("::")[1] in target for t in UAF.tests)
    # the revert of the backport commit is what the `without` kernel was built with
    patches = list((tmp_path / "work" / "backports" / "reverts").glob("*.patch"))
    assert len(patches) == 1 and f"-{FIXED_LINE.strip()}" in patches[0].read_text()


def test_a_backport_without_its_prerequisite_is_flagged_even_when_clean(
        tmp_path: Path, stable_tree: Path) -> None:
    result = run(tmp_path, stable_tree, "v6.1.74-uaf-only", Kernels())
    got = by_kernel(result)["v6.1.74-uaf-only"]
    assert got.judgement is Judgement.VERIFIED and got.as_is.bug is False
    assert len(got.check.flags) == 1 and "prerequisite 20c20bd11a absent" in got.check.flags[0]
    assert result.verdict is Verdict.FAILED
    assert "INCOMPLETE" in bp.table(result.verdicts)


def test_a_rerun_resumes_without_building_or_booting(tmp_path: Path,
                                                     stable_tree: Path) -> None:
    run(tmp_path, stable_tree, "v6.1.75", Kernels())
    again = Kernels()
    result = run(tmp_path, stable_tree, "v6.1.75", again)
    assert again.boots == [] and by_kernel(result)["v6.1.75"].judgement is Judgement.VERIFIED


def test_an_unknown_fix_is_refused_with_the_choices() -> None:
    with pytest.raises(UserError, match=r"--fix deadbeef00: not a fix .* 8766733641"):
        bp.choose_fixes(tuple(TABLE.values()), "deadbeef00")


def check(present: bool, affected: bool = True) -> bp.Check:
    # judge() reads presence and whether the fixed bug's origin is there, nothing else
    return bp.Check(UAF, None, None, present, "", (), affected,  # type: ignore[arg-type]
                    None, None, None)


BUG, CLEAN, NONE = Seen(True, "bug"), Seen(False, "clean"), Seen(None, "not built")


@pytest.mark.parametrize(("present", "affected", "as_is", "without", "before", "verdict"), [
    (True, True, CLEAN, BUG, None, Judgement.VERIFIED),
    (True, True, CLEAN, None, BUG, Judgement.VERIFIED),
    (True, True, BUG, BUG, None, Judgement.INEFFECTIVE),
    (True, True, CLEAN, CLEAN, CLEAN, Judgement.UNPROVABLE),
    (True, True, CLEAN, NONE, None, Judgement.UNPROVABLE),
    (False, True, BUG, None, None, Judgement.MISSING),
    (False, True, CLEAN, None, None, Judgement.MISSING_NOT_REPRODUCED),
    (False, False, CLEAN, None, None, Judgement.NOT_AFFECTED),
    (False, False, BUG, None, None, Judgement.MISSING),
    (True, True, NONE, None, None, Judgement.ERROR),
])
def test_verdicts(present: bool, affected: bool, as_is: Seen, without: Seen | None,
                  before: Seen | None, verdict: Judgement) -> None:
    assert bp.judge(check(present, affected), as_is, without, before) is verdict


def test_the_project_has_a_revert_patch_for_each_6_1_fix_it_reproduces() -> None:
    for fix in ("8766733641", "cba41bb78d"):
        text = (bp.REVERTS / "6.1" / f"{fix}.patch").read_text()
        assert re.search(r"^--- a/kernel/bpf/map_in_map\.c$", text, re.M), fix
