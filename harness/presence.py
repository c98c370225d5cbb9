"""Whether a kernel carries an upstream commit, with the evidence: on a git tree the
commit itself as an ancestor, or a stable backport recognised by its trailer or its
patch-id; for a Debian release, what the package's own changelog lists. Answers are
values: nothing here prints, and nothing decides precedence (harness/commits.py does)."""

from __future__ import annotations

import gzip
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Protocol, Sequence

from harness.debsrc import kept_changelog
from harness.errors import UserError
from harness.ops import Ops

# The stable trailers (Documentation/process/stable-kernel-rules.rst), and git cherry-pick -x.
TRAILERS = (re.compile(r"^commit ([0-9a-f]{7,40}) upstream\.?[ \t]*$", re.M | re.I),
            re.compile(r"^\[ *upstream commit ([0-9a-f]{7,40}) *\][ \t]*$", re.M | re.I),
            re.compile(r"^\(cherry picked from commit ([0-9a-f]{7,40})\)[ \t]*$", re.M))
REVERTS = re.compile(r"This reverts commit ([0-9a-f]{7,40})")
# Both sides of a patch-id comparison go through the same two git commands; the shell
# only joins them with a pipe, the repository and commit are its positional arguments.
PATCH_ID = ('git -C "$1" diff-tree --root --patch --no-color --no-ext-diff --no-textconv "$2"'
            ' | git patch-id --stable')
# The subject harness/debsrc.py gives an imported release's commit.
IMPORTED = re.compile(r"\(Debian linux-source (\S+)\)$")
_ENTRY = re.compile(r"^\S+ \(([^)\s]+)\) ")
_STABLE_URL = re.compile(r"^\s+https?://\S+/ChangeLog-(\d+\.\d+\.\d+)\s*$")
_ITEM = re.compile(r"^( {2}\*| {4,}[-+*]) (.*)$")
_TAGS = re.compile(r"^(\[[^\]]+\] *)+")
_NOTES = re.compile(r"( *\((CVE-\d+-\d+|Closes: [^)]*)(, CVE-\d+-\d+)*\))+$")


@dataclass(frozen=True)
class Evidence:
    """One commit's answer and what it rests on, one line for people."""

    id: str  # as the table names it
    present: bool
    kind: str  # ancestor, backport, patch-id, reverted, unconfirmed, absent, unknown, changelog
    detail: str
    sha: str = ""  # the commit that brings it into the tree (itself, or its backport)


class Named(Protocol):
    """An upstream commit as the table gives it (harness.commits.Upstream)."""

    @property
    def id(self) -> str: ...

    @property
    def subject(self) -> str: ...


def same_commit(a: str, b: str) -> bool:
    """Short and full ids match by prefix (at least 7 hex digits)."""
    a, b = a.lower(), b.lower()
    return min(len(a), len(b)) >= 7 and (a.startswith(b) or b.startswith(a))


@dataclass(frozen=True)
class Found:
    """A commit reachable from the commit under test that mentions a wanted subject."""

    sha: str
    subject: str
    message: str


def _git(ops: Ops, repo: Path, *args: str) -> str:
    done = ops.run(["git", "-C", str(repo), *args], check=False, quiet=True)
    return done.stdout.strip() if done.returncode == 0 else ""


def in_git(ops: Ops, repo: Path, sha: str,
           commits: Sequence[Named]) -> tuple[Evidence, ...] | None:
    """Per commit, in order: is it in the history of sha, and on what evidence. None
    when the tree knows none of them and records no backport of them on any branch or
    tag either (a tree without such history, like the lab's imported releases): then
    release numbers decide. A tree that records backports is judged by its history,
    whatever a release's number says."""
    head = _git(ops, repo, "rev-parse", "--verify", "--quiet", f"{sha}^{{commit}}")
    if not head:
        raise UserError(f"{repo}: {sha!r} is not a commit of this tree")
    sha = head
    known = {c.id: _git(ops, repo, "rev-parse", "--verify", "--quiet", f"{c.id}^{{commit}}")
             for c in commits}
    ancestor = {c.id for c in commits if known[c.id] and ops.run(
        ["git", "-C", str(repo), "merge-base", "--is-ancestor", known[c.id], sha],
        check=False, quiet=True).returncode == 0}
    rest = [c for c in commits if c.id not in ancestor]
    # A backport is newer than where sha's history left the upstream commit's: walk
    # only that part, when every upstream commit left to find is in the tree.
    bases = [_git(ops, repo, "merge-base", known[c.id], sha) if known[c.id] else ""
             for c in rest]
    bases = bases if all(bases) else []
    found = _by_subject(ops, repo, sha, [c.subject for c in rest], bases) if rest else ()
    if not any(known.values()) and not found and not _records_backports(ops, repo, commits):
        return None
    walked = _walked(sha, bases)
    shallow = _git(ops, repo, "rev-parse", "--is-shallow-repository") == "true"
    return tuple(
        Evidence(c.id, True, "ancestor", f"ancestor {known[c.id][:12]} {c.subject}",
                 known[c.id])
        if c.id in ancestor else _backport(ops, repo, c, known[c.id], found, walked, shallow)
        for c in commits)


