"""The real build orchestration against a fake kernel tree whose Makefile imitates kbuild."""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import IO, Callable

import pytest

from harness.build import (ARTIFACTS, Builder, BuildResult, first_errors, make_argv,
                           parse_ccache_stats, read_entry)
from harness.config import load_lab
from harness.main import Session
from harness.errors import ConfigError
from harness.model import Selection, Status
from harness.ops import Ops
from tests.conftest import git

Writer = Callable[[str], Path]


@pytest.fixture
def session(fake_tree: Path, write_lab: Writer, tmp_path: Path) -> Session:
    frag = tmp_path / "bpf.config"
    frag.write_text("CONFIG_64BIT=y\nCONFIG_BPF_SYSCALL=y\nCONFIG_KASAN=y\n")
    patch = tmp_path / "inject.patch"
    patch.write_text("--- a/map_in_map.c\n+++ b/map_in_map.c\n@@ -1 +1,2 @@\n"
                     "+int injected_fault;\n int map_in_map;\n")
    lab = write_lab(f"workdir: {tmp_path / 'work'}\n"
                    f"source: {{git: {fake_tree}, range: 'v1..v3', paths: [map_in_map.c]}}\n"
                    f"arches: [x86_64, arm64]\n"
                    f"build: {{fragments: [{frag}], ccache: false, jobs: 1}}\n"
                    f"variants: [{{name: base}}, {{name: inject, patches: [{patch}],"
                    f" arches: [x86_64]}}]\n")
    return Session(load_lab(lab), Ops(verbose=False))


def test_targets_are_commits_times_arches_times_variants(session: Session) -> None:
    labels = [t.label.split(" ", 2)[::2] for t in session.targets()]
    assert len(labels) == 2 * (2 + 1)
    injected = session.targets(Selection(variant="inject"))
    assert [t.arch.name for t in injected] == ["x86_64", "x86_64"]


def test_a_build_stores_image_config_vmlinux_and_metadata(session: Session) -> None:
    target = session.targets(Selection(arch="x86_64", variant="base"))[0]
    result = session.builder().build(target)
    assert result.status is Status.PASS and not result.cached
    assert result.artifacts is not None
    assert (result.artifacts / "image").read_text().startswith("fake bzImage")
    for name in ("vmlinux", "config", "System.map", "build.log", "meta.json"):
        assert (result.artifacts / name).exists(), name
    meta = json.loads((result.artifacts / "meta.json").read_text())
    assert meta["commit"] == target.commit.sha and meta["kernel_release"] == "6.1.0-fake"
    assert meta["objects_compiled"] == 2
    assert "CONFIG_KASAN=y" in (result.artifacts / "config").read_text()


def test_a_second_build_with_the_same_key_is_a_cache_hit(session: Session) -> None:
    target = session.targets(Selection(arch="arm64"))[0]
    first = session.builder().build(target)
    again = session.builder().build(target)
    assert again.cached and again.artifacts == first.artifacts and again.key == first.key


def test_the_next_commit_rebuilds_only_what_changed(session: Session) -> None:
    # v2 -> v3 changes map_in_map.c alone
    lab = replace(session.lab, source=replace(session.lab.source, range=None,
                                              commits=("v2", "v3")))
    session = Session(lab, session.ops)
    first, second = session.targets(Selection(arch="x86_64", variant="base"))
    builder = session.builder()
    builder.build(first)
    result = builder.build(second)
    assert result.meta["objects_compiled"] == 1
    assert result.key != builder.key(first)


def test_a_variant_applies_its_patch_and_gets_its_own_key(session: Session) -> None:
    base, inject = (session.targets(Selection(arch="x86_64", variant=v))[0]
                    for v in ("base", "inject"))
    builder = session.builder()
    result = builder.build(inject)
    assert result.status is Status.PASS and result.artifacts is not None
    assert "injected_fault" in (result.artifacts / "vmlinux").read_text()
    assert builder.key(base) != builder.key(inject)
    clean = builder.build(base)
    assert clean.artifacts is not None
    assert "injected_fault" not in (clean.artifacts / "vmlinux").read_text()


def test_a_patch_that_does_not_apply_is_a_failed_result(session: Session, fake_tree: Path,
                                                        tmp_path: Path) -> None:
    (tmp_path / "inject.patch").write_text("--- a/nope.c\n+++ b/nope.c\n@@ -1 +1 @@\n-a\n+b\n")
    result = session.builder().build(session.targets(Selection(variant="inject"))[0])
    assert result.status is Status.FAIL
    assert "inject.patch does not apply" in result.errors[0]


