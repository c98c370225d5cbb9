"""Which commits a kernel carries, decided from its identity, never from the behaviour.

A kernel's identity is its release (uname -r) and, for git-tree kernels, an optional
list of commits the harness found to be ancestors (env BPFLAB_HAS_COMMITS names the
file). Tests declare the commit that brought the behaviour they check with
@introduced(...); the `commits` fixture then says, per declared commit, whether the
kernel under test should have it, and builds the failure message naming both.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import pytest

HAS_COMMITS_ENV = "BPFLAB_HAS_COMMITS"
# Commits a fault-injection variant undoes (space-separated ids): absent whatever the
# release or the ancestor list says, so the old behaviour is what is expected.
REVERTED_ENV = "BPFLAB_REVERTED_COMMITS"
# Commits a variant's patches bring (a backport under test, or the part of a commit a
# fault-injection patch gives an older kernel): present whatever the release says.
BACKPORTED_ENV = "BPFLAB_BACKPORTED_COMMITS"
_RELEASE = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?(?:-rc(\d+))?(.*)$")
_DEBIAN = re.compile(r"Debian (\d+)\.(\d+)\.(\d+)")

@dataclass(frozen=True, order=True)
class Version:
    major: int
    minor: int
    patch: int = 0
    rc: int | None = field(default=None, compare=False)
    release: str = field(default="", compare=False)

    @property
    def series(self) -> str:
        return f"{self.major}.{self.minor}"


def parse_release(release: str, uname_version: str = "") -> Version:
    """uname -r ("6.1.192", "7.3.0-rc7+", "6.1.0-fake") as a Version.

    Debian's own packages say 6.1.0-NN-amd64 in the release and the real sublevel in
    uname -v ("... Debian 6.1.192-1 ..."): that sublevel wins when the series match.
    """
    m = _RELEASE.match(release.strip())
    if not m:
        raise ValueError(f"cannot parse kernel release {release!r}")
    major, minor, patch = int(m[1]), int(m[2]), int(m[3] or 0)
    rc = int(m[4]) if m[4] else None
    deb = _DEBIAN.search(uname_version)
    if deb and (int(deb[1]), int(deb[2])) == (major, minor):
        patch = int(deb[3])
    return Version(major, minor, patch, rc, release.strip())


def parse_series(text: str) -> tuple[int, int, int]:
    parts = [int(p) for p in text.split(".")]
    if not 2 <= len(parts) <= 3:
        raise ValueError(f"bad release {text!r}: want X.Y or X.Y.Z")
    return (parts[0], parts[1], parts[2] if len(parts) == 3 else 0)


@dataclass(frozen=True)
class Commit:
    """An upstream commit: first mainline release and stable backports (series -> release)."""

    id: str
    mainline: str
    stable: tuple[tuple[str, str], ...] = ()

    def describe(self) -> str:
        text = f"{self.id} (mainline v{self.mainline}"
        for series, release in self.stable:
            text += f", {series}.y from {release}"
        return text + ")"


def in_release(commit: Commit, kernel: Version) -> bool:
    """Does a kernel of this version carry the commit, by release numbers alone?

    An -rc of X.Y counts as X.Y: commits are assumed merged in the merge window, so
    for fixes merged late in an rc cycle the harness should pass BPFLAB_HAS_COMMITS.
    """
    mainline = parse_series(commit.mainline)
    if (kernel.major, kernel.minor) >= mainline[:2]:
        return True
    for series, release in commit.stable:
        if series == kernel.series:
            return (kernel.major, kernel.minor, kernel.patch) >= parse_series(release)
    return False


def same_commit(a: str, b: str) -> bool:
    """Short and full ids match by prefix (at least 7 hex digits)."""
    a, b = a.lower(), b.lower()
    return min(len(a), len(b)) >= 7 and (a.startswith(b) or b.startswith(a))


def read_ancestors(path: str | os.PathLike[str]) -> frozenset[str]:
    """One commit id per line; '#' starts a comment; blank lines ignored."""
    ids = set()
    for line in Path(path).read_text().splitlines():
        word = line.split("#", 1)[0].strip()
        if word:
            if not re.fullmatch(r"[0-9a-fA-F]{7,40}", word):
                raise ValueError(f"{path}: {word!r} is not a commit id")
            ids.add(word.lower())
    return frozenset(ids)


@dataclass(frozen=True)
class Kernel:
    """The kernel under test: its version and, if known, its ancestor commits."""

    version: Version
    ancestors: frozenset[str] | None = None
    reverted: frozenset[str] = frozenset()
    backported: frozenset[str] = frozenset()

    def has(self, commit: Commit) -> bool:
        if any(same_commit(commit.id, r) for r in self.reverted):
            return False
        if any(same_commit(commit.id, b) for b in self.backported):
            return True
        if self.ancestors is not None:
            return any(same_commit(commit.id, a) for a in self.ancestors)
        return in_release(commit, self.version)

    def source(self) -> str:
        if self.ancestors is not None:
            text = f"{HAS_COMMITS_ENV} list ({len(self.ancestors)} commits)"
        else:
            text = f"release {self.version.release}"
        if self.reverted:
            text += f", reverted by the variant: {' '.join(sorted(self.reverted))}"
        if self.backported:
            text += f", backported by the variant: {' '.join(sorted(self.backported))}"
        return text


def kernel_under_test(env: Mapping[str, str] | None = None) -> Kernel:
    env = os.environ if env is None else env
    uts = os.uname()
    version = parse_release(uts.release, uts.version)
    path = env.get(HAS_COMMITS_ENV)
    reverted = parse_ids(REVERTED_ENV, env.get(REVERTED_ENV, ""))
    backported = parse_ids(BACKPORTED_ENV, env.get(BACKPORTED_ENV, ""))
    both = [r for r in reverted if any(same_commit(r, b) for b in backported)]
    if both:
        raise ValueError(f"{REVERTED_ENV} and {BACKPORTED_ENV} both name {both[0]}")
    return Kernel(version, read_ancestors(path) if path else None, reverted, backported)


def parse_ids(env_name: str, text: str) -> frozenset[str]:
    """A variable's space-separated commit ids."""
    ids = text.split()
    for word in ids:
        if not re.fullmatch(r"[0-9a-fA-F]{7,40}", word):
            raise ValueError(f"{env_name}: {word!r} is not a commit id")
    return frozenset(w.lower() for w in ids)


