"""Presence with evidence (harness/presence.py): on a small real git tree shaped like
linux-stable, and in a Debian package's changelog."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Mapping, Sequence

import pytest

from harness import debsrc, presence
from harness.commits import Upstream
from harness.ops import Completed, Ops
from harness.presence import DebianRelease, Evidence, Item
from tests.conftest import DATA, git

SUBJECT = "bpf: Defer the free of inner map when necessary"
CHANGELOG = DATA / "stable" / "6.1.192-3_excerpt.changelog.Debian.gz"


def commit(repo: Path, path: str, line: str, message: str) -> str:
    with open(repo / path, "a") as fh:
        fh.write(line + "\n")
    git(repo, "add", path)
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def pick(repo: Path, sha: str, message: str) -> str:
    """Apply sha's change as a new commit with message (a stable backport)."""
    git(repo, "cherry-pick", "--no-commit", sha)
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


class Stable:
    """linux-stable in small: mainline with the fix F, and stable branches forked
    before it, one per way a backport can (not) be there."""

    def __init__(self, repo: Path) -> None:
        self.repo = repo
        repo.mkdir()
        git(repo, "init", "-q", "-b", "upstream")
        (repo / "map_in_map.c").write_text("int map_in_map;\n")
        (repo / "syscall.c").write_text("int syscall;\n")
        self.base = commit(repo, "arraymap.c", "int array;", "bpf: Add array of maps support")
        commit(repo, "syscall.c", "int unrelated;", "bpf: an unrelated mainline change")
        self.fix = commit(repo, "map_in_map.c", "int deferred_free;",
                          f"{SUBJECT}\n\nWhen updating or deleting an inner map ...\n\n"
                          "Fixes: bba1dc0b55 (\"bpf: Remove redundant synchronize_rcu.\")")
        self.tips: dict[str, str] = {}
        stable_body = "When updating or deleting an inner map ..."
        for branch, message in (
                ("trailer", f"{SUBJECT}\n\ncommit {self.fix} upstream.\n\n{stable_body}"),
                ("bracket", f"{SUBJECT}\n\n[ Upstream commit {self.fix[:12]} ]\n\n{stable_body}"),
                ("no-trailer", f"{SUBJECT}\n\n{stable_body}"),
                ("none", "")):
            git(repo, "checkout", "-q", "-b", f"linux-6.1.y-{branch}", self.base)
            commit(repo, "syscall.c", f"int stable_{branch.replace('-', '_')};",
                   "bpf: a stable-only change")
            self.tips[branch] = pick(repo, self.fix, message) if message else \
                git(repo, "rev-parse", "HEAD")

    def answer(self, branch: str, upstream: Upstream | None = None,
               repo: Path | None = None) -> Evidence:
        wanted = upstream or Upstream(self.fix[:10], SUBJECT, "6.8")
        found = presence.in_git(Ops(verbose=False), repo or self.repo, self.tips[branch],
                                [Upstream(self.base[:10], "bpf: Add array of maps support",
                                          "4.12"), wanted])
        assert found is not None
        assert found[0] == Evidence(self.base[:10], True, "ancestor",
                                    f"ancestor {self.base[:12]} bpf: Add array of maps support",
                                    self.base)
        answer = found[1]
        if answer.present:  # the commit that brought it: in the history, with its subject
            where = repo or self.repo
            git(where, "merge-base", "--is-ancestor", answer.sha, self.tips[branch])
            assert git(where, "show", "-s", "--format=%s", answer.sha) == wanted.subject
        else:
            assert answer.sha == ""
        return replace(answer, sha="")


@pytest.fixture
def stable(tmp_path: Path) -> Stable:
    return Stable(tmp_path / "linux-stable")


def test_the_upstream_commit_itself_is_an_ancestor(stable: Stable) -> None:
    stable.tips["mainline"] = stable.fix
    assert stable.answer("mainline") == Evidence(
        stable.fix[:10], True, "ancestor", f"ancestor {stable.fix[:12]} {SUBJECT}")