def test_a_compile_error_is_a_result_with_the_compiler_lines(session: Session,
                                                             fake_tree: Path) -> None:
    (fake_tree / "BREAK").write_text("")
    (fake_tree / "map_in_map.c").write_text("int map_in_map = ;\n")
    git(fake_tree, "add", "BREAK", "map_in_map.c")
    git(fake_tree, "commit", "-q", "-m", "break the build")
    git(fake_tree, "tag", "-f", "v3")
    targets = session.targets(Selection(arch="x86_64", variant="base"))
    results = [session.builder().build(t) for t in targets]
    assert [r.status for r in results] == [Status.PASS, Status.PASS, Status.FAIL]
    assert results[2].errors[0].startswith("kernel/bpf/map_in_map.c:42:1: error:")
    assert results[2].log.exists() and results[2].artifacts is None


def test_an_option_dropped_by_kconfig_fails_the_build_naming_it(session: Session,
                                                                fake_tree: Path) -> None:
    (fake_tree / "DROP").write_text("CONFIG_KASAN\n")
    (fake_tree / "map_in_map.c").write_text("int map_in_map_v4;\n")
    git(fake_tree, "add", "DROP", "map_in_map.c")
    git(fake_tree, "commit", "-q", "-m", "kasan needs something we lack")
    git(fake_tree, "tag", "-f", "v3")
    result = session.builder().build(session.targets(Selection(arch="x86_64", variant="base"))[-1])
    assert result.status is Status.FAIL
    assert result.errors == ("config: CONFIG_KASAN=y dropped",)


def test_an_unchanged_config_keeps_its_mtime(session: Session) -> None:
    first, second = session.targets(Selection(arch="x86_64", variant="base"))
    builder = session.builder()
    builder.build(first)
    dot = builder.build_dir(first.arch, builder.series(first)) / ".config"
    before = dot.stat().st_mtime_ns
    builder.build(second)
    assert dot.stat().st_mtime_ns == before


def test_make_argv_cross_compiles_arm64_with_ccache(session: Session) -> None:
    arm64 = session.lab.arch("arm64")
    argv = make_argv(arm64, Path("/src"), Path("/b"), 2, True, "Image")
    assert argv == ["make", "-C", "/src", "O=/b", "ARCH=arm64", "-j2",
                    "CROSS_COMPILE=aarch64-linux-gnu-", "CC=ccache aarch64-linux-gnu-gcc",
                    "HOSTCC=ccache gcc", "Image"]
    x86 = make_argv(session.lab.arch("x86_64"), Path("/src"), Path("/b"), 2, False, "bzImage")
    assert x86 == ["make", "-C", "/src", "O=/b", "ARCH=x86", "-j2", "bzImage"]


def test_first_errors_prefers_compiler_errors_over_the_log_tail() -> None:
    lines = ["  CC foo.o", "foo.c:1:2: error: bad", "make: *** [foo.o] Error 1", "done"]
    assert first_errors(lines) == ("foo.c:1:2: error: bad", "make: *** [foo.o] Error 1")
    assert first_errors(["a", "b"], limit=1) == ("b",)


def test_ccache_stats_count_direct_and_preprocessed_hits() -> None:
    text = "direct_cache_hit\t10\npreprocessed_cache_hit\t5\ncache_miss\t3\nstats_zeroed\t0\n"
    assert parse_ccache_stats(text) == {"hits": 15, "misses": 3}


def test_builder_cache_key_depends_on_tree_arch_and_fragments(session: Session,
                                                              tmp_path: Path) -> None:
    t1, t2 = session.targets(Selection(arch="x86_64", variant="base"))
    builder: Builder = session.builder()
    k1 = builder.key(t1)
    assert k1 == builder.key(t1) and k1 != builder.key(t2)
    (tmp_path / "bpf.config").write_text("CONFIG_64BIT=y\n")
    assert builder.key(t1) != k1


def _append(path: Path, text: str) -> None:
    with open(path, "a") as fh:
        fh.write(text)


