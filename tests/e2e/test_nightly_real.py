"""End to end, no network: three nights of ./lab nightly on real 7.3 kernels, real
guests and both suites. A local bare repository plays bpf-next, made from the lab's
own 7.3-rc7 sources. Night 1 tests its head. Then commits land: one touching
kernel/bpf/map_in_map.c harmlessly, one elsewhere, one that breaks a map-in-map
behaviour the suites check (the inner array template loses its elem_size again), one
that does not build and its fix. Night 2 must report exactly that regression, confirm
it on a fresh boot, bisect it to the breaking commit (skipping the one that does not
build) and verify it by revert. Night 3, after a fix, reports it fixed. Night 4 brings
a deterministic flake: unstable, its flips counted, not bisected."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import kcidb_io
import pytest

from harness.config import load_lab
from harness.history import Change
from harness.main import Session
from harness.model import Selection, Verdict
from harness.nightly import nightly
from harness.ops import Ops

pytestmark = [pytest.mark.e2e, pytest.mark.full]
PROJECT = Path(__file__).resolve().parents[2]
TEST = "test_map_in_map_jit.py::test_inlined_inner_array_lookup_reads_the_requested_element"
MAP_IN_MAP = "kernel/bpf/map_in_map.c"
ELEM_SIZE = "\t\tinner_array_meta->elem_size = inner_array->elem_size;\n"
WHEN = {"GIT_AUTHOR_DATE": "2026-06-01T00:00:00Z", "GIT_COMMITTER_DATE": "2026-06-01T00:00:00Z"}


def git(repo: Path, *args: str, env: dict[str, str] | None = None, text_in: str = "") -> str:
    done = subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True, input=text_in or None,
                          env={**os.environ, "GIT_AUTHOR_NAME": "Jane Hacker",
                               "GIT_AUTHOR_EMAIL": "jane@example.invalid",
                               "GIT_COMMITTER_NAME": "bpflab",
                               "GIT_COMMITTER_EMAIL": "bpflab@localhost", **WHEN,
                               **(env or {})})
    return done.stdout.strip()


class Remote:
    """bpf-next in miniature: a bare repository whose master grows by commits made in
    a scratch index (no working tree of a kernel is written)."""

    def __init__(self, path: Path, debian: Path) -> None:
        self.path, self.index = path, path.parent / "index"
        if not (path / "HEAD").exists():
            subprocess.run(["git", "clone", "-q", "--bare", "--shared", str(debian),
                            str(path)], check=True)
        root = git(path, "commit-tree", git(path, "rev-parse", "v7.3-rc7^{tree}"), "-m",
                   "Linux 7.3-rc7 (bpflab: bpf-next in miniature)")
        git(path, "update-ref", "refs/heads/master", root)

    def commit(self, subject: str, path: str, change: Callable[[str], str]) -> str:
        env = {"GIT_INDEX_FILE": str(self.index)}
        head = git(self.path, "rev-parse", "refs/heads/master")
        git(self.path, "read-tree", head, env=env)
        there = subprocess.run(["git", "-C", str(self.path), "cat-file", "-e",
                                f"{head}:{path}"], capture_output=True).returncode == 0
        old = git(self.path, "show", f"{head}:{path}") + "\n" if there else ""
        blob = git(self.path, "hash-object", "-w", "--stdin", text_in=change(old))
        git(self.path, "update-index", "--add", "--cacheinfo", f"100644,{blob},{path}",
            env=env)
        tree = git(self.path, "write-tree", env=env)
        sha = git(self.path, "commit-tree", tree, "-p", head, "-m", subject)
        git(self.path, "update-ref", "refs/heads/master", sha)
        return sha


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> tuple[Session, Remote]:
    default = load_lab()
    Session(default, Ops(verbose=False)).targets(Selection(commit="v7.3-rc7"))  # imported
    where = default.workdir / "e2e" / "nights"
    if where.exists():
        subprocess.run(["rm", "-rf", str(where)], check=True)  # every night starts afresh
    where.mkdir(parents=True)
    remote = Remote(where / "bpf-next.git", default.workdir / "src" / "debian.git")
    base = (PROJECT / "lab.yaml").read_text()
    path = where / "bpf-next.yaml"
    # one commit a night: the head (bisection walks the rest)
    path.write_text(f"workdir: {default.workdir}\nsource:\n  git: {where / 'fetched.git'}\n"
                    f"  remote: {remote.path}\n  branch: master\n  paths: [{MAP_IN_MAP}]\n"
                    f"  max_commits: 1\nhistory: sqlite:///{where / 'history.sqlite3'}\n"
                    f"arches: [x86_64]\n{base[base.index('build:'):base.index('variants:')]}")
    return Session(load_lab(path), Ops()), remote


def test_three_nights_regression_bisected_verified_then_fixed(
        lab: tuple[Session, Remote], tmp_path: Path) -> None:
    session, remote = lab
    run = tmp_path / "run"
    first = nightly(session, run)
    assert first.verdict is Verdict.OK, first.summary
    assert "first night" in first.summary

    remote.commit("bpf: Comment the inner map template", MAP_IN_MAP,
                  lambda t: t.replace("/* Does not support >1 level map-in-map */",
                                      "/* Does not support >1 level map-in-map (yet) */"))
    remote.commit("Documentation: bpf: a word on map-in-map", "Documentation/bpf/bpflab.rst",
                  lambda t: "map-in-map\n")
    culprit = remote.commit("bpf: Stop copying elem_size to inner array templates",
                            MAP_IN_MAP, lambda t: t.replace(ELEM_SIZE, ""))
    broken = remote.commit("bpf: Tidy bpf_map_meta_alloc", MAP_IN_MAP,
                           lambda t: t.replace("u32 inner_map_meta_size;",
                                               "u32 inner_map_meta_size"))
    remote.commit("bpf: Fix the build", MAP_IN_MAP,
                  lambda t: t.replace("u32 inner_map_meta_size\n", "u32 inner_map_meta_size;\n"))
    second = nightly(session, run)
    print(second.summary)
    assert second.verdict is Verdict.FAILED
    assert [(c.key, c.change) for c in second.changes] == [
        ((TEST, "x86_64", "base"), Change.REGRESSION)], second.summary
    [found] = second.bisections
    assert found.culprit == culprit and found.verification == "verified", found.text()
    assert found.author == "Jane Hacker <jane@example.invalid>"
    steps = {s.sha: s for s in found.steps}
    if broken in steps:
        assert steps[broken].verdict == "skip", found.text()
    data = json.loads((run / "kcidb.json").read_text())
    kcidb_io.schema.LATEST.validate(data)

    fixed = remote.commit("bpf: Copy elem_size to inner array templates again", MAP_IN_MAP,
                          lambda t: t.replace(
                              "\t\tinner_array_meta->index_mask = inner_array->index_mask;\n",
                              "\t\tinner_array_meta->index_mask = inner_array->index_mask;\n"
                              + ELEM_SIZE))
    third = nightly(session, run)
    assert third.plan.commits == (fixed,)
    assert [(c.key[0], c.change) for c in third.changes] == [(TEST, Change.FIXED)], \
        third.summary
    assert third.verdict is Verdict.OK

    # a flake, deterministic: the FLAKE_AT-th inner map template of a boot cannot be
    # allocated. The full suites reach it in one test; that test alone on a fresh boot
    # (the retry) does not, so it is unstable: recorded, not bisected, not a regression.
    remote.commit("bpf: Fail one inner map template per boot (bpflab flake)", MAP_IN_MAP,
                  flaky)
    fourth = nightly(session, run)
    print(fourth.summary)
    [flake] = fourth.changes
    assert flake.change is Change.UNSTABLE and flake.before == "pass", fourth.summary
    assert fourth.bisections == [] and fourth.verdict is Verdict.OK, fourth.summary
    # pass on nights 1 to 3, a failure tonight, a pass on its retry
    assert "passed on a fresh boot (2 flips so far)" in fourth.summary


FLAKE_AT = 6
META_ALLOC = "struct bpf_map *bpf_map_meta_alloc(int inner_map_ufd)\n"
# bpf_map_meta_alloc's own lookup: bpf_map_fd_get_ptr makes the same call on 7.x
GET = "\tCLASS(fd, f)(inner_map_ufd);\n\n\tinner_map = __bpf_map_get(f);\n"


def flaky(text: str) -> str:
    assert text.count(META_ALLOC) == 1 and text.count(GET) == 1, "7.x map_in_map.c moved"
    helper = ("static bool bpflab_flake(void)\n{\n\tstatic atomic_t calls = ATOMIC_INIT(0);\n\n"
              f"\treturn atomic_inc_return(&calls) == {FLAKE_AT};\n}}\n\n")
    return text.replace(META_ALLOC, helper + META_ALLOC).replace(
        GET, GET.replace("\tinner_map =", "\tif (bpflab_flake())\n\t\treturn ERR_PTR(-ENOMEM);\n"
                         "\tinner_map ="))
