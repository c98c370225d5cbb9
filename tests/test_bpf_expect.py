"""The in-guest Python suite's expectations: read from the lab's commits file, never
decided in the guest; and its use-after-free judge, which never passes blind."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bpf_tests" / "python"))

from bpfkit.expect import (Declared, Expectation, Presence,  # noqa: E402
                           commits_from_env, introduced, missing, parse_commits,
                           same_commit)
from bpfkit.markers import kmsg_line  # noqa: E402
from bpfkit.taint import KASAN_EXPECTED, TAINT_BAD_PAGE  # noqa: E402


@pytest.fixture
def suite_markers(pytestconfig: pytest.Config) -> None:
    """The suite's own markers (its conftest registers them in the guest), for
    --strict-markers here."""
    pytestconfig.addinivalue_line("markers", "introduced(commit): declared commit")
    pytestconfig.addinivalue_line("markers", "slow: long test")


@pytest.fixture
def free_suite(suite_markers: None) -> Any:
    import test_map_in_map_free
    return test_map_in_map_free

FILE = """\
# Upstream commits the map-in-map suites declare, as harness/commits.py decided
# release: 6.1.192
# variant: uaf-inject, reverts 8766733641
cba41bb78d present 6.1.y from 6.1.34, release 6.1.192

8766733641 absent reverted by the variant uaf-inject
  AF66BFD3C8   absent   mainline v6.8, release 6.1.192 (6.1.y has no backport)
