"""The QEMU a profile boots on (harness/emulator.py): the host's when it is new enough,
else a newer one from Debian's backports, unpacked once into the shared cache. The
archive is faked at its seam; the packages are real .debs built here (dpkg-deb), whose
"QEMU" is a script printing a version, run by the real Ops."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from harness.config import load_profiles
from harness.emulator import PACKAGES, at_least, described, qemu_for, version_of
from harness.errors import UserError
from harness.ops import Ops
from harness.qemu import Machine, machine_of, qemu_argv

PROFILES = load_profiles()
MTE = PROFILES["arm64-mte"]


def fake_qemu(directory: Path, version: str) -> Path:
    """An executable named like the arch's QEMU that prints version as QEMU does."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / MTE.arch.qemu_binary
    path.write_text(f"#!/bin/sh\necho 'QEMU emulator version {version} (fake)'\n")
    path.chmod(0o755)
    return path


def deb(where: Path, package: str, version: str, files: dict[str, str]) -> Path:
    """A real .deb of package holding files (path -> text; usr/bin/* executable)."""
    tree = where / f"{package}-tree"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN/control").write_text(
        f"Package: {package}\nVersion: {version}\nArchitecture: all\n"
        "Maintainer: lab <lab@localhost>\nDescription: test package\n")
    for rel, text in files.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text(text)
        if rel.startswith("usr/bin/"):
            (tree / rel).chmod(0o755)
    out = where / f"{package}_{version.replace(':', '%3a')}_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(tree), str(out)],
                   check=True, capture_output=True)
    shutil.rmtree(tree)
    return out


class FakeArchive:
    """Debian's backports at the seam: what versions exist, and their .debs."""

    def __init__(self, debs: dict[tuple[str, str], Path]) -> None:
        self.debs, self.downloads = debs, []  # type: ignore[var-annotated]

    def versions(self, package: str) -> list[str]:
        return [v for (p, v) in self.debs if p == package]

    def download(self, package: str, version: str, dest: Path) -> Path:
        self.downloads.append((package, version))
        dest.mkdir(parents=True, exist_ok=True)
        return Path(shutil.copy(self.debs[(package, version)], dest))


