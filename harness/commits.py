"""Which declared upstream commits a kernel under test carries: decided here, only here.

The table (bpf_tests/commits.yaml) lists every commit a test of either suite declares.
For one kernel, decide() says present or absent per commit and why: a variant's reverts
first, then its backports, then git ancestry when the tree knows the ids, else release
numbers and the stable table. render() writes the file the suites read (env ENV).
By hand: python3 -m harness.commits RELEASE [options] > commits.txt
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

from harness.config import PROJECT
from harness.errors import ConfigError, UserError
from harness.ops import Ops

TABLE = PROJECT / "bpf_tests" / "commits.yaml"
ENV = "BPFLAB_COMMITS"  # in the guest: the path of the file render() wrote
_ID = re.compile(r"[0-9a-f]{10,40}")
_SERIES = re.compile(r"(\d+)\.(\d+)")
_STABLE = re.compile(r"(\d+)\.(\d+)\.(\d+)")
_RELEASE = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?(-rc\d+)?")
_DEBIAN = re.compile(r"Debian (\d+)\.(\d+)\.(\d+)")
_FIELDS = ("id", "subject", "mainline", "stable")


@dataclass(frozen=True)
class Upstream:
    """One upstream commit of the table."""

    id: str
    subject: str
    mainline: str  # first mainline release with it: "6.8"
    stable: tuple[tuple[str, str], ...] = ()  # (series, first release of it with a backport)


@dataclass(frozen=True)
class Identity:
    """What is known about the kernel under test, never how it behaves."""

    release: str  # as the build reports it: "6.1.192", "7.3.0-rc7"
    ancestors: frozenset[str] | None = None  # table ids that are git ancestors; None: unknown
    reverted: tuple[str, ...] = ()  # the variant's declarations
    backported: tuple[str, ...] = ()
    variant: str = "default"
    version: str = ""  # uname -v if known: Debian's 6.1.0-NN releases name the sublevel there


@dataclass(frozen=True)
class Presence:
    id: str
    present: bool
    why: str  # how it was decided, for the suites' messages


def same_commit(a: str, b: str) -> bool:
    """Short and full ids match by prefix (at least 7 hex digits)."""
    a, b = a.lower(), b.lower()
    return min(len(a), len(b)) >= 7 and (a.startswith(b) or b.startswith(a))


def load_table(path: Path = TABLE) -> tuple[Upstream, ...]:
    """The table, in file order; bad data names the file, the key and what was expected."""
    file = str(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(file, "(file)", f"readable YAML ({exc})") from exc
    if not isinstance(raw, dict) or set(raw) != {"commits"}:
        raise ConfigError(file, "(top level)", "a mapping with the one key 'commits'")
    entries = raw["commits"]
    if not isinstance(entries, list) or not entries:
        raise ConfigError(file, "commits", "a non-empty list of commits")
    table: list[Upstream] = []
    for i, entry in enumerate(entries):
        commit = _upstream(entry, file, f"commits[{i}]")
        for j, seen in enumerate(table):
            if same_commit(seen.id, commit.id):
                raise ConfigError(file, f"commits[{i}].id",
                                  f"a commit listed once, {commit.id} is also commits[{j}]")
        table.append(commit)
    return tuple(table)


def _upstream(entry: Any, file: str, where: str) -> Upstream:
    if not isinstance(entry, dict):
        raise ConfigError(file, where, "a mapping (id, subject, mainline, stable)")
    for key in entry:
        if key not in _FIELDS:
            raise ConfigError(file, f"{where}.{key}", f"unknown key (known: {', '.join(_FIELDS)})")
    cid = _text(entry, "id", file, where, _ID, "10-40 lowercase hex digits")
    subject = _text(entry, "subject", file, where, re.compile(r"\S.*"), "the subject line")
    mainline = _text(entry, "mainline", file, where, _SERIES, 'a release "X.Y"')
    stable = entry.get("stable", {})
    if not isinstance(stable, dict):
        raise ConfigError(file, f"{where}.stable", 'a mapping of series to release, '
                          'e.g. {"6.1": "6.1.75"}')
    pairs = []
    for series, release in stable.items():
        key = f"{where}.stable.{series}"
        ok = isinstance(series, str) and isinstance(release, str) \
            and _SERIES.fullmatch(series) and _STABLE.fullmatch(release) \
            and release.startswith(series + ".")
        if not ok:
            raise ConfigError(file, key, f'quoted "X.Y": "X.Y.Z" of that series, '
                              f"got {series!r}: {release!r}")
        if _numbers(series) >= _numbers(mainline):
            raise ConfigError(file, key, f"a series older than mainline v{mainline}")
        pairs.append((series, release))
    return Upstream(cid, subject, mainline, tuple(sorted(pairs, key=lambda p: _numbers(p[0]))))


def _text(entry: dict[Any, Any], key: str, file: str, where: str, form: re.Pattern[str],
          what: str) -> str:
    value = entry.get(key)
    if not isinstance(value, str) or not form.fullmatch(value):
        got = "missing" if value is None else f"got {type(value).__name__} {value!r}"
        raise ConfigError(file, f"{where}.{key}", f"a quoted string, {what} ({got})")
    return value


def _numbers(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("."))


def decide(table: Iterable[Upstream], identity: Identity) -> tuple[Presence, ...]:
    """Per commit of the table, in its order: present or absent, and why."""
    return tuple(_decide_one(c, identity) for c in table)


def _decide_one(commit: Upstream, identity: Identity) -> Presence:
    def named(ids: Iterable[str]) -> bool:
        return any(same_commit(commit.id, i) for i in ids)

    if named(identity.reverted):
        return Presence(commit.id, False, f"reverted by the variant {identity.variant}")
    if named(identity.backported):
        return Presence(commit.id, True, f"backported by the variant {identity.variant}")
    if identity.ancestors is not None:
        if named(identity.ancestors):
            return Presence(commit.id, True, "ancestor of the commit under test")
        return Presence(commit.id, False, "not an ancestor of the commit under test")
    return _by_release(commit, identity)


def _by_release(commit: Upstream, identity: Identity) -> Presence:
    """An -rc of X.Y counts as X.Y: commits are taken to be merged in the merge window."""
    major, minor, patch, rc, shown = kernel_numbers(identity.release, identity.version)
    series = f"{major}.{minor}"
    if (major, minor) >= _numbers(commit.mainline):
        note = f" (an -rc of {series} counts as {series})" if series == commit.mainline and rc \
            else ""
        return Presence(commit.id, True, f"mainline v{commit.mainline}, release {shown}{note}")
    for stable_series, first in commit.stable:
        if stable_series == series:
            return Presence(commit.id, (major, minor, patch) >= _numbers(first),
                            f"{series}.y from {first}, release {shown}")
    return Presence(commit.id, False, f"mainline v{commit.mainline}, release {shown} "
                    f"({series}.y has no backport)")


def kernel_numbers(release: str, version: str = "") -> tuple[int, int, int, bool, str]:
    """"6.1.192", "7.3.0-rc7+", "6.1.0-28-amd64" -> (major, minor, sublevel, is an -rc,
    as shown).

    Debian's own 6.1.0-NN-amd64 releases name the real sublevel in uname -v
    ("... Debian 6.1.192-1 ..."): that one wins when the series match."""
    m = _RELEASE.match(release.strip())
    if not m:
        raise UserError(f"kernel release {release!r}: expected X.Y[.Z][-rcN][suffix]")
    major, minor, patch = int(m[1]), int(m[2]), int(m[3] or 0)
    shown = release.strip()
    deb = _DEBIAN.search(version)
    if deb and (int(deb[1]), int(deb[2])) == (major, minor) and int(deb[3]) != patch:
        patch = int(deb[3])
        shown += f" (Debian {major}.{minor}.{patch})"
    return major, minor, patch, bool(m[4]), shown


def ancestors(ops: Ops, repo: Path, sha: str, ids: Iterable[str]) -> frozenset[str] | None:
    """The ids that are ancestors of sha in a git tree that knows them. None when it
    knows none of them (Debian's imported releases): then release numbers decide."""
    present, known = set(), 0
    for cid in ids:
        full = ops.run(["git", "-C", str(repo), "rev-parse", "--verify", "--quiet",
                        f"{cid}^{{commit}}"], check=False, quiet=True).stdout.strip()
        if not full:
            continue
        known += 1
        anc = ops.run(["git", "-C", str(repo), "merge-base", "--is-ancestor", full, sha],
                      check=False, quiet=True)
        if anc.returncode == 0:
            present.add(cid)
    return frozenset(present) if known else None


def render(presences: Iterable[Presence], identity: Identity) -> str:
    """The suites' file: '#' comments, then '<id> present|absent <why>' per commit."""
    rows = list(presences)
    how = "release numbers and the stable table of bpf_tests/commits.yaml"
    if identity.ancestors is not None:
        how = (f"git ancestry of the commit under test ({len(identity.ancestors)} of "
               f"{len(rows)} ids are ancestors)")
    if identity.reverted or identity.backported:
        how = f"the variant's reverts and backports, then {how}"
    variant = identity.variant
    for word, ids in (("reverts", identity.reverted), ("backports", identity.backported)):
        if ids:
            variant += f", {word} {' '.join(ids)}"
    lines = ["# Upstream commits the map-in-map suites declare, as harness/commits.py decided",
             f"# release: {identity.release}", f"# variant: {variant}",
             f"# decided by: {how}", "# <id> present|absent <why>"]
    lines += [f"{p.id} {'present' if p.present else 'absent'} {p.why}" for p in rows]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Write a commits file by hand, for a kernel the lab did not boot."""
    p = argparse.ArgumentParser(prog="python3 -m harness.commits", description=main.__doc__)
    p.add_argument("release", help="the kernel's release (uname -r)")
    p.add_argument("--uname-v", default="", help="uname -v (Debian 6.1.0-NN releases)")
    p.add_argument("--variant", default="default")
    p.add_argument("--reverts", nargs="*", default=[], metavar="ID")
    p.add_argument("--backports", nargs="*", default=[], metavar="ID")
    p.add_argument("--git", type=Path, help="a kernel git tree that has the commit under test")
    p.add_argument("--sha", default="HEAD", help="the commit under test (with --git)")
    p.add_argument("--table", type=Path, default=TABLE)
    args = p.parse_args(argv)
    try:
        table = load_table(args.table)
        known = ancestors(Ops(verbose=False), args.git, args.sha, [c.id for c in table]) \
            if args.git else None
        identity = Identity(args.release, known, tuple(args.reverts), tuple(args.backports),
                            args.variant, args.uname_v)
        sys.stdout.write(render(decide(table, identity), identity))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