def test_a_backport_is_recognised_by_its_commit_upstream_trailer(stable: Stable) -> None:
    tip = stable.tips["trailer"]
    assert stable.answer("trailer") == Evidence(
        stable.fix[:10], True, "backport",
        f"backport {tip[:12]} {SUBJECT} (commit {stable.fix} upstream.)")


def test_a_backport_is_recognised_by_an_abbreviated_upstream_commit_trailer(
        stable: Stable) -> None:
    tip = stable.tips["bracket"]
    assert stable.answer("bracket") == Evidence(
        stable.fix[:10], True, "backport",
        f"backport {tip[:12]} {SUBJECT} ([ Upstream commit {stable.fix[:12]} ])")


def test_a_full_table_id_matches_an_abbreviated_trailer_by_prefix(stable: Stable) -> None:
    full = Upstream(stable.fix, SUBJECT, "6.8")
    assert stable.answer("bracket", full).kind == "backport"


def test_a_backport_without_a_trailer_is_recognised_by_its_patch_id(stable: Stable) -> None:
    tip = stable.tips["no-trailer"]
    assert stable.answer("no-trailer") == Evidence(
        stable.fix[:10], True, "patch-id", f"backport {tip[:12]} by patch-id (as "
        f"{stable.fix[:12]})")


def test_a_stable_branch_without_the_backport_says_what_was_looked_for(stable: Stable) -> None:
    base = stable.base[:12]
    assert stable.answer("none") == Evidence(
        stable.fix[:10], False, "absent",
        f"not an ancestor of the commit under test, and no commit in "
        f"{base}..{stable.tips['none'][:12]} has the subject \"{SUBJECT}\"")


def test_a_reverted_backport_is_absent(stable: Stable) -> None:
    git(stable.repo, "checkout", "-q", "linux-6.1.y-trailer")
    git(stable.repo, "revert", "--no-edit", "HEAD")
    backport, revert = stable.tips["trailer"], git(stable.repo, "rev-parse", "HEAD")
    stable.tips["reverted"] = revert
    assert stable.answer("reverted") == Evidence(
        stable.fix[:10], False, "reverted",
        f"backport {backport[:12]} {SUBJECT} (commit {stable.fix} upstream.), "
        f"reverted by {revert[:12]} Revert \"{SUBJECT}\"")
    git(stable.repo, "revert", "--no-edit", "HEAD")  # the revert reverted: back again
    stable.tips["again"] = git(stable.repo, "rev-parse", "HEAD")
    assert stable.answer("again").present


def test_the_same_subject_with_another_change_and_no_trailer_is_unconfirmed(
        stable: Stable) -> None:
    git(stable.repo, "checkout", "-q", "linux-6.1.y-none")
    other = commit(stable.repo, "map_in_map.c", "int something_else;", SUBJECT)
    stable.tips["lookalike"] = other
    assert stable.answer("lookalike") == Evidence(
        stable.fix[:10], False, "unconfirmed",
        f"{other[:12]} has the subject but no trailer naming {stable.fix[:10]}, "
        "nor the same patch-id")


def test_a_tree_without_the_upstream_commit_still_finds_trailers_but_no_patch_ids(
        stable: Stable, tmp_path: Path) -> None:
    for branch in ("trailer", "no-trailer", "none"):
        clone = tmp_path / branch
        git(tmp_path, "clone", "-q", "--no-local", "--single-branch", "-b", f"linux-6.1.y-{branch}",
            str(stable.repo), str(clone))
        with pytest.raises(subprocess.CalledProcessError):
            git(clone, "cat-file", "-e", stable.fix)
    assert stable.answer("trailer", repo=tmp_path / "trailer").kind == "backport"
    assert stable.answer("no-trailer", repo=tmp_path / "no-trailer") == Evidence(
        stable.fix[:10], False, "unconfirmed",
        f"{stable.tips['no-trailer'][:12]} has the subject but no trailer naming "
        f"{stable.fix[:10]}, and no patch-id to compare (not in this tree)")
    assert stable.answer("none", repo=tmp_path / "none") == Evidence(
        stable.fix[:10], False, "absent", f"not in this tree, and no commit in the history of "
        f"{stable.tips['none'][:12]} has the subject \"{SUBJECT}\"")