@pytest.fixture
def on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Put a fake host QEMU of a given version first on PATH."""
    def install(version: str) -> None:
        fake_qemu(tmp_path / "hostbin", version)
        monkeypatch.setenv("PATH", f"{tmp_path / 'hostbin'}:/usr/bin:/bin")
    return install


def backports(tmp_path: Path, *versions: str) -> FakeArchive:
    debs = {}
    for v in versions:
        upstream = version_of(v)
        shown = ".".join(map(str, upstream))
        debs[(PACKAGES[MTE.arch.qemu_binary], v)] = deb(
            tmp_path / "debs", PACKAGES[MTE.arch.qemu_binary], v,
            {f"usr/bin/{MTE.arch.qemu_binary}":
             f"#!/bin/sh\necho 'QEMU emulator version {shown} (Debian {v})'\n"})
        debs[("qemu-system-data", v)] = deb(tmp_path / "debs", "qemu-system-data", v,
                                            {"usr/share/qemu/efi-virtio.rom": "rom"})
    return FakeArchive(debs)


@pytest.mark.parametrize(("text", "expected"), [
    ("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)", (7, 2, 22)),
    ("1:10.0.2+ds-2+deb13u1~bpo12+1", (10, 0, 2)),
    ("10.0", (10, 0, 0)),
    ("", ()),
])
def test_versions_are_read_from_qemus_banner_and_debian_versions(text: str,
                                                                 expected: tuple[int, ...]) -> None:
    assert version_of(text) == expected


def test_a_version_is_at_least_another_by_its_numbers_and_none_is_never() -> None:
    assert at_least("QEMU emulator version 10.0.2", "10.0")
    assert at_least("1:10.1.0+ds-1~bpo12+1", "10.0")
    assert not at_least("QEMU emulator version 7.2.22", "10.0")
    assert not at_least("", "10.0")


def test_a_profile_without_a_minimum_uses_the_archs_qemu_and_runs_nothing(
        tmp_path: Path) -> None:
    class NoOps(Ops):
        def run(self, *args: object, **kwargs: object):  # type: ignore[no-untyped-def, override]
            raise AssertionError("nothing to run")
    found = qemu_for(NoOps(), PROFILES["arm64-swtags"], tmp_path)
    assert found.binary == "qemu-system-aarch64" and found.datadir is None


def test_a_host_qemu_new_enough_is_used_as_it_is(tmp_path: Path, on_path) -> None:  # type: ignore[no-untyped-def]
    on_path("10.1.0")
    archive = backports(tmp_path, "1:10.0.2+ds-2~bpo12+1")
    found = qemu_for(Ops(), MTE, tmp_path / "cache", lambda root: archive)
    assert (found.binary, found.datadir) == ("qemu-system-aarch64", None)
    assert "10.1.0" in found.version and archive.downloads == []


def test_an_old_host_qemu_gets_the_newest_backport_unpacked_once_into_the_cache(
        tmp_path: Path, on_path) -> None:  # type: ignore[no-untyped-def]
    on_path("7.2.22")
    archive = backports(tmp_path, "1:10.0.2+ds-2~bpo12+1", "1:10.1.0+ds-1~bpo12+1",
                        "1:9.2.0+ds-1~bpo12+1")
    found = qemu_for(Ops(), MTE, tmp_path / "cache", lambda root: archive)
    assert "10.1.0" in found.version
    assert Path(found.binary).is_file() and found.binary.startswith(str(tmp_path / "cache"))
    assert found.datadir is not None and (found.datadir / "efi-virtio.rom").is_file()
    assert archive.downloads == [("qemu-system-arm", "1:10.1.0+ds-1~bpo12+1"),
                                 ("qemu-system-data", "1:10.1.0+ds-1~bpo12+1")]
    # a second run (another clone sharing the cache) unpacks nothing
    again = qemu_for(Ops(), MTE, tmp_path / "cache", lambda root: archive)
    assert again == found and len(archive.downloads) == 2
    # and the guest's command line names that QEMU and its ROMs
    argv = qemu_argv(MTE.arch, tmp_path / "image", None, ssh_port=1,
                     qmp_socket=tmp_path / "qmp", machine=machine_of(MTE, found))
    assert argv[0] == found.binary and argv[argv.index("-L") + 1] == str(found.datadir)


def test_no_backport_new_enough_is_an_error_naming_the_profiles_key(
        tmp_path: Path, on_path) -> None:  # type: ignore[no-untyped-def]
    on_path("7.2.22")
    archive = backports(tmp_path, "1:9.2.0+ds-1~bpo12+1")
    with pytest.raises(UserError) as err:
        qemu_for(Ops(), MTE, tmp_path / "cache", lambda root: archive)
    text = str(err.value)
    assert "kernels/profiles.yaml: arm64-mte.qemu_min" in text and "7.2.22" in text
    assert "no qemu-system-arm that new" in text


def test_a_backport_that_does_not_run_here_is_not_kept(tmp_path: Path, on_path) -> None:  # type: ignore[no-untyped-def]
    on_path("7.2.22")
    broken = {("qemu-system-arm", "1:10.0.2"): deb(
        tmp_path, "qemu-system-arm", "1:10.0.2",
        {f"usr/bin/{MTE.arch.qemu_binary}": "#!/bin/sh\nexit 127\n"}),
        ("qemu-system-data", "1:10.0.2"): deb(tmp_path, "qemu-system-data", "1:10.0.2",
                                              {"usr/share/qemu/x.rom": "rom"})}
    with pytest.raises(Exception, match="does not run here"):
        qemu_for(Ops(), MTE, tmp_path / "cache", lambda root: FakeArchive(broken))
    assert not [p for p in (tmp_path / "cache/qemu").iterdir() if p.name.startswith("qemu")]


def test_the_arch_qemu_stays_on_every_other_profiles_command_line(tmp_path: Path) -> None:
    for name in ("arm64", "arm64-swtags", "x86_64-4cpu"):
        p = PROFILES[name]
        argv = qemu_argv(p.arch, tmp_path / "image", None, ssh_port=1,
                         qmp_socket=tmp_path / "qmp", machine=machine_of(p))
        assert argv[0] == p.arch.qemu_binary and "-L" not in argv
    assert Machine().qemu == "" and replace(MTE, qemu_min="").qemu_min == ""


def test_the_run_facts_name_the_qemu_a_pinned_profile_boots_on_without_fetching_it(
        tmp_path: Path, on_path) -> None:  # type: ignore[no-untyped-def]
    on_path("7.2.22")
    cache = tmp_path / "cache"
    assert described(Ops(), MTE, cache) == ("10.0 or newer from Debian's backports, fetched "
                                            "at the first boot (the host's is QEMU emulator "
                                            "version 7.2.22 (fake))")
    assert not (cache / "qemu").exists()
    found = qemu_for(Ops(), MTE, cache, lambda root: backports(tmp_path, "1:10.0.2+ds-2~bpo12+1"))
    assert described(Ops(), MTE, cache) == f"{found.version}, from Debian's backports " \
                                           f"({found.binary})"
    on_path("10.2.0")
    assert described(Ops(), MTE, cache) == "QEMU emulator version 10.2.0 (fake)"
