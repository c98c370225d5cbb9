"""The QEMU a machine profile boots on.

The host's QEMU when it is new enough for the profile (`qemu_min` in
kernels/profiles.yaml), else a newer one from Debian's backports of the host's
release, unpacked under the shared cache (never installed: the host's QEMU stays what
every other profile uses) and named on that profile's command line only. Measured
why: bookworm's QEMU 7.2 keeps one allocation tag for many 16-byte granules in a
guest (tags stored with STG granule by granule read back as the last one written), so
hardware tag-based KASAN reports a false tag mismatch at the first slab allocation;
QEMU 10.0 from bookworm-backports keeps them per granule."""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from harness.build import exclusive
from harness.config import Profile
from harness.debsrc import Archive, PrivateApt, host_codename, host_sources
from harness.errors import LabError, UserError
from harness.ops import Ops

# The Debian package that ships each system emulator the arches name.
PACKAGES = {"qemu-system-aarch64": "qemu-system-arm", "qemu-system-x86_64": "qemu-system-x86"}
DATA_PACKAGE = "qemu-system-data"  # firmware and option ROMs, found with -L


@dataclass(frozen=True)
class Qemu:
    """A QEMU to run: the binary, where its ROMs are (None: its built-in path), and
    its version as it prints it."""

    binary: str
    datadir: Path | None = None
    version: str = ""


def version_of(text: str) -> tuple[int, ...]:
    """(7, 2, 22) from 'QEMU emulator version 7.2.22 (Debian ...)', '7.2' or a Debian
    version such as '1:10.0.2+ds-2~bpo12+1'; () when there is none."""
    text = text.split(":", 1)[1] if re.match(r"\d+:", text) else text
    m = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    return tuple(int(g) for g in m.groups(default="0")) if m else ()


def at_least(version: str, need: str) -> bool:
    have, want = version_of(version), version_of(need)
    return bool(have) and have >= want


def installed_version(ops: Ops, binary: str) -> str:
    """The first line of `binary --version`, or '' when it does not run."""
    try:
        done = ops.run([binary, "--version"], check=False, quiet=True)
    except LabError:  # not installed
        return ""
    lines = done.stdout.splitlines()
    return lines[0].strip() if done.returncode == 0 and lines else ""


def backports_archive(ops: Ops, root: Path) -> PrivateApt:
    """apt on a private state directory that sees only the backports of the host's
    Debian release, from the host's own Debian archive."""
    codename = host_codename()
    hosts = [s for s in host_sources() if codename in s.suites]
    if not hosts:
        raise LabError(f"no apt source for suite {codename!r} in /etc/apt: cannot find "
                       "Debian's archive to download a newer QEMU from")
    base = hosts[0]
    apt = PrivateApt(root, ops)
    apt.prepare(replace(base, suites=(f"{codename}-backports",)).deb822())
    return apt


def qemu_for(ops: Ops, profile: Profile, cache: Path,
             archive: Callable[[Path], Archive] | None = None) -> Qemu:
    """The QEMU that boots profile's guests: the host's if it is at least the
    profile's qemu_min, else the newest backport at least that (fetched once into
    cache/qemu, shared by every clone)."""
    binary = profile.arch.qemu_binary
    if not profile.qemu_min:
        return Qemu(binary)
    host = installed_version(ops, binary)
    if at_least(host, profile.qemu_min):
        return Qemu(binary, None, host)
    package = PACKAGES.get(binary)
    why = (f"profile {profile.name} needs QEMU {profile.qemu_min} or newer "
           f"(kernels/profiles.yaml: {profile.name}.qemu_min), and this host's "
           f"{binary} is {host or 'not installed'}")
    if package is None:
        raise UserError(f"{why}; the lab knows no Debian package for {binary}")
    root = cache / "qemu"
    with exclusive(root / ".lock", "the QEMU cache"):
        found = _unpacked(root, binary, profile.qemu_min)
        if found is not None:
            return found
        print(f"{why}: fetching a newer one from Debian's backports", flush=True)
        apt = (archive or (lambda r: backports_archive(ops, r)))(root / "apt")
        versions = [v for v in apt.versions(package) if at_least(v, profile.qemu_min)]
        if not versions:
            raise UserError(f"{why}, and Debian's backports have no {package} that new: "
                            f"install QEMU {profile.qemu_min} or newer as {binary}")
        version = max(versions, key=version_of)
        return _unpack(ops, apt, root, package, version, binary)


def described(ops: Ops, profile: Profile, cache: Path) -> str:
    """What the run's facts say of the QEMU a profile with a qemu_min boots on,
    without fetching anything."""
    host = installed_version(ops, profile.arch.qemu_binary)
    if at_least(host, profile.qemu_min):
        return host
    found = _unpacked(cache / "qemu", profile.arch.qemu_binary, profile.qemu_min)
    if found is not None:
        return f"{found.version}, from Debian's backports ({found.binary})"
    return (f"{profile.qemu_min} or newer from Debian's backports, fetched at the first "
            f"boot (the host's is {host or 'not installed'})")


def _unpacked(root: Path, binary: str, need: str) -> Qemu | None:
    """The newest QEMU already unpacked under root that is at least need."""
    best: tuple[tuple[int, ...], Path] | None = None
    for entry in root.glob("*/usr/bin/" + binary) if root.is_dir() else []:
        tree = entry.parent.parent.parent
        version = (tree / "VERSION").read_text().strip() if (tree / "VERSION").is_file() else ""
        if at_least(version, need) and (best is None or version_of(version) > best[0]):
            best = (version_of(version), tree)
    if best is None:
        return None
    tree = best[1]
    return Qemu(str(tree / "usr/bin" / binary), tree / "usr/share/qemu",
                (tree / "VERSION").read_text().strip())


def _unpack(ops: Ops, apt: Archive, root: Path, package: str, version: str,
            binary: str) -> Qemu:
    """package and its ROMs at version, unpacked whole into root/<package>_<version>
    or not at all; it must run before it is kept."""
    name = f"{package}_{version.replace(':', '%3a')}"
    tmp, final = root / f".{name}.tmp", root / name
    shutil.rmtree(tmp, ignore_errors=True)
    debs = tmp / "debs"
    data_versions = apt.versions(DATA_PACKAGE)
    data = version if version in data_versions else max(data_versions, key=version_of,
                                                          default=version)
    for pkg, ver in ((package, version), (DATA_PACKAGE, data)):
        deb = apt.download(pkg, ver, debs)
        ops.run(["dpkg-deb", "-x", str(deb), str(tmp)])
    shutil.rmtree(debs)
    printed = installed_version(ops, str(tmp / "usr/bin" / binary))
    if not printed:
        raise LabError(f"{package} {version} from Debian's backports does not run here "
                       f"({tmp / 'usr/bin' / binary} --version failed: a library missing?)")
    (tmp / "VERSION").write_text(printed + "\n")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    print(f"unpacked {printed} into {final}", flush=True)
    return Qemu(str(final / "usr/bin" / binary), final / "usr/share/qemu", printed)

