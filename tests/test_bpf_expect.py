"""The in-guest suite's expectations: which commits a kernel has, from its identity."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bpf_tests" / "python"))

from bpfkit.expect import (Commit, Declared, Expectation, Kernel, Version,  # noqa: E402
                           in_release, kernel_under_test, parse_release, read_ancestors,
                           same_commit)
from bpfkit.markers import kmsg_line  # noqa: E402

ELEM_SIZE = Commit("cba41bb78d", "6.4", (("6.1", "6.1.34"),))
OPTIMIZE_FREE = Commit("af66bfd3c8", "6.8")


@pytest.mark.parametrize("release, parsed", [
    ("6.1.192", (6, 1, 192, None)),
    ("6.12.117", (6, 12, 117, None)),
    ("7.3.0-rc7+", (7, 3, 0, 7)),
    ("6.1.0-fake", (6, 1, 0, None)),
    ("6.18.44-fc-v669", (6, 18, 44, None)),
    ("6.8", (6, 8, 0, None)),
    ("6.9-rc1", (6, 9, 0, 1)),
])
def test_releases_parse_into_numbers_and_rc(release: str, parsed: tuple[object, ...]) -> None:
    v = parse_release(release)
    assert (v.major, v.minor, v.patch, v.rc) == parsed
    assert v.release == release


def test_debian_abi_release_takes_the_sublevel_from_uname_version() -> None:
    v = parse_release("6.1.0-37-amd64", "#1 SMP PREEMPT_DYNAMIC Debian 6.1.192-1 (2025-10-01)")
    assert (v.major, v.minor, v.patch) == (6, 1, 192)


def test_a_foreign_series_in_uname_version_is_ignored() -> None:
    assert parse_release("6.12.0-1-amd64", "Debian 6.1.192-1").patch == 0


def test_garbage_releases_are_refused() -> None:
    with pytest.raises(ValueError):
        parse_release("linux")


@pytest.mark.parametrize("release, has", [
    ("6.1.33", False), ("6.1.34", True), ("6.1.192", True), ("6.1.0-fake", False),
    ("6.3.13", False), ("6.4.0", True), ("6.12.117", True), ("7.3.0-rc7+", True),
    ("5.15.100", False), ("6.4-rc1", True),
])
def test_stable_backports_count_from_their_release_only_in_their_series(
        release: str, has: bool) -> None:
    assert in_release(ELEM_SIZE, parse_release(release)) is has


@pytest.mark.parametrize("release, has", [("6.1.192", False), ("6.7.12", False),
                                          ("6.8.0", True), ("6.18.44-fc-v669", True)])
def test_unbackported_commits_need_the_mainline_release(release: str, has: bool) -> None:
    assert in_release(OPTIMIZE_FREE, parse_release(release)) is has


def test_the_ancestor_list_overrides_release_numbers(tmp_path: Path) -> None:
    listing = tmp_path / "has"
    listing.write_text("# found by the harness\ncba41bb78d1234\n\n8766733641  # uaf fix\n")
    kernel = Kernel(parse_release("6.1.0-fake"), read_ancestors(listing))
    assert kernel.has(ELEM_SIZE)
    assert not Kernel(parse_release("7.3.0"), read_ancestors(listing)).has(OPTIMIZE_FREE)


def test_an_ancestor_list_with_a_non_commit_is_refused(tmp_path: Path) -> None:
    listing = tmp_path / "has"
    listing.write_text("v6.1.192\n")
    with pytest.raises(ValueError, match="not a commit id"):
        read_ancestors(listing)


def test_commit_ids_match_by_prefix_of_at_least_seven_digits() -> None:
    assert same_commit("cba41bb78d", "CBA41BB78D0123456789")
    assert not same_commit("cba41b", "cba41bb78d")
    assert not same_commit("cba41bb78d", "cba41bb78e")


def test_kernel_under_test_reads_the_env_file(tmp_path: Path) -> None:
    listing = tmp_path / "has"
    listing.write_text("af66bfd3c8\n")
    kernel = kernel_under_test({"BPFLAB_HAS_COMMITS": str(listing)})
    assert kernel.ancestors == frozenset({"af66bfd3c8"})
    assert kernel_under_test({}).ancestors is None


def test_a_mismatch_names_the_commit_and_the_kernel() -> None:
    exp = Expectation(ELEM_SIZE, Kernel(parse_release("6.1.192")))
    with pytest.raises(AssertionError) as info:
        exp.check("0x1111", new="0x2222", old="0x1111")
    text = str(info.value)
    assert "6.1.192" in text and "has cba41bb78d" in text and "6.1.y from 6.1.34" in text
    assert "expected '0x2222'" in text


def test_a_kernel_without_the_commit_must_show_the_old_behaviour() -> None:
    exp = Expectation(ELEM_SIZE, Kernel(parse_release("6.1.33")))
    exp.check("0x1111", new="0x2222", old="0x1111")
    with pytest.raises(AssertionError, match="lacks cba41bb78d"):
        exp.check("0x2222", new="0x2222", old="0x1111")


def test_only_declared_commits_can_be_asked_about() -> None:
    declared = Declared(Kernel(Version(6, 1, 192)), [ELEM_SIZE])
    assert declared["cba41bb78d"].present
    with pytest.raises(KeyError, match="not declared"):
        declared["af66bfd3c8"]


def test_kernel_markers_are_one_ascii_line_without_spaces_in_the_node_id() -> None:
    begin = kmsg_line("begin", "t.py::test_x[a b-\u00e9\u2603]")
    assert begin == b"<5>bpflab: begin t.py::test_x[a\\x20b-\\xe9\\u2603]\n"
    end = kmsg_line("end", "t.py::test_x", "failed")
    assert end == b"<5>bpflab: end t.py::test_x failed\n"
    with pytest.raises(ValueError):
        kmsg_line("end", "t.py::test_x")


FREE_FIX = Commit("8766733641", "6.8", (("6.1", "6.1.75"),))


def test_a_commit_the_variant_reverts_is_absent_whatever_the_release_says(
        tmp_path: Path) -> None:
    listing = tmp_path / "has"
    listing.write_text("8766733641\n")
    reverted = kernel_under_test({"BPFLAB_REVERTED_COMMITS": "8766733641"})
    assert not reverted.has(FREE_FIX) and reverted.has(ELEM_SIZE) is \
        kernel_under_test({}).has(ELEM_SIZE)
    both = kernel_under_test({"BPFLAB_HAS_COMMITS": str(listing),
                              "BPFLAB_REVERTED_COMMITS": "87667336"})
    assert not both.has(FREE_FIX)
    assert "reverted by the variant: 8766733641" in reverted.source()


def test_a_reverted_list_with_a_non_commit_is_refused() -> None:
    with pytest.raises(ValueError, match="BPFLAB_REVERTED_COMMITS"):
        kernel_under_test({"BPFLAB_REVERTED_COMMITS": "8766733641 HEAD~1"})


def test_a_commit_the_variant_backports_is_present_whatever_the_release_says(
        tmp_path: Path) -> None:
    # 6.1 has neither aa3496accc nor d48995723c by release; the leak-inject variant
    # brings the first, so its leak is expected there.
    leak_from = Commit("aa3496accc", "6.2")
    old = Kernel(parse_release("6.1.192"))
    assert not old.has(leak_from)
    brought = Kernel(parse_release("6.1.192"), backported=frozenset({"aa3496accc"}))
    assert brought.has(leak_from) and not brought.has(Commit("d48995723c", "6.2"))
    assert "backported by the variant: aa3496accc" in brought.source()
    listing = tmp_path / "has"
    listing.write_text("cba41bb78d\n")
    listed = kernel_under_test({"BPFLAB_HAS_COMMITS": str(listing),
                                "BPFLAB_BACKPORTED_COMMITS": "8766733641"})
    assert listed.has(FREE_FIX) and listed.has(ELEM_SIZE) and not listed.has(OPTIMIZE_FREE)


def test_a_commit_both_reverted_and_backported_is_refused() -> None:
    with pytest.raises(ValueError, match="both name 8766733641"):
        kernel_under_test({"BPFLAB_REVERTED_COMMITS": "8766733641",
                           "BPFLAB_BACKPORTED_COMMITS": "87667336"})
    with pytest.raises(ValueError, match="BPFLAB_BACKPORTED_COMMITS: 'main'"):
        kernel_under_test({"BPFLAB_BACKPORTED_COMMITS": "main"})