def test_a_tree_that_knows_none_of_the_commits_has_no_answer(fake_tree: Path) -> None:
    wanted = [Upstream("8766733641", SUBJECT, "6.8"), Upstream("0123456789", "x", "4.12")]
    assert presence.in_git(Ops(verbose=False), fake_tree, "HEAD", wanted) is None


def test_a_release_before_a_backport_the_tree_records_is_judged_by_its_history(
        tmp_path: Path) -> None:
    """linux-stable without mainline's objects: a release, then the fix's backport with
    its stable trailer. The release's number says nothing: its history lacks the fix."""
    repo = tmp_path / "stable"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "linux-6.1.y")
    release = commit(repo, "map_in_map.c", "int inner;", "Linux 6.1.190")
    full = "876673364161da50eed6b472d746ef88242b2368"
    backport = commit(repo, "map_in_map.c", "int deferred_free;",
                      f"{SUBJECT}\n\ncommit {full} upstream.\n")
    wanted = [Upstream("8766733641", SUBJECT, "6.8")]
    before = presence.in_git(Ops(verbose=False), repo, release, wanted)
    assert before is not None and before[0].present is False and before[0].kind == "absent"
    after = presence.in_git(Ops(verbose=False), repo, backport, wanted)
    assert after is not None and after[0].present and after[0].sha == backport


class Counting(Ops):
    """The real Ops, listing what it ran."""

    runs: list[tuple[str, ...]]

    def run(self, argv: Sequence[str], cwd: Path | None = None,
            env: Mapping[str, str] | None = None, check: bool = True,
            quiet: bool = False) -> Completed:
        self.runs.append(tuple(argv))
        return super().run(argv, cwd, env, check, quiet)


def test_the_search_walks_the_history_once_and_only_above_the_fork_point(
        stable: Stable) -> None:
    ops = Counting(verbose=False)
    ops.runs = []
    presence.in_git(ops, stable.repo, stable.tips["no-trailer"],
                    [Upstream(stable.fix[:10], SUBJECT, "6.8")])
    logs = [argv for argv in ops.runs if "log" in argv]
    assert len(logs) == 1 and logs[0][-3:] == ("--not", stable.base, "--")
    # rev-parse of sha and the id, is-ancestor, merge-base, log, is-shallow, two patch-ids
    assert len(ops.runs) == 8


# Debian: the package's own changelog lists each stable update's commit subjects.

UAF = Upstream("8766733641", SUBJECT, "6.8")
ELEM = Upstream("cba41bb78d", "bpf: Fix elem_size not being set for inner maps", "6.4")
OPTIMIZE = Upstream("af66bfd3c8", "bpf: Optimize the free of inner map", "6.8")
BASE = Upstream("56f668dfe0", "bpf: Add array of maps support", "4.12")


def test_a_changelog_is_read_into_items_with_their_debian_and_stable_versions() -> None:
    release = presence.read_changelog(CHANGELOG)
    assert release.version == "6.1.192-3" and release.items is not None
    assert Item("6.1.76-1", "6.1.75", SUBJECT) in release.items
    wrapped = Item("6.1.76-1", "6.1.70", "[armhf] OMAP2+: Fix null pointer dereference and "
                   "memory leak in omap_soc_device_init")
    assert wrapped in release.items
    assert Item("6.1.76-1", "", "Bump ABI to 18") in release.items  # after [ Maintainer ]