"""


def test_the_file_gives_each_commit_its_state_and_why() -> None:
    commits = parse_commits(FILE, "commits.txt")
    assert commits.entries == (
        Presence("cba41bb78d", True, "6.1.y from 6.1.34, release 6.1.192"),
        Presence("8766733641", False, "reverted by the variant uaf-inject"),
        Presence("af66bfd3c8", False, "mainline v6.8, release 6.1.192 (6.1.y has no backport)"))
    assert commits.notes[1:] == ("release: 6.1.192", "variant: uaf-inject, reverts 8766733641")


def test_ids_are_found_by_prefix_of_at_least_seven_digits() -> None:
    commits = parse_commits(FILE, "commits.txt")
    assert commits.find("CBA41BB78D0123456789") == commits.entries[0]
    assert commits.find("8766733") == commits.entries[1]
    assert commits.find("876673") is None and commits.find("cba41bb78e") is None
    assert same_commit("cba41bb78d", "CBA41BB78D0123456789")
    assert not same_commit("cba41b", "cba41bb78d")


@pytest.mark.parametrize("line, complaint", [
    ("8766733641 maybe no idea", "expected '<id> present|absent <why>'"),
    ("v6.1.192 present tag", "expected '<id> present|absent <why>'"),
    ("8766733641", "expected '<id> present|absent <why>'"),
    ("87667336 present again", "87667336 is listed twice"),
])
def test_a_malformed_or_repeated_line_is_refused_with_its_place(line: str,
                                                                complaint: str) -> None:
    with pytest.raises(ValueError, match="commits.txt:8: ") as err:
        parse_commits(FILE + line + "\n", "commits.txt")
    assert complaint in str(err.value)


def test_a_line_without_a_why_still_reads() -> None:
    assert parse_commits("8766733641 present\n", "f").entries[0].why == "no reason given"


def test_without_the_variable_the_suite_says_who_writes_the_file_and_how() -> None:
    with pytest.raises(pytest.UsageError) as err:
        commits_from_env({})
    text = str(err.value)
    assert "BPFLAB_COMMITS is not set" in text and "harness/commits.py" in text
    assert "python -m harness.commits" in text and "'<id> present|absent <why>'" in text


def test_an_unreadable_or_malformed_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(pytest.UsageError, match="BPFLAB_COMMITS: .*No such file"):
        commits_from_env({"BPFLAB_COMMITS": str(tmp_path / "none")})
    bad = tmp_path / "bad"
    bad.write_text("HEAD present\n")
    with pytest.raises(pytest.UsageError, match=f"{bad}:1: expected"):
        commits_from_env({"BPFLAB_COMMITS": str(bad)})
    good = tmp_path / "good"
    good.write_text(FILE)
    assert commits_from_env({"BPFLAB_COMMITS": str(good)}).path == str(good)


def expectation(commit_id: str, release: str = "6.1.192") -> Expectation:
    return Declared(parse_commits(FILE, "f"), release, [commit_id])[commit_id]


def test_a_mismatch_names_the_kernel_the_commit_and_the_files_why() -> None:
    with pytest.raises(AssertionError) as info:
        expectation("8766733641").check("freed", new="kept", old="not freed")
    assert str(info.value).startswith(
        "kernel 6.1.192 lacks 8766733641 (reverted by the variant uaf-inject): "
        "expected 'not freed', observed 'freed'")


def test_the_new_behaviour_is_expected_with_the_commit_the_old_one_without() -> None:
    expectation("cba41bb78d").check("0x2222", new="0x2222", old="0x1111")
    expectation("8766733641").check("old", new="new", old="old")
    with pytest.raises(AssertionError, match="has cba41bb78d \\(6.1.y from 6.1.34"):
        expectation("cba41bb78d").check("0x1111", new="0x2222", old="0x1111")


def test_only_declared_commits_can_be_asked_about() -> None:
    declared = Declared(parse_commits(FILE, "f"), "6.1.192", ["cba41bb78d"])
    assert declared["cba41bb78d"].present and declared.ids() == ["cba41bb78d"]
    with pytest.raises(KeyError, match="not declared"):
        declared["8766733641"]


def test_a_declared_commit_the_file_lacks_is_a_usage_error_naming_it() -> None:
    commits = parse_commits(FILE, "commits.txt")
    assert missing(commits, ["cba41bb78d", "b7ff97925b"]) == ["b7ff97925b"]
    with pytest.raises(pytest.UsageError, match="commits.txt does not list b7ff97925b"):
        Declared(commits, "6.1.192", ["cba41bb78d", "b7ff97925b"])


def test_introduced_takes_only_the_commit_id(suite_markers: None) -> None:
    mark = introduced("8766733641")
    assert mark.name == "introduced" and mark.args == ("8766733641",)
    with pytest.raises(ValueError, match="commit id"):
        introduced("v6.8")


def test_kernel_markers_are_one_ascii_line_without_spaces_in_the_node_id() -> None:
    begin = kmsg_line("begin", "t.py::test_x[a b-\u00e9\u2603]")
    assert begin == b"<5>bpflab: begin t.py::test_x[a\\x20b-\\xe9\\u2603]\n"
    end = kmsg_line("end", "t.py::test_x", "failed")
    assert end == b"<5>bpflab: end t.py::test_x failed\n"
    with pytest.raises(ValueError):
        kmsg_line("end", "t.py::test_x")


def fake_request() -> Any:
    return SimpleNamespace(node=SimpleNamespace(stash={}))


@pytest.mark.parametrize("commit_id", ["cba41bb78d", "8766733641"])  # has it, lacks it
def test_a_uaf_test_on_an_already_tainted_kernel_skips_as_blinded_with_or_without_the_fix(
        monkeypatch: pytest.MonkeyPatch, free_suite: Any, commit_id: str) -> None:
    monkeypatch.setattr(free_suite, "read_taint", lambda: TAINT_BAD_PAGE)
    monkeypatch.setattr(free_suite, "kasan_built_in", lambda: True)
    for must_report in (True, False):
        with pytest.raises(pytest.skip.Exception, match="taint bit 5 was already set"):
            free_suite.judge_kasan(fake_request(), TAINT_BAD_PAGE, expectation(commit_id),
                                   "the run", must_report=must_report)
    assert free_suite.BLINDED == "taint bit 5 was already set"


def test_a_uaf_test_judges_a_fresh_taint_by_the_files_state(
        monkeypatch: pytest.MonkeyPatch, free_suite: Any) -> None:
    monkeypatch.setattr(free_suite, "read_taint", lambda: TAINT_BAD_PAGE)
    monkeypatch.setattr(free_suite, "kasan_built_in", lambda: True)
    with pytest.raises(pytest.fail.Exception, match="KASAN .* kernel 6.1.192 has cba41bb78d"):
        free_suite.judge_kasan(fake_request(), 0, expectation("cba41bb78d"), "the run", True)
    request = fake_request()
    free_suite.judge_kasan(request, 0, expectation("8766733641"), "the run", True)
    assert request.node.stash[KASAN_EXPECTED] is True
    monkeypatch.setattr(free_suite, "read_taint", lambda: 0)
    with pytest.raises(pytest.fail.Exception, match="no KASAN report .* lacks 8766733641"):
        free_suite.judge_kasan(fake_request(), 0, expectation("8766733641"), "the run", True)

