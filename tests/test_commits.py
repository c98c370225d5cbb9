"""The one table of declared upstream commits and the one place deciding, per kernel,
which of them it carries: harness/commits.py."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from harness import catalog, commits, kreport, presence
from harness.commits import Identity, Upstream, decide
from harness.errors import ConfigError, UserError
from harness.ops import Ops
from harness.presence import DebianRelease, Evidence
from tests.conftest import DATA, git

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bpf_tests" / "python"))

from bpfkit.expect import parse_commits  # noqa: E402

SUITES = Path(__file__).resolve().parents[1] / "bpf_tests"
DECLARED = ("56f668dfe0 14dc6f04f4 7b5dd2bde7 c6fdcd6e0c 134fede4ee 4a8f87e60f 1e0bd5a091 "
            "b7ff97925b d83525ca62 a115d0ed72 68134668c1 40ec00abf1 03b77e17ae 61df10c779 "
            "85d33df357 20c20bd11a 8766733641 af66bfd3c8 d937bc3449 cba41bb78d 9d5564ddcf "
            "2c78ee898d aa3496accc d48995723c").split()
FIX = Upstream("8766733641", "bpf: Defer the free of inner map when necessary", "6.8",
               (("6.1", "6.1.75"),))
CHANGELOG = DATA / "stable" / "6.1.192-3_excerpt.changelog.Debian.gz"
OPTIMIZE = Upstream("af66bfd3c8", "bpf: Optimize the free of inner map", "6.8")
TABLE = (FIX, OPTIMIZE)


def state(table: tuple[Upstream, ...], identity: Identity) -> dict[str, tuple[bool, str]]:
    return {p.id: (p.present, p.why) for p in decide(table, identity)}


def test_the_table_lists_every_declared_commit_with_its_releases() -> None:
    table = {c.id: c for c in commits.load_table()}
    assert sorted(table) == sorted(DECLARED)
    uaf = table["8766733641"]
    assert (uaf.id, uaf.subject, uaf.mainline, uaf.stable) == \
        (FIX.id, FIX.subject, FIX.mainline, FIX.stable)
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
    ('- {id: "8766733641", subject: s, mainline: "6.8", fix: ["x"]}', "commits[0].fix",
     "unknown key"),
    ('- {id: "8766733641", subject: s, mainline: "6.8", fixes: ["x"]}', "commits[0].fixes[0]",
     "quoted ids, 10-40 lowercase hex digits (got str 'x')"),
    ('- {id: "8766733641", subject: s, mainline: "6.8", fixes: "bba1dc0b55"}',
     "commits[0].fixes", "a list of quoted ids"),
    ('- {id: "8766733641", subject: s, mainline: "6.8", cve: "2023-52447"}', "commits[0].cve",
     '"CVE-YYYY-N..."'),
    ('- {id: "8766733641", subject: s, mainline: "6.8", tests: ["test_uaf"]}',
     "commits[0].tests[0]", '"test_x.py::test_y" or "map_in_map::name"'),
    ('- {id: "8766733641", subject: s, mainline: "6.8", signature: ""}',
     "commits[0].signature", "a kernel report's signature"),
    ('- {id: "8766733641", subject: s, mainline: "6.8", prerequisites: ["20c20bd11a"]}',
     "commits[0].prerequisites[0]", "the id of another commit of this table, got '20c20bd11a'"),
    ('- {id: "8766733641", subject: s, mainline: "6.8", followups: ["8766733641"]}',
     "commits[0].followups[0]", "the id of another commit of this table"),
    ('- {id: "d937bc3449", subject: s, mainline: "6.0", followups: ["cba41bb78d"]}\n'
     '  - {id: "cba41bb78d", subject: t, mainline: "6.4"}', "commits[1].fixes",
     "d937bc3449, as commits[0] lists cba41bb78d as a followup"),
    ('- {id: "d937bc3449", subject: s, mainline: "6.0"}\n'
     '  - {id: "cba41bb78d", subject: t, mainline: "6.4", fixes: ["d937bc3449"]}',
     "commits[0].followups", "cba41bb78d, whose Fixes: names it (commits[1])"),
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


IN_TREE = Evidence("8766733641", True, "backport",
                   "backport 0123456789ab bpf: Defer the free of inner map when necessary "
                   "(commit 8766733641 upstream.)")
NOT_IN_TREE = Evidence("af66bfd3c8", False, "absent", "not in this tree, and no commit in "
                       "the history of 0123456789ab has the subject \"bpf: Optimize ...\"")


def test_a_variant_revert_beats_its_backports_the_git_evidence_and_the_release() -> None:
    both = Identity("7.3.0", (IN_TREE,), ("87667336",), ("8766733641",), "uaf-inject")
    assert state(TABLE, both)["8766733641"] == (False, "reverted by the variant uaf-inject")


def test_a_variant_backport_beats_the_git_evidence_and_the_release() -> None:
    leak = Identity("6.1.192", (NOT_IN_TREE,), (), ("af66bfd3c8",), "leak-inject")
    assert state(TABLE, leak)["af66bfd3c8"] == (True, "declared present by the variant leak-inject")


def test_the_git_evidence_beats_the_release_numbers_and_is_the_why() -> None:
    tree = Identity("6.1.0", (IN_TREE, NOT_IN_TREE))
    assert state(TABLE, tree) == {"8766733641": (True, IN_TREE.detail),
                                  "af66bfd3c8": (False, NOT_IN_TREE.detail)}


def test_an_abbreviated_evidence_id_answers_for_the_table_id() -> None:
    short = Identity("6.1.0", (Evidence("87667336", True, "ancestor", "ancestor ..."),))
    assert state((FIX,), short)["8766733641"] == (True, "ancestor ...")


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
    assert leak["aa3496accc"] == (True, "declared present by the variant leak-inject")
    assert leak["d48995723c"][0] is False


def test_the_real_table_with_git_evidence_for_some_ids_and_release_numbers_for_the_rest(
        ) -> None:
    got = real(Identity("6.7.0", (IN_TREE,)))
    assert got["8766733641"] == (True, IN_TREE.detail)
    assert got["cba41bb78d"] == (True, "mainline v6.4, release 6.7.0")


def test_the_real_table_names_its_fixes_with_what_they_need_and_reproduce() -> None:
    table = {c.id: c for c in commits.load_table()}
    uaf = table["8766733641"]
    assert (uaf.cve, uaf.fixes, uaf.prerequisites, uaf.followups) == \
        ("CVE-2023-52447", ("bba1dc0b55", "638e4b825d"), ("20c20bd11a",), ())
    assert uaf.signature == "KASAN: use-after-free Read in array_map_update_elem"
    assert "map_in_map::sleepable_uaf_inner_map_free" in uaf.tests
    assert table["cba41bb78d"].fixes == ("d937bc3449",)
    assert table["d937bc3449"].followups == ("cba41bb78d",)
    assert table["d48995723c"].fixes == ("aa3496accc",)
    assert table["aa3496accc"].followups == ("d48995723c",)
    assert table["af66bfd3c8"].fixes == ()  # an optimisation, no follow-up fix
    assert {c.id for c in table.values() if c.tests} == \
        {"8766733641", "cba41bb78d", "d48995723c"}


def test_every_test_the_table_names_exists_and_declares_that_fix() -> None:
    c_tests = {f"{catalog.C_CLASS}::{e.name}": e.commit for e in catalog.c_entries()
               if e.kind == "TEST"}
    for fix in commits.load_table():
        for test in fix.tests:
            if test in c_tests:
                assert commits.same_commit(c_tests[test], fix.id), test
                continue
            file, _, name = test.partition("::")
            source = (SUITES / "python" / file).read_text()
            head = source[:source.index(f"\ndef {name}(")]
            decorators = head[head.rindex("\n\n"):]
            assert f'introduced("{fix.id}")' in decorators, test


@pytest.mark.parametrize("fix, log", [
    ("8766733641", "console/x86_64_uaf_inject_map_in_map.log"),
    ("d48995723c", "kmemleak/x86_64_6.1.192_leak_inject.txt"),
])
def test_a_fix_signature_is_what_the_lab_signs_the_real_report_without_it(
        fix: str, log: str) -> None:
    signature = {c.id: c.signature for c in commits.load_table()}[fix]
    reports = kreport.parse((DATA / log).read_text().splitlines())
    assert signature in {r.signature for r in reports}


def debian(items: bool = True) -> DebianRelease:
    release = presence.read_changelog(CHANGELOG)
    return release if items else DebianRelease(release.version, None, "kept/6.1.192-3.gz")


def test_a_debian_release_takes_a_fix_from_its_changelog_when_the_table_agrees() -> None:
    got = real(Identity("6.1.192", debian=debian()))
    assert got["8766733641"] == (True, "Debian changelog 6.1.76-1: bpf: Defer the free of "
                                 "inner map when necessary (stable update 6.1.75); the table "
                                 "agrees: 6.1.y from 6.1.75, release 6.1.192")
    assert got["af66bfd3c8"] == (False, "Debian changelog up to 6.1.192-3: no 6.1 entry lists "
                                 "\"bpf: Optimize the free of inner map\"; the table agrees: "
                                 "mainline v6.8, release 6.1.192 (6.1.y has no backport)")
    assert got["56f668dfe0"] == (True, "mainline v4.12, release 6.1.192")


def test_the_changelog_wins_over_the_table_and_the_why_says_both() -> None:
    unlisted = Upstream(FIX.id, FIX.subject, "6.8")  # a table that missed the backport
    assert state((unlisted,), Identity("6.1.192", debian=debian()))[FIX.id] == (
        True, "Debian changelog 6.1.76-1: bpf: Defer the free of inner map when necessary "
        "(stable update 6.1.75); the changelog wins over the table's absent: mainline v6.8, "
        "release 6.1.192 (6.1.y has no backport)")
    claimed = Upstream(OPTIMIZE.id, OPTIMIZE.subject, "6.8", (("6.1", "6.1.75"),))
    assert state((claimed,), Identity("6.1.192", debian=debian()))[OPTIMIZE.id] == (
        False, "Debian changelog up to 6.1.192-3: no 6.1 entry lists \"bpf: Optimize the "
        "free of inner map\"; the changelog wins over the table's present: 6.1.y from "
        "6.1.75, release 6.1.192")


def test_a_release_imported_before_changelogs_were_kept_falls_back_to_the_table() -> None:
    identity = Identity("6.1.192", debian=debian(items=False))
    assert state(TABLE, identity)["8766733641"] == (
        True, "6.1.y from 6.1.75, release 6.1.192 (by the table: no Debian changelog kept "
        "for 6.1.192-3)")
    assert "# decided by: release numbers and the stable table of bpf_tests/commits.yaml " \
        "(no Debian changelog kept for 6.1.192-3)\n" in \
        commits.render(decide(TABLE, identity), identity)


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
    tree = Identity("6.1.90", (IN_TREE, NOT_IN_TREE))
    assert "# decided by: the git history of the commit under test (0 ancestors and 1 stable " \
        "backports of 2 ids)\n" in commits.render(decide(TABLE, tree), tree)


def test_what_render_writes_the_python_suite_reads_back() -> None:
    identity = Identity("6.1.74", None, (), ("af66bfd3c8",), "backport-test")
    presences = decide(commits.load_table(), identity)
    read = parse_commits(commits.render(presences, identity), "commits.txt")
    assert [(p.id, p.present, p.why) for p in read.entries] == \
        [(p.id, p.present, p.why) for p in presences]
    assert "release: 6.1.74" in read.notes


def test_the_git_evidence_of_a_stable_tree_decides_in_every_workflow(
        capsys: pytest.CaptureFixture[str], fake_tree: Path) -> None:
    """By hand as in the lab (pipeline._commits_file): presence.in_git's answer."""
    (fake_tree / "map_in_map.c").write_text("int deferred;\n")
    git(fake_tree, "commit", "-q", "-am", f"{FIX.subject}\n\ncommit {FIX.id} upstream.")
    backport = git(fake_tree, "rev-parse", "HEAD")
    assert commits.main(["6.1.0", "--git", str(fake_tree)]) == 0
    out = capsys.readouterr().out
    assert f"8766733641 present backport {backport[:12]} {FIX.subject} (commit 8766733641 " \
        "upstream.)\n" in out
    assert "20c20bd11a absent not in this tree, and no commit in the history of " \
        f"{backport[:12]} has the subject \"bpf: Add map and need_defer parameters to " \
        ".map_fd_put_ptr()\"\n" in out


def test_a_shallow_clone_leaves_what_it_cannot_see_to_the_release_numbers(
        fake_tree: Path, tmp_path: Path) -> None:
    shallow = tmp_path / "shallow"
    git(tmp_path, "clone", "-q", "--depth", "1", f"file://{fake_tree}", str(shallow))
    (shallow / "map_in_map.c").write_text("int deferred;\n")
    git(shallow, "commit", "-q", "-am", f"{FIX.subject}\n\ncommit {FIX.id} upstream.")
    found = presence.in_git(Ops(verbose=False), shallow, "HEAD", (FIX, OPTIMIZE))
    assert found is not None and found[1].kind == "unknown"
    got = state(TABLE, Identity("6.9", found))
    assert got["8766733641"][0] and got["af66bfd3c8"] == (True, (
        "mainline v6.8, release 6.9 (not in this shallow clone, and no commit in the history "
        f"of {git(shallow, 'rev-parse', 'HEAD')[:12]} has the subject \"{OPTIMIZE.subject}\")"))


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

