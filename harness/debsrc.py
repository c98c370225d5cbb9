"""Kernel sources from Debian's archive, fetched with a private apt setup derived
from the host's own sources and imported into a git repository, one commit per release."""

from __future__ import annotations

import gzip
import re
import shutil
import tarfile
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Protocol

from harness.errors import LabError, UserError
from harness.ops import Ops

EXTRA_SUITES = ("trixie", "sid", "experimental")
DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


@dataclass(frozen=True)
class AptSource:
    uri: str
    suites: tuple[str, ...]
    components: tuple[str, ...]
    signed_by: str

    def deb822(self) -> str:
        """This source as a paragraph of a .sources file."""
        return (f"Types: deb\nURIs: {self.uri}\nSuites: {' '.join(self.suites)}\n"
                f"Components: {' '.join(self.components)}\nSigned-By: {self.signed_by}\n")


def _deb822_paragraphs(text: str) -> list[dict[str, str]]:
    paras: list[dict[str, str]] = []
    current: dict[str, str] = {}
    key = ""
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        if not line.strip():
            if current:
                paras.append(current)
            current = {}
            continue
        if line[0] in " \t" and key:
            current[key] += " " + line.strip()
            continue
        key, _, value = line.partition(":")
        current[key.strip().lower()] = value.strip()
    if current:
        paras.append(current)
    return paras


def parse_sources(text: str, one_line: bool) -> list[AptSource]:
    """Binary 'deb' entries of a sources.list (one-line) or a .sources file (deb822)."""
    found: list[AptSource] = []
    if one_line:
        for line in text.splitlines():
            words = re.sub(r"\[[^]]*\]", "", line.split("#")[0]).split()
            if len(words) >= 3 and words[0] == "deb":
                signed = re.search(r"signed-by=(\S+?)[\s\]]", line)
                found.append(AptSource(words[1], (words[2],), tuple(words[3:]),
                                       signed.group(1) if signed else DEBIAN_KEYRING))
        return found
    for para in _deb822_paragraphs(text):
        if "deb" not in para.get("types", "").split() or para.get("enabled") == "no":
            continue
        for uri in para.get("uris", "").split():
            found.append(AptSource(uri, tuple(para.get("suites", "").split()),
                                   tuple(para.get("components", "main").split()),
                                   para.get("signed-by", DEBIAN_KEYRING)))
    return found


def host_sources(etc: Path = Path("/etc/apt")) -> list[AptSource]:
    entries: list[AptSource] = []
    main = etc / "sources.list"
    if main.exists():
        entries += parse_sources(main.read_text(), one_line=True)
    parts = etc / "sources.list.d"
    for path in sorted(parts.glob("*.list")) if parts.is_dir() else []:
        entries += parse_sources(path.read_text(), one_line=True)
    for path in sorted(parts.glob("*.sources")) if parts.is_dir() else []:
        entries += parse_sources(path.read_text(), one_line=False)
    return entries


def host_codename(os_release: Path = Path("/etc/os-release")) -> str:
    for line in os_release.read_text().splitlines():
        if line.startswith("VERSION_CODENAME="):
            return line.split("=", 1)[1].strip().strip('"')
    raise LabError(f"{os_release}: no VERSION_CODENAME: cannot derive Debian suites")


def private_sources(host: list[AptSource], codename: str) -> str:
    """deb822 text: the host's Debian entries plus the newer suites from its main archive."""
    debian = [s for s in host if any(x.startswith(codename) for x in s.suites)]
    archive = [s for s in debian if codename in s.suites]
    if not archive:
        raise LabError(f"no apt source for suite {codename!r} in /etc/apt: cannot find "
                       "Debian's archive to download kernel sources from")
    base = archive[0]
    entries = debian + [AptSource(base.uri, EXTRA_SUITES, base.components, base.signed_by)]
    return "\n".join(s.deb822() for s in entries)


