"""Kernel history: resolve a range, a path filter or a commit list into commits, and
keep a checkout the lab owns (the user's working copy is never touched)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from harness.config import Lab, Source
from harness.errors import ConfigError
from harness.model import Commit
from harness.ops import Ops


def git(ops: Ops, repo: Path, *args: str, check: bool = True) -> str:
    done = ops.run(["git", "-C", str(repo), *args], check=check, quiet=True)
    return done.stdout.strip() if done.returncode == 0 else ""


def _verify(ops: Ops, repo: Path, rev: str, file: str, key: str) -> str:
    sha = git(ops, repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}", check=False)
    if not sha:
        raise ConfigError(file, key, f"a revision of {repo}, but {rev!r} is not one")
    return sha


def _range_ends(spec: str) -> list[str]:
    for sep in ("...", ".."):
        if sep in spec:
            return [end for end in spec.split(sep) if end]
    return [spec]


def describe(ops: Ops, repo: Path, sha: str) -> Commit:
    """The commit at sha, named by a tag pointing at it, else its short sha."""
    fields = git(ops, repo, "log", "-1", "--format=%T%x00%s", sha).split("\0", 1)
    tags = git(ops, repo, "tag", "--points-at", sha).split()
    name = sorted(tags)[0] if tags else sha[:12]
    return Commit(sha, fields[0], name, fields[1] if len(fields) > 1 else "",
                  series_of(makefile_version(ops, repo, sha)))


def series_of(numbers: dict[str, str]) -> str:
    """"6.1" from a top Makefile's VERSION and PATCHLEVEL; "" for no kernel."""
    version, patchlevel = numbers.get("VERSION", ""), numbers.get("PATCHLEVEL", "")
    return f"{version}.{patchlevel}" if version.isdigit() and patchlevel.isdigit() else ""


def resolve(ops: Ops, repo: Path, source: Source, file: str) -> list[Commit]:
    """Commits to test, oldest first: the explicit list, else the range (with paths)."""
    shas: list[str] = []
    if source.commits:
        shas = [_verify(ops, repo, rev, file, f"source.commits[{i}]")
                for i, rev in enumerate(source.commits)]
    elif source.range:
        for end in _range_ends(source.range.lstrip("^")):
            _verify(ops, repo, end, file, "source.range")
        out = git(ops, repo, "rev-list", "--reverse", "--topo-order", source.range,
                  "--", *source.paths)
        shas = out.split()
    elif source.debian_versions:
        from harness.debsrc import tag_for
        shas = [_verify(ops, repo, tag_for(v), file, f"source.debian.versions[{i}]")
                for i, v in enumerate(source.debian_versions)]
    else:
        raise ConfigError(file, "source", "source.range or source.commits for a git tree")
    if not shas:
        paths = f" touching {', '.join(source.paths)}" if source.paths else ""
        raise ConfigError(file, "source.range", f"commits in {source.range}{paths}: found none")
    seen: set[str] = set()
    unique = [s for s in shas if not (s in seen or seen.add(s))]  # type: ignore[func-returns-value]
    return [describe(ops, repo, sha) for sha in unique]


_MAKEFILE_VERSION = re.compile(r"^(VERSION|PATCHLEVEL|SUBLEVEL|EXTRAVERSION) *= *(\S*)", re.M)


def makefile_version(ops: Ops, repo: Path, sha: str) -> dict[str, str]:
    """VERSION, PATCHLEVEL, SUBLEVEL, EXTRAVERSION of the commit's top Makefile (those
    it sets; none for a tree that is no kernel)."""
    text = git(ops, repo, "show", f"{sha}:Makefile", check=False)[:4000]
    return dict(_MAKEFILE_VERSION.findall(text))


def _objects_dir(repo: Path) -> Path:
    """A repository's object store: repo/objects when bare, else repo/.git/objects."""
    return (repo / "objects") if (repo / "HEAD").exists() and not (repo / ".git").exists() \
        else (repo / ".git" / "objects")


def source_repo(ops: Ops, lab: Lab) -> Path:
    """The repository commits are read from (Debian's is imported on first use)."""
    if lab.source.git:
        return lab.source.git
    from harness.debsrc import ensure_debian_repo
    return ensure_debian_repo(ops, lab.workdir, lab.source.debian_versions)


@dataclass
class Checkout:
    """The working tree the lab builds from: one per workdir, shared by every source
    (the default lab's Debian releases, a followed bpf-next, a stable tree), so the
    kernel sources of any of them sit at the same path and a series' build directory
    stays incremental from one source's commit to another's. It borrows the objects of
    each source it is used with (git alternates) instead of copying them."""

    path: Path
    origin: Path
    ops: Ops

    def ensure(self) -> None:
        """Cloned (from the first origin), and able to read the origin's objects."""
        if not (self.path / ".git").exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.ops.run(["git", "clone", "-q", "--shared", "--no-checkout",
                          str(self.origin), str(self.path)])
        alternates = self.path / ".git" / "objects" / "info" / "alternates"
        listed = alternates.read_text().split() if alternates.exists() else []
        objects = str(_objects_dir(self.origin))
        kept = [a for a in listed if Path(a).is_dir()]  # a source that is gone
        if objects not in kept:
            kept.append(objects)
        if kept != listed:
            alternates.write_text("".join(f"{a}\n" for a in kept))

    def switch(self, sha: str) -> None:
        """Check out sha, dropping any patch applied before. Files that do not
        change keep their mtimes, so an out-of-tree build stays incremental."""
        self.ensure()
        self.ops.run(["git", "-C", str(self.path), "checkout", "-q", "--force", "--detach", sha])
        self.ops.run(["git", "-C", str(self.path), "clean", "-q", "-f", "-d", "-x"])

    def apply(self, patch: Path) -> str | None:
        """Apply a patch; the reason it does not apply, or None."""
        done = self.ops.run(["git", "-C", str(self.path), "apply", str(patch)], check=False)
        if done.returncode == 0:
            return None
        return f"{patch.name} does not apply: " + " | ".join(done.stdout.strip().splitlines()[:3])
