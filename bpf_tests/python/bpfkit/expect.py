"""Which declared upstream commits the kernel under test carries: read, never decided.

The lab decides on the host (harness/commits.py, from bpf_tests/commits.yaml, the
variant's reverts and backports, git evidence such as an ancestor or a stable backport,
or release numbers) and writes one file, named by the environment variable
BPFLAB_COMMITS:

    # comment lines (release, variant, how it was decided)
    <id> present|absent <why>

Tests declare the commit that brought the behaviour they check with
@introduced("<id>"); the `commits` fixture then says, per declared commit, whether the
kernel has it, and builds the failure message from the file's why.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Mapping

import pytest

ENV = "BPFLAB_COMMITS"
_ID = re.compile(r"[0-9a-fA-F]{7,40}")
HOW_TO_WRITE = (
    "the lab writes it for every kernel it boots (harness/commits.py) and ships it with "
    "the suites. By hand, in the project on the host: `.venv/bin/python -m "
    "harness.commits RELEASE > commits.txt` with the guest's `uname -r` as RELEASE "
    "(--help: --variant, --reverts, --backports, --git/--sha), then "
    "BPFLAB_COMMITS=/path/to/commits.txt in the guest; or write it yourself, one line "
    "'<id> present|absent <why>' per id in bpf_tests/commits.yaml")


@dataclass(frozen=True)
class Presence:
    """One line of the file."""

    id: str
    present: bool
    why: str


@dataclass(frozen=True)
class CommitsFile:
    path: str
    entries: tuple[Presence, ...]
    notes: tuple[str, ...] = ()  # its comment lines, without the '#'

    def find(self, commit_id: str) -> Presence | None:
        for entry in self.entries:
            if same_commit(entry.id, commit_id):
                return entry
        return None


def same_commit(a: str, b: str) -> bool:
    """Short and full ids match by prefix (at least 7 hex digits)."""
    a, b = a.lower(), b.lower()
    return min(len(a), len(b)) >= 7 and (a.startswith(b) or b.startswith(a))


def parse_commits(text: str, path: str) -> CommitsFile:
    """The file's lines; a malformed one is an error: a typo must not read as absent."""
    entries: list[Presence] = []
    notes: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("#"):
            notes.append(stripped[1:].strip())
            continue
        if not stripped:
            continue
        words = stripped.split(None, 2)
        if len(words) < 2 or not _ID.fullmatch(words[0]) or \
                words[1] not in ("present", "absent"):
            raise ValueError(f"{path}:{number}: expected '<id> present|absent <why>' "
                             f"(id of 7-40 hex digits), got {stripped!r}")
        entry = Presence(words[0].lower(), words[1] == "present",
                         words[2] if len(words) > 2 else "no reason given")
        if any(same_commit(e.id, entry.id) for e in entries):
            raise ValueError(f"{path}:{number}: {entry.id} is listed twice")
        entries.append(entry)
    return CommitsFile(path, tuple(entries), tuple(notes))


def commits_from_env(env: Mapping[str, str] | None = None) -> CommitsFile:
    env = os.environ if env is None else env
    path = env.get(ENV, "")
    if not path:
        raise pytest.UsageError(f"{ENV} is not set: it names the file saying which declared "
                                f"upstream commits the kernel under test carries; "
                                f"{HOW_TO_WRITE}")
    try:
        with open(path) as f:
            text = f.read()
        return parse_commits(text, path)
    except (OSError, ValueError) as exc:
        raise pytest.UsageError(f"{ENV}: {exc}") from exc


def missing(commits: CommitsFile, declared: list[str]) -> list[str]:
    """Declared ids the file does not list."""
    return [d for d in declared if commits.find(d) is None]


@dataclass(frozen=True)
class Expectation:
    """One declared commit, as the file says, for one kernel."""

    id: str
    presence: Presence
    release: str  # uname -r, to name the kernel in messages

    @property
    def present(self) -> bool:
        return self.presence.present

    def state(self) -> str:
        """'kernel 6.1.192 lacks 8766733641 (reverted by the variant uaf-inject)'."""
        return (f"kernel {self.release} {'has' if self.present else 'lacks'} {self.id} "
                f"({self.presence.why})")

    def why(self, observed: object, expected: object) -> str:
        return f"{self.state()}: expected {expected!r}, observed {observed!r}"

    def check(self, observed: object, new: object, old: object) -> None:
        """Assert the new behaviour on a kernel with the commit, the old one without."""
        expected = new if self.present else old
        assert observed == expected, self.why(observed, expected)

    def same(self, observed: object, expected: object) -> None:
        """Assert behaviour every kernel with (and after) the commit shares."""
        assert observed == expected, self.why(observed, expected)


def introduced(commit_id: str) -> pytest.MarkDecorator:
    """Declare the upstream commit that brought the checked behaviour (stackable); it
    must be in bpf_tests/commits.yaml, which says what it is and where it landed."""
    if not _ID.fullmatch(commit_id):
        raise ValueError(f"@introduced({commit_id!r}): expected a commit id (7-40 hex digits)")
    return pytest.mark.introduced(commit_id.lower())


class Declared:
    """The `commits` fixture: Expectations by id, only for commits the test declared."""

    def __init__(self, commits: CommitsFile, release: str, declared: list[str]) -> None:
        self._by_id: dict[str, Expectation] = {}
        for commit_id in declared:
            found = commits.find(commit_id)
            if found is None:
                raise pytest.UsageError(f"{ENV}={commits.path} does not list {commit_id}")
            self._by_id[commit_id] = Expectation(commit_id, found, release)

    def __getitem__(self, commit_id: str) -> Expectation:
        if commit_id not in self._by_id:
            raise KeyError(f"{commit_id} is not declared with @introduced on this test")
        return self._by_id[commit_id]

    def ids(self) -> list[str]:
        return list(self._by_id)
