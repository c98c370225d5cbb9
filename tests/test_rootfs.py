"""The rootfs recipe: cache keys, mirrors from the host's apt sources, argv, binfmt."""

from __future__ import annotations

import os
import platform

import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping, Sequence

import pytest

from harness import binfmt, rootfs
from harness.config import load_arches
from harness.debsrc import AptSource, parse_sources
from harness.errors import ConfigError, LabError
from harness.ops import Completed, Ops

ARCHES = {a.name: a for a in load_arches()}
# Pinned, whatever the host: one arch the host runs natively, one it must emulate.
NATIVE = replace(ARCHES["x86_64"], name=platform.machine(), aliases=())
FOREIGN = replace(ARCHES["arm64"], name="sparc64", aliases=(), debian_arch="sparc64")
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    copy = tmp_path / "recipe"
    shutil.copytree(rootfs.RECIPE, copy)
    return copy


def test_the_projects_recipe_loads_and_asks_for_sshd_and_python(recipe: Path) -> None:
    r = rootfs.load_recipe(recipe)
    assert r.suite == "bookworm" and r.variant == "minbase"
    assert {"openssh-server", "python3", "python3-pytest", "iproute2"} <= set(r.packages)
    assert r.hook.is_file() and (r.overlay / "usr/sbin/bpflab-init").is_file()


def test_an_unknown_recipe_key_names_the_file_and_the_key(recipe: Path) -> None:
    (recipe / "recipe.yaml").write_text("suite: bookworm\npackages: []\nmirror: x\n")
    with pytest.raises(ConfigError, match="recipe.yaml: mirror: unknown key"):
        rootfs.load_recipe(recipe)


def test_the_cache_key_is_stable_for_the_same_recipe(recipe: Path) -> None:
    arch = ARCHES["x86_64"]
    assert rootfs.cache_key(recipe, arch, "k") == rootfs.cache_key(recipe, arch, "k")


@pytest.mark.parametrize("change", ["package", "overlay", "exec bit", "arch", "lab key"])
def test_the_cache_key_changes_with_anything_that_changes_the_image(
        recipe: Path, change: str) -> None:
    before = rootfs.cache_key(recipe, ARCHES["x86_64"], "k")
    arch, key = ARCHES["x86_64"], "k"
    if change == "package":
        with open(recipe / "recipe.yaml", "a") as f:
            f.write("  - strace\n")
    elif change == "overlay":
        (recipe / "overlay/etc/motd").write_text("hi\n")
    elif change == "exec bit":
        (recipe / "hooks/customize.sh").chmod(0o644)
    elif change == "arch":
        arch = ARCHES["arm64"]
    else:
        key = "other"
    assert rootfs.cache_key(recipe, arch, key) != before


def test_editing_the_readme_does_not_rebuild_the_image(recipe: Path) -> None:
    before = rootfs.cache_key(recipe, ARCHES["x86_64"], "k")
    (recipe / "README.md").write_text("new words\n")
    assert rootfs.cache_key(recipe, ARCHES["x86_64"], "k") == before


HOST_SOURCES = """\
Types: deb
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main contrib
Signed-By: /k.gpg

Types: deb
URIs: http://security.example/debian-security
Suites: bookworm-security
Components: main

Types: deb
URIs: https://vendor.example/apt
Suites: nodistro
Components: main
"""


def test_mirrors_come_from_the_hosts_own_debian_sources() -> None:
    lines = rootfs.mirror_lines(parse_sources(HOST_SOURCES, one_line=False),
                                "bookworm", "bookworm")
    assert lines == [
        "deb [signed-by=/k.gpg] http://mirror.example/debian bookworm main contrib",
        "deb [signed-by=/k.gpg] http://mirror.example/debian bookworm-updates main contrib",
        f"deb [signed-by={KEYRING}] http://security.example/debian-security "
        "bookworm-security main"]


def test_a_host_on_another_release_lends_its_archives_to_the_guests_suite() -> None:
    host = [AptSource("http://m.example/debian", ("trixie", "trixie-updates"), ("main",),
                      "/k.gpg")]
    lines = rootfs.mirror_lines(host, "trixie", "bookworm")
    assert [line.split()[3] for line in lines] == ["bookworm", "bookworm-updates"]


def test_a_host_without_debian_sources_is_a_lab_error() -> None:
    host = [AptSource("https://vendor.example/apt", ("nodistro",), ("main",), "/k")]
    with pytest.raises(LabError, match="no Debian bookworm archive"):
        rootfs.mirror_lines(host, "bookworm", "bookworm")