def _records_backports(ops: Ops, repo: Path, commits: Sequence[Named]) -> bool:
    """Whether a commit on any ref of the tree is a stable backport of one of commits
    (its trailer names it)."""
    found = _by_subject(ops, repo, "--all", [c.subject for c in commits], [])
    return any(trailer(f.message, c.id) for f in found for c in commits)


def _walked(sha: str, bases: Sequence[str]) -> str:
    """The commits searched, in git's notation."""
    distinct = sorted(set(bases))
    if len(distinct) == 1:
        return f"{distinct[0][:12]}..{sha[:12]}"
    return " ".join([sha[:12], *(f"^{b[:12]}" for b in distinct)]) if distinct \
        else f"the history of {sha[:12]}"


def _by_subject(ops: Ops, repo: Path, sha: str, subjects: Sequence[str],
                bases: Sequence[str]) -> tuple[Found, ...]:
    """Commits from sha back (not below bases) whose message holds one of the subjects:
    the backports and their reverts, newest first. One walk for all of them."""
    argv = ["log", "--no-merges", "--format=%x01%H%x00%s%x00%B", "--fixed-strings",
            *(f"--grep={s}" for s in dict.fromkeys(subjects)), sha]
    out = _git(ops, repo, *argv, *(["--not", *bases] if bases else []), "--")
    found = []
    for record in out.split("\x01")[1:]:
        fields = record.split("\x00", 2)
        if len(fields) == 3:
            found.append(Found(fields[0].strip(), fields[1].strip(), fields[2]))
    return tuple(found)


def trailer(message: str, upstream: str) -> str:
    """The stable trailer of a backport's message naming upstream, as written, or ''."""
    for pattern in TRAILERS:
        for m in pattern.finditer(message):
            if same_commit(m[1], upstream):
                return m[0].strip()
    return ""


def _backport(ops: Ops, repo: Path, commit: Named, full: str, found: Sequence[Found],
              walked: str, shallow: bool) -> Evidence:
    same = [f for f in found if f.subject == commit.subject]
    confirmed = [(f, "backport", f"backport {f.sha[:12]} {f.subject} ({t})")
                 for f in same if (t := trailer(f.message, commit.id))]
    if not confirmed and full and same:
        upstream_pid = _patch_id(ops, repo, full)
        confirmed = [(f, "patch-id", f"backport {f.sha[:12]} by patch-id (as {full[:12]})")
                     for f in same if upstream_pid and _patch_id(ops, repo, f.sha) == upstream_pid]
    for f, kind, text in confirmed:
        if not _reverted_by(f, found):
            return Evidence(commit.id, True, kind, text, f.sha)
    if confirmed:
        f, _, text = confirmed[0]
        revert = _reverted_by(f, found)
        assert revert is not None
        return Evidence(commit.id, False, "reverted",
                        f"{text}, reverted by {revert.sha[:12]} {revert.subject}")
    where = "not an ancestor of the commit under test" if full else "not in this tree"
    if same:
        shas = ", ".join(f.sha[:12] for f in same) + (" has" if len(same) == 1 else " have")
        how = "nor the same patch-id" if full else f"and no patch-id to compare ({where})"
        return Evidence(commit.id, False, "unconfirmed",
                        f"{shas} the subject but no trailer naming {commit.id}, {how}")
    looked = f"no commit in {walked} has the subject \"{commit.subject}\""
    if shallow and not full:  # it may be below the cut: no answer
        return Evidence(commit.id, False, "unknown", f"not in this shallow clone, and {looked}")
    return Evidence(commit.id, False, "absent", f"{where}, and {looked}")


def _reverted_by(commit: Found, found: Sequence[Found]) -> Found | None:
    """The revert of commit among found that is not itself reverted, if any."""
    for f in found:
        names = any(same_commit(m[1], commit.sha) for m in REVERTS.finditer(f.message))
        if f.subject == f'Revert "{commit.subject}"' and names and not _reverted_by(f, found):
            return f
    return None


