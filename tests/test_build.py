"""The real build orchestration against a fake kernel tree whose Makefile imitates kbuild."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Callable

import pytest

from harness.build import Builder, first_errors, make_argv, parse_ccache_stats
from harness.config import load_lab
from harness.main import Session
from harness.ops import Ops
from harness.results import Status
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
    assert [t.arch.name for t in session.targets(variant="inject")] == ["x86_64", "x86_64"]


def test_a_build_stores_image_config_vmlinux_and_metadata(session: Session) -> None:
    target = session.targets(arch="x86_64", variant="base")[0]
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
    target = session.targets(arch="arm64")[0]
    first = session.builder().build(target)
    again = session.builder().build(target)
    assert again.cached and again.artifacts == first.artifacts and again.key == first.key


def test_the_next_commit_rebuilds_only_what_changed(session: Session) -> None:
    # v2 -> v3 changes map_in_map.c alone
    lab = replace(session.lab, source=replace(session.lab.source, range=None,
                                              commits=("v2", "v3")))
    session = Session(lab, session.ops)
    first, second = session.targets(arch="x86_64", variant="base")
    builder = session.builder()
    builder.build(first)
    result = builder.build(second)
    assert result.meta["objects_compiled"] == 1
    assert result.key != builder.key(first)


def test_a_variant_applies_its_patch_and_gets_its_own_key(session: Session) -> None:
    base, inject = (session.targets(arch="x86_64", variant=v)[0] for v in ("base", "inject"))
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
    result = session.builder().build(session.targets(variant="inject")[0])
    assert result.status is Status.FAIL
    assert "inject.patch does not apply" in result.errors[0]


def test_a_compile_error_is_a_result_with_the_compiler_lines(session: Session,
                                                             fake_tree: Path) -> None:
    (fake_tree / "BREAK").write_text("")
    (fake_tree / "map_in_map.c").write_text("int map_in_map = ;\n")
    git(fake_tree, "add", "BREAK", "map_in_map.c")
    git(fake_tree, "commit", "-q", "-m", "break the build")
    git(fake_tree, "tag", "-f", "v3")
    targets = session.targets(arch="x86_64", variant="base")
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
    result = session.builder().build(session.targets(arch="x86_64", variant="base")[-1])
    assert result.status is Status.FAIL
    assert result.errors == ("config: CONFIG_KASAN=y dropped",)


def test_an_unchanged_config_keeps_its_mtime(session: Session) -> None:
    first, second = session.targets(arch="x86_64", variant="base")
    builder = session.builder()
    builder.build(first)
    dot = builder.build_dir(first.arch) / ".config"
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
    t1, t2 = session.targets(arch="x86_64", variant="base")
    builder: Builder = session.builder()
    k1 = builder.key(t1)
    assert k1 == builder.key(t1) and k1 != builder.key(t2)
    (tmp_path / "bpf.config").write_text("CONFIG_64BIT=y\n")
    assert builder.key(t1) != k1
