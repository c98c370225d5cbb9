"""The one table of declared upstream commits and the one place deciding, per kernel,
which of them it carries: harness/commits.py."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from harness import catalog, commits
from harness.commits import Identity, Upstream, decide
from harness.errors import ConfigError, UserError
from harness.ops import Ops
from tests.conftest import git

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bpf_tests" / "python"))

from bpfkit.expect import parse_commits  # noqa: E402

SUITES = Path(__file__).resolve().parents[1] / "bpf_tests"
DECLARED = ("56f668dfe0 14dc6f04f4 7b5dd2bde7 c6fdcd6e0c 134fede4ee 4a8f87e60f 1e0bd5a091 "
            "b7ff97925b d83525ca62 a115d0ed72 68134668c1 40ec00abf1 03b77e17ae 61df10c779 "
            "85d33df357 20c20bd11a 8766733641 af66bfd3c8 d937bc3449 cba41bb78d 9d5564ddcf "
            "2c78ee898d aa3496accc d48995723c").split()
FIX = Upstream("8766733641", "bpf: Defer the free of inner map when necessary", "6.8",
               (("6.1", "6.1.75"),))
OPTIMIZE = Upstream("af66bfd3c8", "bpf: Optimize the free of inner map", "6.8")
TABLE = (FIX, OPTIMIZE)


def state(table: tuple[Upstream, ...], identity: Identity) -> dict[str, tuple[bool, str]]:
    return {p.id: (p.present, p.why) for p in decide(table, identity)}


def test_the_table_lists_every_declared_commit_with_its_releases() -> None:
    table = {c.id: c for c in commits.load_table()}
    assert sorted(table) == sorted(DECLARED)
    assert table["8766733641"] == FIX
    assert table["cba41bb78d"].stable == (("6.1", "6.1.34"),)
    assert table["134fede4ee"].mainline == "5.10" and table["134fede4ee"].stable == ()


def test_the_table_is_exactly_what_the_two_suites_declare() -> None:
    python = set()
    for path in (SUITES / "python").glob("test_*.py"):
        python.update(re.findall(r'introduced\("([0-9a-f]+)"\)', path.read_text()))
    c = {e.commit for e in catalog.c_entries()}
    assert python | c == {u.id for u in commits.load_table()}
    assert c == {"b7ff97925b", "40ec00abf1", "61df10c779", "03b77e17ae", "8766733641"}


@pytest.mark.parametrize("entry, key, expected", [
    ('- {id: 8766733641, subject: s, mainline: "6.8"}', "commits[0].id",
     "a quoted string, 10-40 lowercase hex digits (got int 8766733641)"),
    ('- {id: "87667336", subject: s, mainline: "6.8"}', "commits[0].id", "10-40"),
    ('- {id: "8766733641", subject: s, mainline: 5.10}', "commits[0].mainline",
     'a quoted string, a release "X.Y" (got float 5.1)'),
    ('- {id: "8766733641", mainline: "6.8"}', "commits[0].subject", "missing"),
    ('- {id: "8766733641", subject: s, mainline: "6.8", fixes: ["x"]}', "commits[0].fixes",
     "unknown key"),
    ('- {id: "8766733641", subject: s, mainline: "6.8", stable: {"6.1": "6.2.1"}}',
     "commits[0].stable.6.1", '"X.Y": "X.Y.Z" of that series'),
    ('- {id: "8766733641", subject: s, mainline: "6.8", stable: {"6.9": "6.9.1"}}',
     "commits[0].stable.6.9", "a series older than mainline v6.8"),
    ('- {id: "8766733641", subject: s, mainline: "6.8"}\n'
     '  - {id: "876673364183", subject: t, mainline: "6.8"}', "commits[1].id",
     "a commit listed once, 876673364183 is also commits[0]"),
    ("[]", "commits", "a non-empty list"),
])
def test_bad_table_data_names_the_file_the_key_and_what_was_expected(
        tmp_path: Path, entry: str, key: str, expected: str) -> None:
    path = tmp_path / "commits.yaml"
    path.write_text(f"commits:\n  {entry}\n" if entry != "[]" else "commits: []\n")
    with pytest.raises(ConfigError) as err:
        commits.load_table(path)
    assert (err.value.path, err.value.key) == (str(path), key)
    assert expected in err.value.expected


def test_a_table_file_that_is_not_the_expected_yaml_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "commits.yaml"
    path.write_text("- id: x\n")
    with pytest.raises(ConfigError, match=r"\(top level\): a mapping with the one key"):
        commits.load_table(path)
    path.write_text("commits: [\n")
    with pytest.raises(ConfigError, match=r"\(file\): readable YAML"):
        commits.load_table(path)


def test_a_variant_revert_beats_its_backports_the_ancestors_and_the_release() -> None:
    both = Identity("7.3.0", frozenset({"8766733641"}), ("87667336",), ("8766733641",),
                    "uaf-inject")
    assert state(TABLE, both)["8766733641"] == (False, "reverted by the variant uaf-inject")


def test_a_variant_backport_beats_the_ancestors_and_the_release() -> None:
    leak = Identity("6.1.192", frozenset(), (), ("af66bfd3c8",), "leak-inject")
    assert state(TABLE, leak) == {
        "af66bfd3c8": (True, "backported by the variant leak-inject"),
        "8766733641": (False, "not an ancestor of the commit under test")}


def test_known_ancestors_beat_the_release_numbers() -> None:
    tree = Identity("6.1.0", frozenset({"8766733641183ec2a1"}))
    assert state(TABLE, tree) == {
        "8766733641": (True, "ancestor of the commit under test"),
        "af66bfd3c8": (False, "not an ancestor of the commit under test")}


@pytest.mark.parametrize("release, present, why", [
    ("6.1.192", True, "6.1.y from 6.1.75, release 6.1.192"),
    ("6.1.74", False, "6.1.y from 6.1.75, release 6.1.74"),
    ("6.1.0-rc1", False, "6.1.y from 6.1.75, release 6.1.0-rc1"),
    ("6.7.12", False, "mainline v6.8, release 6.7.12 (6.7.y has no backport)"),
    ("5.15.100", False, "mainline v6.8, release 5.15.100 (5.15.y has no backport)"),
    ("6.8", True, "mainline v6.8, release 6.8"),
    ("6.8.0-rc1", True, "mainline v6.8, release 6.8.0-rc1 (an -rc of 6.8 counts as 6.8)"),
    ("7.3.0-rc7+", True, "mainline v6.8, release 7.3.0-rc7+"),
    ("6.18.44-fc-v669", True, "mainline v6.8, release 6.18.44-fc-v669"),
])
def test_without_git_evidence_the_release_and_the_stable_table_decide(
        release: str, present: bool, why: str) -> None:
    assert state(TABLE, Identity(release))["8766733641"] == (present, why)


def test_a_debian_abi_release_takes_its_sublevel_from_uname_version() -> None:
    debian = Identity("6.1.0-28-amd64", version="#1 SMP PREEMPT_DYNAMIC Debian 6.1.119-1")
    assert state(TABLE, debian)["8766733641"] == \
        (True, "6.1.y from 6.1.75, release 6.1.0-28-amd64 (Debian 6.1.119)")
    foreign = Identity("6.12.0-1-amd64", version="Debian 6.1.119-1")
    assert state(TABLE, foreign)["8766733641"][0]


def test_a_release_that_is_no_release_is_refused() -> None:
    with pytest.raises(UserError, match="kernel release 'linux'"):
        decide(TABLE, Identity("linux"))


def real(identity: Identity) -> dict[str, tuple[bool, str]]:
    return state(commits.load_table(), identity)


def test_the_real_table_on_6_1_190_has_the_backported_fixes_only() -> None:
    got = real(Identity("6.1.190"))
    assert got["cba41bb78d"] == (True, "6.1.y from 6.1.34, release 6.1.190")
    assert got["8766733641"] == (True, "6.1.y from 6.1.75, release 6.1.190")
    assert got["20c20bd11a"][0] and got["61df10c779"][0] and got["56f668dfe0"][0]
    absent = sorted(cid for cid, (present, _) in got.items() if not present)
    assert absent == ["03b77e17ae", "aa3496accc", "af66bfd3c8", "b7ff97925b", "d48995723c"]


def test_the_real_table_on_7_3_rc7_has_everything_up_to_6_8() -> None:
    got = real(Identity("7.3.0-rc7"))
    assert all(present for present, _ in got.values())
    assert got["af66bfd3c8"] == (True, "mainline v6.8, release 7.3.0-rc7")


def test_the_real_table_under_the_lab_variants() -> None:
    uaf = real(Identity("6.1.192", None, ("8766733641",), (), "uaf-inject"))
    assert uaf["8766733641"] == (False, "reverted by the variant uaf-inject")
    assert uaf["20c20bd11a"] == (True, "6.1.y from 6.1.75, release 6.1.192")
    leak = real(Identity("6.1.192", None, (), ("aa3496accc",), "leak-inject"))
    assert leak["aa3496accc"] == (True, "backported by the variant leak-inject")
    assert leak["d48995723c"][0] is False


def test_the_real_table_with_an_ancestor_list() -> None:
    got = real(Identity("6.7.0", frozenset({"8766733641", "20c20bd11a"})))
    assert got["8766733641"] == (True, "ancestor of the commit under test")
    assert got["cba41bb78d"] == (False, "not an ancestor of the commit under test")


def test_render_writes_comments_then_one_line_per_commit() -> None:
    identity = Identity("6.1.192", None, ("8766733641",), (), "uaf-inject")
    assert commits.render(decide(TABLE, identity), identity) == (
        "# Upstream commits the map-in-map suites declare, as harness/commits.py decided\n"
        "# release: 6.1.192\n"
        "# variant: uaf-inject, reverts 8766733641\n"
        "# decided by: the variant's reverts and backports, then release numbers and the "
        "stable table of bpf_tests/commits.yaml\n"
        "# <id> present|absent <why>\n"
        "8766733641 absent reverted by the variant uaf-inject\n"
        "af66bfd3c8 absent mainline v6.8, release 6.1.192 (6.1.y has no backport)\n")
    tree = Identity("6.9.0", frozenset({"af66bfd3c8"}))
    assert "# decided by: git ancestry of the commit under test (1 of 2 ids are ancestors)\n" \
        in commits.render(decide(TABLE, tree), tree)


def test_what_render_writes_the_python_suite_reads_back() -> None:
    identity = Identity("6.1.74", None, (), ("af66bfd3c8",), "backport-test")
    presences = decide(commits.load_table(), identity)
    read = parse_commits(commits.render(presences, identity), "commits.txt")
    assert [(p.id, p.present, p.why) for p in read.entries] == \
        [(p.id, p.present, p.why) for p in presences]
    assert "release: 6.1.74" in read.notes


@pytest.fixture
def upstream(fake_tree: Path) -> dict[str, str]:
    """The fake tree's commits by subject, as 10-digit ids; the tree is at v3."""
    log = git(fake_tree, "log", "--format=%H %s")
    return {line.split(" ", 1)[1]: line[:10] for line in log.splitlines()}


