"""Ranges, path filters and commit lists resolve on a real (small) git history."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from harness.config import Source
from harness.errors import ConfigError
from harness.gitrepo import Checkout, resolve
from harness.ops import Ops
from tests.conftest import git

OPS = Ops(verbose=False)


def src(repo: Path, range_: str | None = None, paths: tuple[str, ...] = (),
        commits: tuple[str, ...] = ()) -> Source:
    return Source(repo, (), range_, paths, commits)


def test_a_range_limited_to_a_path_keeps_only_commits_touching_it(fake_tree: Path) -> None:
    commits = resolve(OPS, fake_tree, src(fake_tree, "v1..v3", ("map_in_map.c",)), "lab.yaml")
    assert [c.subject for c in commits] == ["bpf: change 0 in map_in_map.c",
                                            "bpf: change 2 in map_in_map.c"]
    assert commits[-1].name == "v3"


def test_a_range_without_paths_lists_every_commit_oldest_first(fake_tree: Path) -> None:
    commits = resolve(OPS, fake_tree, src(fake_tree, "v1..v3"), "lab.yaml")
    assert [c.subject for c in commits] == ["bpf: change 0 in map_in_map.c",
                                            "bpf: change 1 in arraymap.c",
                                            "bpf: change 2 in map_in_map.c"]
    assert commits[1].name == "v2"


def test_an_explicit_commit_list_keeps_its_order_and_drops_duplicates(fake_tree: Path) -> None:
    commits = resolve(OPS, fake_tree, src(fake_tree, commits=("v3", "v1", "v3")), "lab.yaml")
    assert [c.name for c in commits] == ["v3", "v1"]


def test_a_bad_revision_names_the_lab_key(fake_tree: Path) -> None:
    with pytest.raises(ConfigError) as err:
        resolve(OPS, fake_tree, src(fake_tree, commits=("v1", "v9")), "lab.yaml")
    assert err.value.key == "source.commits[1]"
    with pytest.raises(ConfigError) as err:
        resolve(OPS, fake_tree, src(fake_tree, "v1..nope"), "lab.yaml")
    assert err.value.key == "source.range"


def test_a_range_with_no_matching_commit_is_an_error(fake_tree: Path) -> None:
    with pytest.raises(ConfigError, match="found none"):
        resolve(OPS, fake_tree, src(fake_tree, "v2..v3", ("arraymap.c",)), "lab.yaml")


def test_the_lab_checkout_leaves_the_users_working_copy_alone(fake_tree: Path,
                                                              tmp_path: Path) -> None:
    (fake_tree / "map_in_map.c").write_text("user's uncommitted edit\n")
    checkout = Checkout(tmp_path / "co", fake_tree, OPS)
    checkout.switch(resolve(OPS, fake_tree, src(fake_tree, commits=("v1",)), "x")[0].sha)
    assert (checkout.path / "map_in_map.c").read_text() == "int map_in_map;\n"
    assert (fake_tree / "map_in_map.c").read_text() == "user's uncommitted edit\n"


def test_one_checkout_serves_every_source_and_borrows_each_ones_objects(
        fake_tree: Path, tmp_path: Path) -> None:
    """Another lab's tree (a followed branch, a stable tree): same working tree, so a
    series' build directory sees the same source paths and stays incremental."""
    other = tmp_path / "other"
    shutil.copytree(fake_tree, other)
    git(other, "commit", "-q", "--allow-empty", "-m", "only in the other tree")
    new_head = git(other, "rev-parse", "HEAD")
    Checkout(tmp_path / "co", fake_tree, OPS).switch(git(fake_tree, "rev-parse", "v1"))
    moved = Checkout(tmp_path / "co", other, OPS)
    moved.switch(new_head)
    assert git(moved.path, "rev-parse", "HEAD") == new_head
    alternates = (moved.path / ".git/objects/info/alternates").read_text().split()
    assert alternates == [str(fake_tree / ".git/objects"), str(other / ".git/objects")]
    # a source that is gone is dropped from the list, the others stay readable
    shutil.rmtree(other)
    Checkout(tmp_path / "co", fake_tree, OPS).switch(git(fake_tree, "rev-parse", "v3"))
    assert (moved.path / ".git/objects/info/alternates").read_text().split() == \
        [str(fake_tree / ".git/objects")]


def test_a_commit_too_big_for_rename_detection_is_described_without_git_warnings(
        tmp_path: Path) -> None:
    """git warns on stderr about its rename limit for a commit like a new release's
    import; the lab folds stderr into what it reads, and must not read a warning as
    the subject (seen: 7.3-rc7's subject followed by two warning lines)."""
    repo = tmp_path / "big"
    repo.mkdir()
    git(repo, "init", "-q")
    for i in range(1100):
        (repo / f"a{i}").write_text(f"a{i} x\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "one")
    for i in range(1100):
        (repo / f"a{i}").unlink()
        (repo / f"b{i}").write_text(f"b{i} y\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "Linux 7.3-rc7")
    from harness.gitrepo import describe
    assert describe(OPS, repo, git(repo, "rev-parse", "HEAD")).subject == "Linux 7.3-rc7"