@dataclass(frozen=True)
class Expectation:
    """One declared commit, judged for one kernel."""

    commit: Commit
    kernel: Kernel

    @property
    def present(self) -> bool:
        return self.kernel.has(self.commit)

    def why(self, observed: object, expected: object) -> str:
        state = "has" if self.present else "lacks"
        return (f"kernel {self.kernel.version.release} {state} {self.commit.describe()} "
                f"[by {self.kernel.source()}]: expected {expected!r}, observed {observed!r}")

    def check(self, observed: object, new: object, old: object) -> None:
        """Assert the new behaviour on a kernel with the commit, the old one without."""
        expected = new if self.present else old
        assert observed == expected, self.why(observed, expected)

    def same(self, observed: object, expected: object) -> None:
        """Assert behaviour every kernel with (and after) the commit shares."""
        assert observed == expected, self.why(observed, expected)


def introduced(commit_id: str, mainline: str,
               stable: Mapping[str, str] | None = None) -> pytest.MarkDecorator:
    """Declare the commit that brought the checked behaviour (stackable)."""
    commit = Commit(commit_id, mainline, tuple(sorted((stable or {}).items())))
    return pytest.mark.introduced(commit)


class Declared:
    """The `commits` fixture: Expectations by id, only for commits the test declared."""

    def __init__(self, kernel: Kernel, commits: list[Commit]) -> None:
        self._by_id = {c.id: Expectation(c, kernel) for c in commits}

    def __getitem__(self, commit_id: str) -> Expectation:
        if commit_id not in self._by_id:
            raise KeyError(f"{commit_id} is not declared with @introduced on this test")
        return self._by_id[commit_id]

    def ids(self) -> list[str]:
        return list(self._by_id)
