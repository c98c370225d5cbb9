"""End to end: ./lab backports on real kernels, real guests and the real reproducers.

On the default Debian lab: 6.1.192 carries 8766733641 since 6.1.75 by the
table and by Debian's own changelog; its reproducers are clean, and with the fix taken
out (the project's revert patch for 6.1) KASAN reports the use-after-free again. Then
the whole default lab (6.1.192 and 7.3-rc7, both arches, every fix of the table).

On a local git tree in the shape of linux-stable, made from Debian's 6.1.190 and
6.1.192 sources (./lab test --full): a release with the fix taken out, then the prerequisite's
and the fix's backports carrying stable trailers, then 6.1.192; and a branch where the
fix was backported without its prerequisite. Expected from that history alone: missing
before the backport, verified from it on, the branch flagged incomplete."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from harness.config import load_lab
from harness.main import Session
from harness.model import Selection
from harness.ops import Ops

pytestmark = pytest.mark.e2e
PROJECT = Path(__file__).resolve().parents[2]
UAF = "8766733641"
UAF_FULL = "876673364161da50eed6b472d746ef88242b2368"
PREREQ_FULL = "20c20bd11a0702ce4dc9300c3da58acf551d9725"
UAF_SUBJECT = "bpf: Defer the free of inner map when necessary"
PREREQ_SUBJECT = "bpf: Add map and need_defer parameters to .map_fd_put_ptr()"
REVERT_6_1 = PROJECT / "kernels" / "patches" / "reverts" / "6.1" / f"{UAF}.patch"


def backports(run_dir: Path, *args: str) -> tuple[int, str, list[dict[str, object]]]:
    out = run_dir.parent / f"{run_dir.name}.out"
    with out.open("wb") as fh:
        code = subprocess.run([str(PROJECT / "lab"), "backports", "--run-dir", str(run_dir),
                               *args], stdout=fh, stderr=subprocess.STDOUT,
                              timeout=3600).returncode
    text = out.read_text(errors="replace")
    found = run_dir / "backports.json"
    rows = json.loads(found.read_text())["backports"] if found.exists() else []
    return code, text, rows


@pytest.mark.full  # 12 min: the fix's reproducers as is, and on 5 boots without it
def test_the_uaf_fix_is_verified_on_debian_6_1_192(tmp_path: Path) -> None:
    run = tmp_path / "run"
    code, out, rows = backports(run, "--fix", UAF, "--commit", "v6.1.192", "--arch", "x86_64")
    assert code == 0, out[-4000:]
    assert len(rows) == 1, rows
    row = rows[0]
    assert row["verdict"] == "verified" and row["present"] is True and not row["flags"], row
    # Debian's changelog names the backport; the table's 6.1.75 agrees
    assert "Debian changelog" in str(row["evidence"]) and UAF_SUBJECT in str(row["evidence"])
    assert str(row["as_is"]).startswith("clean"), row
    # taken out, the use-after-free is back: a KASAN report tied to a reproducer
    assert "KASAN: use-after-free" in str(row["without"]), row
    xml = (run / "backports.xml").read_text()
    assert xml.count("<testcase") == 1 and "<failure" not in xml
    assert 'id="backports"' in (run / "index.html").read_text()
    assert "verified" in out


def git(repo: Path, *args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True, env={**os.environ, "GIT_AUTHOR_NAME": "bpflab",
                                          "GIT_AUTHOR_EMAIL": "bpflab@localhost",
                                          "GIT_COMMITTER_NAME": "bpflab",
                                          "GIT_COMMITTER_EMAIL": "bpflab@localhost",
                                          "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z",
                                          "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z",
                                          **(env or {})})
    return done.stdout.strip()


def stable_tree() -> Path:
    """linux-6.1.y in miniature, from the default lab's imported Debian releases, in the
    lab's workdir (work/e2e/linux-stable): the same commits on every run (fixed dates),
    so the lab's checkout, build directory and kernel cache serve the next run too. No
    working tree is written: trees are made in a scratch index."""
    lab = load_lab()
    lab = replace(lab, source=replace(lab.source, debian_versions=("6.1.190", "6.1.192")))
    Session(lab, Ops(verbose=False)).targets(Selection())  # imports them when missing
    debian = lab.workdir / "src" / "debian.git"
    where = load_lab().workdir / "e2e"
    repo = where / "linux-stable"
    if not (repo / "HEAD").exists():
        where.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "clone", "-q", "--bare", "--shared", str(debian), str(repo)],
                       check=True)
        git(repo, "tag", "-d", *git(repo, "tag").split())
    old, new = (git(debian, "rev-parse", f"v6.1.{n}^{{tree}}") for n in (190, 192))
    index = {"GIT_INDEX_FILE": str(where / "index")}
    (where / "index").unlink(missing_ok=True)
    git(repo, "read-tree", old, env=index)
    git(repo, "apply", "--cached", str(REVERT_6_1), env=index)
    without = git(repo, "write-tree", env=index)

    def commit(tree: str, message: str, *parents: str) -> str:
        return git(repo, "commit-tree", tree, *(a for p in parents for a in ("-p", p)),
                   "-m", message)

    release = commit(without, "Linux 6.1.190\n\n(bpflab: with 8766733641 taken out)")
    git(repo, "tag", "-f", "v6.1.190", release)
    # 20c20bd11a's code is in the 6.1.190 sources already: its backport only names it
    prereq = commit(without, f"{PREREQ_SUBJECT}\n\ncommit {PREREQ_FULL} upstream.", release)
    fix = commit(old, f"{UAF_SUBJECT}\n\ncommit {UAF_FULL} upstream.", prereq)
    git(repo, "tag", "-f", "backport", fix)
    git(repo, "tag", "-f", "v6.1.192", commit(new, "Linux 6.1.192", fix))
    alone = commit(old, f"{UAF_SUBJECT}\n\n[ Upstream commit {UAF_FULL} ]", release)
    git(repo, "tag", "-f", "uaf-without-prerequisite", alone)
    return repo


@pytest.mark.full
def test_a_stable_branch_is_missing_then_verified_and_a_lone_backport_is_incomplete(
        tmp_path: Path) -> None:
    repo = stable_tree()
    lab = tmp_path / "stable.yaml"
    base = (PROJECT / "lab.yaml").read_text()
    build = base[base.index("build:"):base.index("variants:")]
    lab.write_text(f"workdir: {PROJECT / 'work'}\n"
                   f"source:\n  git: {repo}\n"
                   "  commits: [v6.1.190, backport, v6.1.192, uaf-without-prerequisite]\n"
                   f"arches: [x86_64]\n{build}")
    code, out, rows = backports(tmp_path / "run", "--lab", str(lab), "--fix", UAF)
    assert code == 1, out[-4000:]  # a release misses the fix, a backport is incomplete
    got = {str(r["kernel"]): r for r in rows}
    assert got["v6.1.190"]["verdict"] == "missing", got["v6.1.190"]
    assert "KASAN: use-after-free" in str(got["v6.1.190"]["as_is"])
    for name in ("backport", "v6.1.192"):
        row = got[name]
        assert row["verdict"] == "verified" and not row["flags"], row
        assert UAF_FULL in str(row["evidence"]), row
        assert "KASAN: use-after-free" in str(row["without"]), row  # the revert brings it back
        assert str(row["before"]).startswith("v6.1.190: KASAN"), row
    lone = got["uaf-without-prerequisite"]
    flags = lone["flags"]
    assert lone["verdict"] == "verified" and isinstance(flags, list), lone
    assert any("prerequisite 20c20bd11a absent" in str(f) for f in flags), lone
    assert "INCOMPLETE" in out


@pytest.mark.full
def test_the_default_lab_carries_each_fix_it_should_and_each_fix_works(tmp_path: Path) -> None:
    """The README's table: 6.1.192 and 7.3-rc7, both arches. 8766733641 (6.1.75, v6.8)
    and cba41bb78d (6.1.34, v6.4) are in both by the stable table, Debian's changelog
    and the release; taking either out (the series' revert patch) brings its bug back.
    d48995723c fixes aa3496accc (v6.2): 6.1 never had the bug, not affected; on 7.3
    its revert brings the leak back."""
    code, out, rows = backports(tmp_path / "run")
    assert code == 0, out[-4000:]
    got = {(str(r["fix"]), str(r["kernel"]), str(r["arch"])): r for r in rows}
    kernels = [(k, a) for k in ("v6.1.192", "v7.3-rc7") for a in ("x86_64", "arm64")]
    assert sorted(got) == sorted((f, k, a) for f in (UAF, "cba41bb78d", "d48995723c")
                                 for k, a in kernels)
    for (fix, kernel, _), row in got.items():
        wanted = "not-affected" if (fix, kernel) == ("d48995723c", "v6.1.192") else "verified"
        assert row["verdict"] == wanted and not row["flags"], row