def _patch_id(ops: Ops, repo: Path, sha: str) -> str:
    out = ops.run(["sh", "-c", PATCH_ID, "sh", str(repo), sha], check=False, quiet=True)
    words = out.stdout.split() if out.returncode == 0 else []
    return words[0] if words else ""


@dataclass(frozen=True)
class Item:
    """One item of a Debian changelog entry, its continuation lines joined."""

    version: str  # the Debian version of the entry listing it: "6.1.76-1"
    stable: str  # the upstream stable update it came with ("6.1.75"), or ""
    text: str  # as printed: "[x86] bpf: Fix ... (CVE-2024-1234)"


@dataclass(frozen=True)
class DebianRelease:
    """A Debian release and its package's changelog, when the import kept it."""

    version: str  # "6.1.192-3"
    items: tuple[Item, ...] | None  # newest first; None: no changelog kept
    source: str = ""  # where the changelog is (or would be) kept


def parse_changelog(lines: Iterable[str]) -> tuple[str, tuple[Item, ...]]:
    """A debian/changelog's newest version and its items, newest first. A new upstream
    stable update's URL line names the stable release of the items under it, up to the
    next top-level item or maintainer group."""
    top, version, stable, items = "", "", "", []
    for line in lines:
        line = line.rstrip("\n")
        entry, url, item = _ENTRY.match(line), _STABLE_URL.match(line), _ITEM.match(line)
        if entry:
            version, stable = entry[1], ""
            top = top or version
        elif url:
            stable = url[1]
        elif item:
            stable = "" if item[1] == "  *" else stable
            items.append(Item(version, stable, item[2].strip()))
        elif line.startswith("  ["):  # [ Maintainer Name ]
            stable = ""
        elif line.startswith("    ") and line.strip() and items and items[-1].version == version:
            last = items[-1]  # a wrapped item
            items[-1] = Item(last.version, last.stable, f"{last.text} {line.strip()}")
    return top, tuple(items)


def read_changelog(path: Path) -> DebianRelease:
    """A package's changelog.Debian.gz as kept by the import."""
    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as fh:
        version, items = parse_changelog(fh)
    return DebianRelease(version, items, str(path))


def debian_release(workdir: Path, commit_subject: str) -> DebianRelease | None:
    """The Debian release an imported commit holds, with its kept changelog (items None
    when it was imported before changelogs were kept, or the file is unreadable).
    None when the commit is no Debian import."""
    m = IMPORTED.search(commit_subject)
    if not m:
        return None
    path = kept_changelog(workdir / "src" / "debian.git", m[1])
    try:
        return DebianRelease(m[1], read_changelog(path).items, str(path))
    except (OSError, EOFError, zlib.error):
        return DebianRelease(m[1], None, str(path))


def _revert_depth(text: str, subject: str) -> int | None:
    """0 when the item is the subject, 1 when it reverts it, 2 for a revert of the
    revert...; None when it is about something else."""
    text = _NOTES.sub("", _TAGS.sub("", text)).strip()
    depth = 0
    while text != subject and text.startswith('Revert "') and text.endswith('"'):
        text, depth = text[len('Revert "'):-1], depth + 1
    return depth if text == subject else None


def in_changelog(release: DebianRelease, commit: Named, series: str,
                 only_by_backport: bool) -> Evidence | None:
    """What the release's changelog says of commit: the newest item of an entry of the
    series naming its subject (a revert says absent). Not named: absent when only a
    backport can bring it (its mainline release is newer than the series), else None,
    as for a changelog not kept."""
    if release.items is None:
        return None
    for item in release.items:
        if commit.subject not in item.text or _series(item.version) != series:
            continue
        depth = _revert_depth(item.text, commit.subject)
        if depth is not None:
            update = f" (stable update {item.stable})" if item.stable else ""
            return Evidence(commit.id, depth % 2 == 0, "changelog",
                            f"Debian changelog {item.version}: {item.text}{update}")
    if not only_by_backport:
        return None
    return Evidence(commit.id, False, "changelog", f"Debian changelog up to {release.version}: "
                    f"no {series} entry lists \"{commit.subject}\"")


def _series(debian_version: str) -> str:
    m = re.match(r"(\d+)\.(\d+)", debian_version.split(":")[-1])
    return f"{m[1]}.{m[2]}" if m else ""