class Archive(Protocol):
    """Where .debs come from: the private apt setup, or a fake in tests."""

    def versions(self, package: str) -> list[str]: ...

    def download(self, package: str, version: str, dest: Path) -> Path: ...


@dataclass
class PrivateApt:
    """apt-get and apt-cache on a private state directory: the host's apt is untouched."""

    root: Path
    ops: Ops
    architectures: tuple[str, ...] = ("amd64",)

    def _options(self) -> list[str]:
        r = self.root
        return ["-o", f"Dir::Etc::SourceList={r}/sources.list",
                "-o", f"Dir::Etc::SourceParts={r}/sources.list.d",
                "-o", f"Dir::Etc::Preferences={r}/preferences",
                "-o", f"Dir::Etc::PreferencesParts={r}/preferences.d",
                "-o", f"Dir::State={r}/state", "-o", f"Dir::State::status={r}/state/status",
                "-o", f"Dir::Cache={r}/cache",
                "-o", f"APT::Architectures={','.join(self.architectures)}",
                "-o", "Debug::NoLocking=1"]

    def prepare(self, sources_text: str) -> None:
        for sub in ("sources.list.d", "preferences.d", "state/lists/partial",
                    "cache/archives/partial"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "sources.list").write_text("")
        (self.root / "state/status").touch()
        target = self.root / "sources.list.d/lab.sources"
        if not target.exists() or target.read_text() != sources_text:
            target.write_text(sources_text)
            shutil.rmtree(self.root / "state/lists", ignore_errors=True)
            (self.root / "state/lists/partial").mkdir(parents=True)
        if not any((self.root / "state/lists").glob("*Packages*")):
            self.ops.run(["apt-get", *self._options(), "update"])

    def versions(self, package: str) -> list[str]:
        out = self.ops.run(["apt-cache", *self._options(), "madison", package], quiet=True)
        return [line.split("|")[1].strip() for line in out.stdout.splitlines()
                if line.count("|") >= 2 and line.split("|")[0].strip() == package]

    def download(self, package: str, version: str, dest: Path) -> Path:
        dest.mkdir(parents=True, exist_ok=True)
        found = sorted(dest.glob(f"{package}_{version.replace(':', '%3a')}_*.deb"))
        if found:
            return found[0]
        self.ops.run(["apt-get", *self._options(), "download", f"{package}={version}"],
                     cwd=dest)
        found = sorted(dest.glob(f"{package}_{version.replace(':', '%3a')}_*.deb"))
        if not found:
            raise LabError(f"apt-get download {package}={version} left no .deb in {dest}")
        return found[0]


def package_for(version: str) -> str:
    """'6.1.192' -> 'linux-source-6.1'; '7.2.3' -> 'linux-source-7.2'."""
    m = re.fullmatch(r"(\d+)\.(\d+)(\.\d+)?(-\S+)?", version)
    if not m:
        raise UserError(f"{version!r}: expected a kernel version like 6.1.192 or 6.1.192-1")
    return f"linux-source-{m.group(1)}.{m.group(2)}"


def upstream_of(debian_version: str) -> str:
    """'6.1.192-2' -> '6.1.192'; '7.2~rc3-1~exp1' -> '7.2-rc3'."""
    up = debian_version.split(":")[-1].rsplit("-", 1)[0]
    return up.replace("~", "-")


def tag_for(wanted: str) -> str:
    """The tag a release the lab asked for gets: '6.1.192' and '6.1.192-3' -> v6.1.192,
    '7.3-rc7' -> v7.3-rc7 (an upstream -rc is part of the version, not a Debian
    revision)."""
    if re.fullmatch(r".*-rc\d+", wanted):
        return f"v{wanted}"
    return f"v{wanted.split('-')[0]}"