def test_mmdebstrap_gets_arch_packages_hook_suite_target_and_mirrors(recipe: Path) -> None:
    r = rootfs.load_recipe(recipe)
    argv = rootfs.mmdebstrap_argv(r, ARCHES["arm64"], Path("/t/tree"), ["deb m s main"],
                                  foreign=True)
    assert argv[0] == "mmdebstrap" and "--arch=arm64" in argv
    assert "--skip=check/qemu" in argv  # binfmt is the lab's job, not arch-test's
    assert f"--customize-hook={r.hook}" in argv
    assert argv[-3:] == ["bookworm", "/t/tree", "deb m s main"]
    assert any(a.startswith("--include=") and "openssh-server" in a for a in argv)


def test_the_image_is_made_by_mke2fs_from_the_directory() -> None:
    assert rootfs.mke2fs_argv(Path("/d"), Path("/i.ext4"), "1G")[-4:] == [
        "-d", "/d", "/i.ext4", "1G"]


@dataclass
class FakeOps:
    calls: list[list[str]] = field(default_factory=list)

    def run(self, argv: Sequence[str], cwd: Path | None = None,
            env: Mapping[str, str] | None = None, check: bool = True,
            quiet: bool = False) -> Completed:
        self.calls.append(list(argv))
        if argv[0] == "mount":  # what mounting binfmt_misc makes appear
            (Path(argv[-1]) / "register").write_text("")
        return Completed(tuple(argv), 0, "")


QEMU_AARCH64 = """package qemu-user-static
interpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P
magic \\x7f\\x45\\x4c\\x46
offset 0
mask \\xff\\xff\\xff\\xff
credentials no
fix_binary yes
preserve yes
"""


def fake_binfmt(tmp_path: Path, mounted: bool) -> tuple[Path, Path]:
    proc, shares = tmp_path / "binfmt_misc", tmp_path / "binfmts"
    proc.mkdir()
    shares.mkdir()
    (shares / "qemu-aarch64").write_text(QEMU_AARCH64)
    if mounted:
        (proc / "register").write_text("")
    return proc, shares


def test_a_foreign_arch_registers_qemu_user_with_the_fix_binary_flag(tmp_path: Path) -> None:
    proc, shares = fake_binfmt(tmp_path, mounted=True)
    assert binfmt.ensure_binfmt(FOREIGN, FakeOps(), proc, shares)  # type: ignore[arg-type]
    assert (proc / "register").read_text() == (
        ":qemu-aarch64:M:0:\\x7f\\x45\\x4c\\x46:\\xff\\xff\\xff\\xff:"
        "/usr/libexec/qemu-binfmt/aarch64-binfmt-P:FP")


def test_binfmt_misc_is_mounted_when_it_is_not(tmp_path: Path) -> None:
    proc, shares = fake_binfmt(tmp_path, mounted=False)
    ops = FakeOps()
    assert binfmt.ensure_binfmt(FOREIGN, ops, proc, shares)  # type: ignore[arg-type]
    assert ops.calls == [["mount", "-t", "binfmt_misc", "binfmt_misc", str(proc)]]
    assert (proc / "register").read_text().startswith(":qemu-aarch64:")


def test_an_existing_registration_is_left_alone(tmp_path: Path) -> None:
    proc, shares = fake_binfmt(tmp_path, mounted=True)
    (proc / "qemu-aarch64").write_text("enabled\ninterpreter /x\n")
    assert not binfmt.ensure_binfmt(FOREIGN, FakeOps(), proc, shares)  # type: ignore[arg-type]
    assert (proc / "register").read_text() == ""


def test_the_native_arch_needs_no_emulation(tmp_path: Path) -> None:
    proc, shares = fake_binfmt(tmp_path, mounted=False)
    ops = FakeOps()
    assert not binfmt.ensure_binfmt(NATIVE, ops, proc, shares)  # type: ignore[arg-type]
    assert ops.calls == []


@dataclass
class FakeBuildOps(FakeOps):
    """mmdebstrap and mke2fs at the Ops seam: they leave what the real ones leave."""

    streamed: list[list[str]] = field(default_factory=list)

    def stream(self, argv: Sequence[str], log: Path, cwd: Path | None = None,
               env: Mapping[str, str] | None = None, on_line: object = None) -> int:
        self.streamed.append(list(argv))
        if argv[0] == "mmdebstrap":
            tree = Path(argv[argv.index("bookworm") + 1])  # SUITE TARGET MIRROR...
            (tree / "etc/ssh").mkdir(parents=True)
            (tree / rootfs.HOST_KEY).write_text("ssh-ed25519 AAAA guest\n")
            assert env is not None and Path(env["BPFLAB_AUTHORIZED_KEY"]).is_file()
        elif argv[0] == "mke2fs":
            Path(argv[-2]).write_bytes(b"ext4")
        return 0

    def run(self, argv: Sequence[str], cwd: Path | None = None,
            env: Mapping[str, str] | None = None, check: bool = True,
            quiet: bool = False) -> Completed:
        if argv[0] == "ssh-keygen":  # the real thing: cheap, and the key must parse
            return Ops(verbose=False).run(argv, cwd, env, check, quiet)
        return super().run(argv, cwd, env, check, quiet)