# How a cache entry gets broken, and the reason the lab then gives.
DAMAGE: list[tuple[str, Callable[[Path], object], str]] = [
    ("truncated-meta", lambda e: (e / "meta.json").write_text('{"commit": '),
     "meta.json unreadable"),
    ("meta-not-an-object", lambda e: (e / "meta.json").write_text("[1, 2]\n"),
     "meta.json is not an object"),
    ("meta-removed", lambda e: (e / "meta.json").unlink(), "meta.json missing"),
    *[(f"{name}-removed", lambda e, name=name: (e / name).unlink(), f"{name} missing")
      for name in ARTIFACTS],
    ("image-replaced", lambda e: (e / "image").write_text("fake bzImage tampered\n"),
     "image sha256 differs"),
    ("vmlinux-grown", lambda e: _append(e / "vmlinux", "int more;\n"), "vmlinux size differs"),
]


@pytest.mark.parametrize("damage,why", [(d[1], d[2]) for d in DAMAGE], ids=[d[0] for d in DAMAGE])
def test_a_broken_cache_entry_is_said_removed_and_built_again(
        session: Session, capsys: pytest.CaptureFixture[str],
        damage: Callable[[Path], object], why: str) -> None:
    target = session.targets(Selection(arch="x86_64", variant="base"))[0]
    builder = session.builder()
    first = builder.build(target)
    assert first.artifacts is not None and read_entry(first.artifacts)[1] == ""
    damage(first.artifacts)
    capsys.readouterr()
    again = builder.build(target)
    said = [line for line in capsys.readouterr().out.splitlines() if "is broken" in line]
    assert len(said) == 1 and f"({why}" in said[0]
    assert again.status is Status.PASS and not again.cached
    assert again.artifacts == first.artifacts and read_entry(again.artifacts)[1] == ""
    assert builder.build(target).cached


def test_lookup_removes_a_broken_entry_and_reports_a_miss(session: Session) -> None:
    target = session.targets(Selection(arch="arm64"))[0]
    builder = session.builder()
    entry = builder.build(target).artifacts
    assert entry is not None and builder.lookup(target) is not None
    (entry / "meta.json").write_text("not json")
    assert builder.lookup(target) is None and not entry.exists()


def test_a_good_entry_records_the_image_hash_and_vmlinux_size(session: Session) -> None:
    result = session.builder().build(session.targets(Selection(arch="x86_64", variant="base"))[0])
    assert result.artifacts is not None
    meta = json.loads((result.artifacts / "meta.json").read_text())
    assert meta["vmlinux_size"] == (result.artifacts / "vmlinux").stat().st_size
    assert len(str(meta["sha256_image"])) == 64