@pytest.mark.parametrize("wanted, present, detail", [
    (UAF, True, f"Debian changelog 6.1.76-1: {SUBJECT} (stable update 6.1.75)"),
    (ELEM, True, "Debian changelog 6.1.37-1: bpf: Fix elem_size not being set for inner maps "
     "(stable update 6.1.34)"),
    (OPTIMIZE, False, "Debian changelog up to 6.1.192-3: no 6.1 entry lists "
     "\"bpf: Optimize the free of inner map\""),
])
def test_the_changelog_says_which_stable_update_brought_a_fix(
        wanted: Upstream, present: bool, detail: str) -> None:
    release = presence.read_changelog(CHANGELOG)
    assert presence.in_changelog(release, wanted, "6.1", only_by_backport=True) == \
        Evidence(wanted.id, present, "changelog", detail)


def test_the_changelog_is_silent_on_what_the_series_has_by_mainline() -> None:
    release = presence.read_changelog(CHANGELOG)
    assert presence.in_changelog(release, BASE, "6.1", only_by_backport=False) is None


def test_only_entries_of_the_release_series_count() -> None:
    release = presence.read_changelog(CHANGELOG)
    said = presence.in_changelog(release, UAF, "6.0", only_by_backport=True)
    assert said is not None and not said.present and "no 6.0 entry" in said.detail


def test_the_newest_mention_wins_and_a_revert_says_absent() -> None:
    text = f"""linux (6.1.80-1) bookworm; urgency=medium

  * New upstream stable update:
    https://www.kernel.org/pub/linux/kernel/v6.x/ChangeLog-6.1.78
    - [x86] Revert "{SUBJECT}"
      (CVE-2023-52447)

 -- Salvatore Bonaccorso <carnil@debian.org>  Thu, 01 Feb 2024 09:05:49 +0100

linux (6.1.76-1) bookworm; urgency=medium

  * New upstream stable update:
    https://www.kernel.org/pub/linux/kernel/v6.x/ChangeLog-6.1.75
    - {SUBJECT}

 -- Salvatore Bonaccorso <carnil@debian.org>  Thu, 01 Feb 2024 09:05:49 +0100
"""
    version, items = presence.parse_changelog(text.splitlines(keepends=True))
    said = presence.in_changelog(DebianRelease(version, items), UAF, "6.1", True)
    assert said == Evidence(UAF.id, False, "changelog", f"Debian changelog 6.1.80-1: [x86] "
                            f"Revert \"{SUBJECT}\" (CVE-2023-52447) (stable update 6.1.78)")


def test_an_imported_release_finds_the_changelog_its_import_kept(tmp_path: Path) -> None:
    deb = tmp_path / "scratch" / "deb"  # an unpacked linux-source .deb, as import_release has it
    (deb / "usr/share/doc/linux-source-6.1").mkdir(parents=True)
    shutil.copy(CHANGELOG, deb / "usr/share/doc/linux-source-6.1/changelog.Debian.gz")
    repo = tmp_path / "src" / "debian.git"
    debsrc.keep_changelog(deb, debsrc.kept_changelog(repo, "6.1.192-3"))
    assert (tmp_path / "src" / "debian-changelogs" / "6.1.192-3.gz").read_bytes() == \
        CHANGELOG.read_bytes()
    subject = "Linux 6.1.192 (Debian linux-source 6.1.192-3)"  # debsrc.ensure_debian_repo's
    found = presence.debian_release(tmp_path, subject)
    assert found is not None and found.version == "6.1.192-3" and found.items
    before = presence.debian_release(tmp_path, subject.replace("192-3", "190-1"))
    assert before == DebianRelease("6.1.190-1", None,
                                   str(tmp_path / "src" / "debian-changelogs" / "6.1.190-1.gz"))
    assert presence.debian_release(tmp_path, "bpf: change 0 in map_in_map.c") is None