def test_ancestors_are_the_ids_reachable_from_the_commit_under_test(
        fake_tree: Path, upstream: dict[str, str]) -> None:
    ids = [upstream["bpf: change 0 in map_in_map.c"], upstream["bpf: change 2 in map_in_map.c"],
           "0123456789"]  # not in this tree: not an ancestor either
    at_v2 = commits.ancestors(Ops(verbose=False), fake_tree, git(fake_tree, "rev-parse", "v2"),
                              ids)
    assert at_v2 == frozenset({ids[0]})
    assert commits.ancestors(Ops(verbose=False), fake_tree, "HEAD", ids) == \
        frozenset(ids[:2])


def test_a_tree_that_knows_none_of_the_ids_gives_no_ancestry(fake_tree: Path) -> None:
    assert commits.ancestors(Ops(verbose=False), fake_tree, "HEAD",
                             ["0123456789", "8766733641"]) is None


def test_a_file_can_be_written_by_hand_from_the_command_line(
        capsys: pytest.CaptureFixture[str], fake_tree: Path) -> None:
    assert commits.main(["6.1.192", "--variant", "uaf-inject", "--reverts", "8766733641"]) == 0
    out = capsys.readouterr().out
    assert "8766733641 absent reverted by the variant uaf-inject\n" in out
    assert len([line for line in out.splitlines() if not line.startswith("#")]) == 24
    assert commits.main(["linux"]) == 2
    assert "kernel release 'linux'" in capsys.readouterr().err
    assert commits.main(["6.1.192", "--git", str(fake_tree)]) == 0
    assert "decided by: release numbers" in capsys.readouterr().out  # knows none of them