def test_force_builds_again_over_a_good_entry(session: Session,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    target = session.targets(Selection(arch="x86_64", variant="base"))[0]
    builder = session.builder()
    first = builder.build(target)
    assert first.artifacts is not None
    stored = (first.artifacts / "meta.json").stat().st_ino
    capsys.readouterr()
    forced = builder.build(target, force=True)
    assert forced.status is Status.PASS and not forced.cached
    assert "cache hit" not in capsys.readouterr().out
    assert forced.artifacts == first.artifacts
    assert (forced.artifacts / "meta.json").stat().st_ino != stored  # stored anew


def _held_by_another_lab(lock: Path) -> IO[str]:
    lock.parent.mkdir(parents=True, exist_ok=True)
    held = open(lock, "w")
    fcntl.flock(held, fcntl.LOCK_EX)
    held.write("4242\n")
    held.flush()
    return held


def _wait_until_said(capsys: pytest.CaptureFixture[str], text: str) -> str:
    said = ""
    deadline = time.monotonic() + 10
    while text not in said and time.monotonic() < deadline:
        time.sleep(0.05)
        said += capsys.readouterr().out
    return said


def test_a_build_waits_for_the_lab_holding_its_build_directory(
        session: Session, capsys: pytest.CaptureFixture[str]) -> None:
    target = session.targets(Selection(arch="x86_64", variant="base"))[0]
    builder = session.builder()
    lock = builder.build_lock(builder.build_dir(target.arch, builder.series(target)))
    results: list[BuildResult] = []
    with _held_by_another_lab(lock):
        waiter = threading.Thread(target=lambda: results.append(builder.build(target)))
        waiter.start()
        said = _wait_until_said(capsys, "waiting for")
        bdir = builder.build_dir(target.arch, builder.series(target))
        assert f"waiting for {bdir} (held by pid 4242)" in said
        time.sleep(0.3)
        assert waiter.is_alive() and not results
        assert not (builder.build_dir(target.arch, builder.series(target)) / "vmlinux").exists()  # make has not run
    waiter.join(timeout=30)
    assert [r.status for r in results] == [Status.PASS]
    assert lock.read_text().strip() == str(os.getpid())  # the holder says who it is


def test_a_build_that_waited_takes_what_the_other_lab_stored(
        session: Session, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    target = session.targets(Selection(arch="arm64"))[0]
    builder = session.builder()
    entry = builder.build(target).artifacts
    assert entry is not None
    entry.rename(tmp_path / "stored-by-the-other-lab")
    results: list[BuildResult] = []
    with _held_by_another_lab(builder.build_lock(builder.build_dir(target.arch, builder.series(target)))):
        waiter = threading.Thread(target=lambda: results.append(builder.build(target)))
        waiter.start()
        _wait_until_said(capsys, "waiting for")
        (tmp_path / "stored-by-the-other-lab").rename(entry)
    waiter.join(timeout=30)
    assert len(results) == 1 and results[0].cached and results[0].artifacts == entry


def test_each_kernel_series_gets_a_build_directory_of_its_own(session: Session,
                                                              fake_tree: Path) -> None:
    from tests.conftest import git
    first = session.targets()[0]
    builder = session.builder()
    makefile = fake_tree / "Makefile"
    text = makefile.read_text()
    for version, patchlevel in (("6", "1"), ("7", "3")):
        makefile.write_text(f"VERSION = {version}\nPATCHLEVEL = {patchlevel}\n{text}")
        git(fake_tree, "commit", "-q", "-am", f"Linux {version}.{patchlevel}")
        sha = git(fake_tree, "rev-parse", "HEAD")
        target = replace(first, commit=replace(first.commit, sha=sha))
        assert builder.series(target) == f"{version}.{patchlevel}"
        assert builder.build_dir(target.arch, builder.series(target)).name == \
            f"x86_64-tinyconfig-{version}.{patchlevel}"
    assert builder.series(first) == ""  # no VERSION = line: one directory, as before


def test_the_series_layer_applies_to_its_series_only(session: Session) -> None:
    builder = session.builder()
    arch = session.lab.arches[0]
    seven = [f.name for f in builder.frags_for(arch, "7.3")]
    assert seven[-2:] == ["6.12.config", "7.config"] and "7.config" not in \
        [f.name for f in builder.frags_for(arch, "6.1")]
    assert builder.frags_for(arch, "") == builder.frags_for(arch, "6.1")
    assert [f.name for f in builder.frags_for(arch, "6.12")][-1] == "6.12.config"


def test_a_series_patch_is_the_one_for_the_kernels_series_and_a_missing_one_is_named(
        session: Session, tmp_path: Path) -> None:
    first = session.targets(Selection(arch="x86_64", variant="inject"))[0]
    (tmp_path / "6.1").mkdir()
    (tmp_path / "6.1" / "inject.patch").write_text((tmp_path / "inject.patch").read_text())
    variant = replace(first.variant, patches=(tmp_path / "{series}" / "inject.patch",))
    builder = session.builder()
    old = replace(first, variant=variant, commit=replace(first.commit, series="6.1"))
    result = builder.build(old)
    assert result.status is Status.PASS and result.artifacts is not None
    assert "injected_fault" in (result.artifacts / "vmlinux").read_text()
    new = replace(old, commit=replace(old.commit, series="7.3"))
    with pytest.raises(ConfigError) as err:
        builder.build(new)
    assert err.value.key == "variants[inject].patches[0]"
    assert "series 7.3" in err.value.expected and "7.3/inject.patch" in err.value.expected


def test_a_fragment_changed_while_waiting_for_the_build_directory_is_in_the_key(
        session: Session, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """The entry is stored under the key of what was configured, not of what the
    fragments said when the build started waiting."""
    target = session.targets(Selection(arch="x86_64", variant="base"))[0]
    builder = session.builder()
    before = builder.key(target)
    lock = builder.build_lock(builder.build_dir(target.arch, builder.series(target)))
    results: list[BuildResult] = []
    with _held_by_another_lab(lock):
        waiter = threading.Thread(target=lambda: results.append(builder.build(target)))
        waiter.start()
        _wait_until_said(capsys, "waiting for")
        _append(tmp_path / "bpf.config", "CONFIG_BPF_JIT=y\n")
    waiter.join(timeout=30)
    [result] = results
    assert result.key == builder.key(target) != before
