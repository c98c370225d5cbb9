"""Debian kernel sources: apt sources derived from the host, versions, import into git."""

from __future__ import annotations

import gzip
import subprocess
import tarfile
from pathlib import Path

import pytest

from harness import debsrc
from harness.errors import LabError, UserError
from harness.ops import Ops
from tests.conftest import git

DEB822 = """Types: deb
URIs: http://archive.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://security.example/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://archive.example/debian
Suites: bookworm
Components: main
"""


def test_deb822_and_one_line_sources_parse_to_binary_entries() -> None:
    entries = debsrc.parse_sources(DEB822, one_line=False)
    assert [(e.uri, e.suites) for e in entries] == [
        ("http://archive.example/debian", ("bookworm", "bookworm-updates")),
        ("http://security.example/debian-security", ("bookworm-security",))]
    one = debsrc.parse_sources(
        "deb [signed-by=/k.gpg] http://m.example/debian bookworm main contrib\n"
        "# deb http://old.example/debian buster main\ndeb-src http://m.example/debian x main\n",
        one_line=True)
    assert one == [debsrc.AptSource("http://m.example/debian", ("bookworm",),
                                    ("main", "contrib"), "/k.gpg")]


def test_private_sources_reuse_the_hosts_mirror_for_newer_suites() -> None:
    text = debsrc.private_sources(debsrc.parse_sources(DEB822, one_line=False), "bookworm")
    assert "URIs: http://archive.example/debian\nSuites: trixie sid experimental" in text
    assert "Suites: bookworm-security" in text
    assert "deb.debian.org" not in text


def test_private_sources_without_the_hosts_suite_is_a_lab_error() -> None:
    with pytest.raises(LabError, match="no apt source for suite 'bookworm'"):
        debsrc.private_sources(debsrc.parse_sources(DEB822, one_line=False)[1:], "bookworm")


def test_versions_map_to_packages_and_the_newest_debian_revision() -> None:
    assert debsrc.package_for("6.1.192") == "linux-source-6.1"
    assert debsrc.package_for("7.3") == "linux-source-7.3"
    available = ["6.1.192-2", "6.1.192-1", "6.1.176-1", "6.12.117-1~deb12u1"]
    assert debsrc.pick_version("6.1.192", available) == "6.1.192-2"
    assert debsrc.pick_version("6.1.192-1", available) == "6.1.192-1"
    with pytest.raises(UserError, match="6.1.999 is not in Debian's archive"):
        debsrc.pick_version("6.1.999", available)
    assert debsrc.upstream_of("7.3~rc7-1~exp1") == "7.3-rc7"


def test_kernel_versions_sort_numerically_with_rcs_first() -> None:
    ordered = sorted(["6.12.117", "7.3", "6.1.192", "7.3-rc7", "6.1.76"], key=debsrc.version_key)
    assert ordered == ["6.1.76", "6.1.192", "6.12.117", "7.3-rc7", "7.3"]


def make_deb(tmp: Path, version: str, files: dict[str, str]) -> Path:
    """A linux-source-style .deb: usr/src/linux-source-X.tar.xz and a changelog."""
    root = tmp / f"pkg-{version}"
    top = root / "usr/src"
    top.mkdir(parents=True)
    tree = tmp / f"tree-{version}" / "linux-source-6.1"
    for name, text in files.items():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_text(text)
    with tarfile.open(top / "linux-source-6.1.tar.xz", "w:xz") as tar:
        tar.add(tree, arcname="linux-source-6.1")
    doc = root / "usr/share/doc/linux-source-6.1"
    doc.mkdir(parents=True)
    with gzip.open(doc / "changelog.Debian.gz", "wt") as log:
        log.write(f"linux ({version}) bookworm; urgency=medium\n\n  * x\n\n"
                  " -- Maint <m@x>  Sat, 01 Nov 2025 10:00:00 +0000\n")
    (root / "DEBIAN").mkdir()
    (root / "DEBIAN/control").write_text(
        f"Package: linux-source-6.1\nVersion: {version}\nArchitecture: all\n"
        "Maintainer: t <t@t>\nDescription: fake\n")
    deb = tmp / f"linux-source-6.1_{version}_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(root), str(deb)],
                   check=True, capture_output=True)
    return deb


class FakeArchive:
    def __init__(self, debs: dict[str, Path]) -> None:
        self.debs = debs
        self.downloads: list[str] = []

    def versions(self, package: str) -> list[str]:
        return list(self.debs)

    def download(self, package: str, version: str, dest: Path) -> Path:
        self.downloads.append(version)
        return self.debs[version]


def test_releases_import_as_one_commit_each_in_version_order(tmp_path: Path) -> None:
    gitignore = "/*\n!/kernel\n"  # Debian's ignores the whole top level
    debs = {"6.1.192-2": make_deb(tmp_path, "6.1.192-2", {
                ".gitignore": gitignore, "Makefile": "v192\n",
                "kernel/bpf/map_in_map.c": "fixed\n"}),
            "6.1.176-1": make_deb(tmp_path, "6.1.176-1", {
                ".gitignore": gitignore, "Makefile": "v176\n",
                "kernel/bpf/map_in_map.c": "old\n", "gone.c": "x\n"})}
    archive = FakeArchive(debs)
    ops = Ops(verbose=False)
    repo = debsrc.ensure_debian_repo(ops, tmp_path / "work", ("6.1.192", "6.1.176"), archive)
    log = git(repo, "log", "--format=%s", "debian").splitlines()
    assert log == ["Linux 6.1.192 (Debian linux-source 6.1.192-2)",
                   "Linux 6.1.176 (Debian linux-source 6.1.176-1)"]
    assert git(repo, "show", "v6.1.176:Makefile") == "v176"
    assert git(repo, "ls-tree", "--name-only", "v6.1.192") == ".gitignore\nMakefile\nkernel"
    changed = git(repo, "diff", "--name-only", "v6.1.176", "v6.1.192")
    assert changed.splitlines() == ["Makefile", "gone.c", "kernel/bpf/map_in_map.c"]
    again = debsrc.ensure_debian_repo(ops, tmp_path / "work", ("6.1.176",), archive)
    assert again == repo and archive.downloads == ["6.1.192-2", "6.1.176-1"]
    assert git(repo, "rev-parse", "v6.1.192") == git(repo, "rev-parse", "debian")