def pick_version(wanted: str, available: list[str]) -> str:
    """The newest Debian revision of an upstream version (or the exact one asked for)."""
    if wanted in available:
        return wanted
    matches = [v for v in available if upstream_of(v) == wanted]
    if not matches:
        shown = ", ".join(sorted({upstream_of(v) for v in available})) or "none"
        raise UserError(f"kernel version {wanted} is not in Debian's archive "
                        f"(available: {shown})")
    return max(matches, key=_debian_revision_key)


def _debian_revision_key(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", version.rsplit("-", 1)[-1]))


def series_of_version(upstream: str) -> str:
    """'6.1.192' -> '6.1', '7.3-rc7' -> '7.3'."""
    key = version_key(upstream)
    return f"{key[0]}.{key[1]}"


def version_key(upstream: str) -> tuple[int, int, int, int]:
    """Sort key for upstream kernel versions; -rcN sorts before the release."""
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?(?:-rc(\d+))?", upstream)
    if not m:
        raise UserError(f"{upstream!r}: not a kernel version")
    rc = int(m.group(4)) if m.group(4) else 10_000
    return (int(m.group(1)), int(m.group(2)), rc, int(m.group(3) or 0))


def changelog_date(deb_tree: Path) -> str:
    """RFC 2822 date of the package's newest changelog entry: a deterministic commit date."""
    for log in sorted(deb_tree.glob("usr/share/doc/linux-source-*/changelog.Debian.gz")):
        with gzip.open(log, "rt", errors="replace") as fh:
            for line in fh:
                if line.startswith(" -- ") and "  " in line[4:]:
                    stamp = line.rsplit("  ", 1)[1].strip()
                    return parsedate_to_datetime(stamp).isoformat()
    return "2000-01-01T00:00:00+00:00"


def kept_changelog(repo: Path, debian_version: str) -> Path:
    """Where an imported release's changelog.Debian.gz is kept, next to the repository:
    it lists the subjects of every upstream stable update the package took, which the
    tree alone (one commit per release) cannot tell (harness/presence.py reads it)."""
    return repo.parent / "debian-changelogs" / f"{debian_version.replace(':', '%3a')}.gz"


def keep_changelog(deb_tree: Path, dest: Path) -> None:
    """Copy the unpacked package's changelog to dest (written whole or not at all)."""
    for log in sorted(deb_tree.glob("usr/share/doc/linux-source-*/changelog.Debian.gz")):
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(dest.name + ".part")
        shutil.copyfile(log, part)
        part.replace(dest)
        return


def source_tarball(deb_tree: Path) -> Path:
    found = sorted(deb_tree.glob("usr/src/linux-source-*.tar.*"))
    if not found:
        raise LabError(f"{deb_tree}: the package holds no usr/src/linux-source-*.tar.*")
    return found[0]


def extract_tarball(tarball: Path, dest: Path) -> None:
    """Unpack a linux-source tarball so that dest holds the tree itself."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    with tarfile.open(tarball) as tar:
        tar.extractall(dest, filter="tar")
    tops = list(dest.iterdir())
    if len(tops) == 1 and tops[0].is_dir():
        inner = tops[0]
        for child in inner.iterdir():
            child.rename(dest / child.name)
        inner.rmdir()


@dataclass(frozen=True)
class Release:
    upstream: str
    debian_version: str
    tree: str
    date: str


def _git(ops: Ops, repo: Path, *args: str, env: dict[str, str] | None = None,
         quiet: bool = True) -> str:
    return ops.run(["git", "--git-dir", str(repo), *args], env=env, quiet=quiet).stdout.strip()


def _imported(ops: Ops, repo: Path) -> dict[str, Release]:
    """Releases already stored, by the version the lab asked for."""
    out = _git(ops, repo, "for-each-ref",
               "--format=%(refname:lstrip=3) %(objectname) %(contents:subject)",
               "refs/bpflab/releases/")
    found = {}
    for line in out.splitlines():
        fields = line.split()
        if len(fields) != 5:
            continue
        wanted, sha, upstream, debver, date = fields
        tree = _git(ops, repo, "rev-parse", f"{sha}^{{tree}}")
        found[wanted] = Release(upstream, debver, tree, date)
    return found


def imported_versions(ops: Ops, repo: Path) -> set[str]:
    """The releases a Debian repository already holds; reads only (empty when the
    repository does not exist yet)."""
    if not (repo / "HEAD").exists():
        return set()
    return set(_imported(ops, repo))


def import_release(ops: Ops, repo: Path, apt: Archive, wanted: str, scratch: Path,
                   downloads: Path) -> Release:
    """Download one linux-source package and store its tree in the repository."""
    package = package_for(wanted)
    debver = pick_version(wanted, apt.versions(package))
    deb = apt.download(package, debver, downloads)
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    ops.run(["dpkg-deb", "-x", str(deb), str(scratch / "deb")])
    print(f"unpacking {source_tarball(scratch / 'deb').name} ({debver})", flush=True)
    extract_tarball(source_tarball(scratch / "deb"), scratch / "tree")
    env = {"GIT_INDEX_FILE": str(scratch / "index")}
    # -f: Debian's top-level .gitignore ignores everything at the top level.
    ops.run(["git", "--git-dir", str(repo), "--work-tree", str(scratch / "tree"),
             "add", "-A", "-f", "."], env=env, quiet=True)
    tree = _git(ops, repo, "write-tree", env=env)
    date = changelog_date(scratch / "deb")
    keep_changelog(scratch / "deb", kept_changelog(repo, debver))
    upstream = upstream_of(debver)
    commit = _commit(ops, repo, tree, None, f"{upstream} {debver} {date}", date)
    _git(ops, repo, "update-ref", f"refs/bpflab/releases/{wanted}", commit)
    shutil.rmtree(scratch, ignore_errors=True)
    return Release(upstream, debver, tree, date)


def _commit(ops: Ops, repo: Path, tree: str, parent: str | None, message: str,
            date: str) -> str:
    who = {"GIT_AUTHOR_NAME": "bpflab import", "GIT_AUTHOR_EMAIL": "bpflab@localhost",
           "GIT_COMMITTER_NAME": "bpflab import", "GIT_COMMITTER_EMAIL": "bpflab@localhost",
           "GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date}
    args = ["commit-tree", tree, "-m", message] + (["-p", parent] if parent else [])
    return _git(ops, repo, *args, env=who)


def _private_apt(ops: Ops, workdir: Path) -> PrivateApt:
    apt = PrivateApt(workdir / "apt", ops)
    apt.prepare(private_sources(host_sources(), host_codename()))
    return apt


def ensure_debian_repo(ops: Ops, workdir: Path, versions: tuple[str, ...],
                       archive: Archive | None = None) -> Path:
    """A bare repository whose branch 'debian' holds every imported release in
    version order, each tagged v<version>; missing releases are fetched first."""
    repo = workdir / "src" / "debian.git"
    if not (repo / "HEAD").exists():
        repo.mkdir(parents=True, exist_ok=True)
        ops.run(["git", "init", "-q", "--bare", str(repo)])
    have = _imported(ops, repo)
    missing = [v for v in versions if v not in have]
    if missing:
        apt = archive or _private_apt(ops, workdir)
        for wanted in missing:
            have[wanted] = import_release(ops, repo, apt, wanted, workdir / "src" / "scratch",
                                          workdir / "downloads")
    parent = None
    for release in sorted(have.values(), key=lambda r: version_key(r.upstream)):
        parent = _commit(ops, repo, release.tree, parent,
                         f"Linux {release.upstream} (Debian linux-source "
                         f"{release.debian_version})", release.date)
        _git(ops, repo, "tag", "-f", f"v{release.upstream}", parent)
    if parent:
        _git(ops, repo, "update-ref", "refs/heads/debian", parent)
        _git(ops, repo, "symbolic-ref", "HEAD", "refs/heads/debian")
    return repo