@pytest.fixture
def one_mirror(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rootfs, "host_sources", lambda: parse_sources(
        "deb http://mirror.example/debian bookworm main\n", one_line=True))
    monkeypatch.setattr(rootfs, "host_codename", lambda: "bookworm")


def test_a_rootfs_is_built_once_then_served_from_the_cache(
        tmp_path: Path, recipe: Path, one_mirror: None) -> None:
    ops = FakeBuildOps()
    first = rootfs.ensure_rootfs(tmp_path, NATIVE, ops, recipe)  # type: ignore[arg-type]
    again = rootfs.ensure_rootfs(tmp_path, NATIVE, ops, recipe)  # type: ignore[arg-type]
    assert (first.cached, again.cached) == (False, True)
    assert [a[0] for a in ops.streamed] == ["mmdebstrap", "mke2fs"]
    assert first.image.read_bytes() == b"ext4"
    assert first.host_key.read_text().startswith("ssh-ed25519 ")
    assert first.dir == tmp_path / "rootfs" / f"{NATIVE.name}-{first.key}"
    assert not (first.dir / "tree").exists()


def test_a_recipe_change_rebuilds_and_drops_the_old_image(
        tmp_path: Path, recipe: Path, one_mirror: None) -> None:
    ops = FakeBuildOps()
    old = rootfs.ensure_rootfs(tmp_path, NATIVE, ops, recipe)  # type: ignore[arg-type]
    (recipe / "overlay/etc/motd").write_text("changed\n")
    new = rootfs.ensure_rootfs(tmp_path, NATIVE, ops, recipe)  # type: ignore[arg-type]
    assert new.key != old.key and not new.cached
    assert not old.dir.exists() and new.dir.exists()


MOUNTINFO = """\
22 1 254:0 / / rw,relatime - ext4 /dev/vda rw
90 22 0:5 / /w/rootfs/.build-x/tree/proc rw - proc proc rw
91 22 0:6 / /w/rootfs/.build-x/tree/sys rw - sysfs sysfs rw
92 91 0:7 / /w/rootfs/.build-x/tree/sys/kernel/security rw - securityfs s rw
93 22 0:8 /shm /w/rootfs/.build-x/tree/dev/shm rw - tmpfs tmpfs rw
94 22 0:9 / /w/rootfs/.build-xy/tree/proc rw - proc proc rw
95 22 0:10 / /w/with\\040space/proc rw - proc proc rw
"""


def test_mounts_under_a_tree_are_found_deepest_first_and_only_there() -> None:
    found = rootfs.mounts_under(Path("/w/rootfs/.build-x"), MOUNTINFO)
    assert found[0] == Path("/w/rootfs/.build-x/tree/sys/kernel/security")
    assert sorted(found) == sorted(Path(f"/w/rootfs/.build-x/tree/{p}")
                                   for p in ("proc", "sys", "sys/kernel/security", "dev/shm"))
    assert rootfs.mounts_under(Path("/w/with space"), MOUNTINFO) == [
        Path("/w/with space/proc")]


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")
def test_a_tree_left_mounted_is_unmounted_before_removal_and_the_bound_host_dir_survives(
        tmp_path: Path) -> None:
    """What a killed mmdebstrap leaves: the host's /dev/shm bind-mounted in the chroot
    (here a stand-in directory) and a tmpfs. Removal must not empty the host's dir."""
    host_shm = tmp_path / "host-shm"
    host_shm.mkdir()
    (host_shm / "someone-elses-segment").write_text("keep me")
    tree = tmp_path / ".build-x" / "tree"
    (tree / "dev" / "shm").mkdir(parents=True)
    (tree / "proc").mkdir()
    ops = Ops()
    ops.run(["mount", "--bind", str(host_shm), str(tree / "dev" / "shm")])
    ops.run(["mount", "-t", "tmpfs", "tmpfs", str(tree / "proc")])
    try:
        rootfs.remove_tree(tmp_path / ".build-x", ops)
    finally:
        for point in rootfs.mounts_under(tmp_path, Path("/proc/self/mountinfo").read_text()):
            ops.run(["umount", "--lazy", str(point)], check=False)
    assert not (tmp_path / ".build-x").exists()
    assert (host_shm / "someone-elses-segment").read_text() == "keep me"
