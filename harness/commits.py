"""Which declared upstream commits a kernel under test carries: decided here, only here.

The table (bpf_tests/commits.yaml) lists every commit a test of either suite declares.
Its fixes also name what they fix, need and were fixed by, their CVE, the tests that
reproduce the bug and the report expected without them. For one kernel, decide() says
present or absent per commit and why: a variant's reverts first, then its backports,
then the git tree's evidence (harness/presence.py: the commit, or a stable backport by
trailer or patch-id), else release numbers and the stable table, checked against a
Debian release's own changelog. render() writes the file the suites read (env ENV).
By hand: python3 -m harness.commits RELEASE [options] > commits.txt
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

from harness import presence
from harness.config import PROJECT
from harness.errors import ConfigError, UserError
from harness.ops import Ops
from harness.presence import DebianRelease, Evidence
from harness.presence import same_commit as same_commit  # its home was here

TABLE = PROJECT / "bpf_tests" / "commits.yaml"
ENV = "BPFLAB_COMMITS"  # in the guest: the path of the file render() wrote
_ID = re.compile(r"[0-9a-f]{10,40}")
_SERIES = re.compile(r"(\d+)\.(\d+)")
_STABLE = re.compile(r"(\d+)\.(\d+)\.(\d+)")
_RELEASE = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?(-rc\d+)?")
_DEBIAN = re.compile(r"Debian (\d+)\.(\d+)\.(\d+)")
_CVE = re.compile(r"CVE-\d{4}-\d{4,}")
_TEST = re.compile(r"test_\w+\.py::test_\w+|map_in_map::\w+")
_FIELDS = ("id", "subject", "mainline", "stable", "fixes", "prerequisites", "followups", "cve",
           "tests", "signature")


@dataclass(frozen=True)
class Upstream:
    """One upstream commit of the table."""

    id: str
    subject: str
    mainline: str  # first mainline release with it: "6.8"
    stable: tuple[tuple[str, str], ...] = ()  # (series, first release of it with a backport)
    fixes: tuple[str, ...] = ()  # the ids its Fixes: tags name
    prerequisites: tuple[str, ...] = ()  # table ids a backport needs with it
    followups: tuple[str, ...] = ()  # table ids of later fixes whose Fixes: names it
    cve: str = ""
    tests: tuple[str, ...] = ()  # suite test ids that reproduce the bug it fixes
    signature: str = ""  # the kernel report expected without it (harness.kreport's form)


@dataclass(frozen=True)
class Identity:
    """What is known about the kernel under test, never how it behaves."""

    release: str  # as the build reports it: "6.1.192", "7.3.0-rc7"
    evidence: tuple[Evidence, ...] | None = None  # from the git tree (presence.in_git)
    reverted: tuple[str, ...] = ()  # the variant's declarations
    backported: tuple[str, ...] = ()
    variant: str = "default"
    version: str = ""  # uname -v if known: Debian's 6.1.0-NN releases name the sublevel there
    debian: DebianRelease | None = None  # a Debian package's release and changelog


@dataclass(frozen=True)
class Presence:
    id: str
    present: bool
    why: str  # how it was decided, for the suites' messages


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
    _check_links(table, file)
    return tuple(table)


def _check_links(table: list[Upstream], file: str) -> None:
    """Prerequisites and follow-ups are table ids (so presence decides them too), and a
    follow-up fix names the commit in its fixes; a fix of a table commit is its follow-up."""
    def index(cid: str) -> int | None:
        return next((i for i, c in enumerate(table) if same_commit(c.id, cid)), None)

    for i, commit in enumerate(table):
        for key, ids in (("prerequisites", commit.prerequisites),
                         ("followups", commit.followups)):
            for j, cid in enumerate(ids):
                other = index(cid)
                if other is None or other == i:
                    raise ConfigError(file, f"commits[{i}].{key}[{j}]",
                                      f"the id of another commit of this table, got {cid!r}")
                if key == "followups" and not any(same_commit(commit.id, f)
                                                  for f in table[other].fixes):
                    raise ConfigError(file, f"commits[{other}].fixes",
                                      f"{commit.id}, as commits[{i}] lists {cid} as a followup")
        for cid in commit.fixes:
            fixed = index(cid)
            if fixed is not None and not any(same_commit(commit.id, f)
                                             for f in table[fixed].followups):
                raise ConfigError(file, f"commits[{fixed}].followups",
                                  f"{commit.id}, whose Fixes: names it (commits[{i}])")


def _upstream(entry: Any, file: str, where: str) -> Upstream:
    if not isinstance(entry, dict):
        raise ConfigError(file, where, "a mapping (id, subject, mainline, stable, ...)")
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
    commit = Upstream(cid, subject, mainline, tuple(sorted(pairs, key=lambda p: _numbers(p[0]))))
    return _as_fix(commit, entry, file, where)


def _as_fix(commit: Upstream, entry: dict[Any, Any], file: str, where: str) -> Upstream:
    """The optional keys of a fix."""
    def ids(key: str) -> tuple[str, ...]:
        return _list(entry, key, file, where, _ID, "quoted ids, 10-40 lowercase hex digits")

    def text(key: str, form: re.Pattern[str], what: str) -> str:
        return _text(entry, key, file, where, form, what) if key in entry else ""

    return replace(commit, fixes=ids("fixes"), prerequisites=ids("prerequisites"),
                   followups=ids("followups"), cve=text("cve", _CVE, '"CVE-YYYY-N..."'),
                   tests=_list(entry, "tests", file, where, _TEST,
                               'quoted test ids, "test_x.py::test_y" or "map_in_map::name"'),
                   signature=text("signature", re.compile(r"\S.*"), "a kernel report's signature"))


def _list(entry: dict[Any, Any], key: str, file: str, where: str, form: re.Pattern[str],
          what: str) -> tuple[str, ...]:
    value = entry.get(key, [])
    if not isinstance(value, list):
        raise ConfigError(file, f"{where}.{key}", f"a list of {what}")
    for i, item in enumerate(value):
        if not isinstance(item, str) or not form.fullmatch(item):
            raise ConfigError(file, f"{where}.{key}[{i}]",
                              f"{what} (got {type(item).__name__} {item!r})")
    if len(set(value)) != len(value):
        raise ConfigError(file, f"{where}.{key}", f"{what}, each listed once")
    return tuple(value)


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
        return Presence(commit.id, True, f"declared present by the variant {identity.variant}")
    found = next((e for e in identity.evidence or () if same_commit(commit.id, e.id)), None)
    if found and found.kind != "unknown":
        return Presence(commit.id, found.present, found.detail)
    table = _by_table(commit, identity)
    if found:  # the tree could not tell (a shallow clone): the release decides
        table = Presence(commit.id, table.present, f"{table.why} ({found.detail})")
    return table if identity.debian is None else _by_changelog(commit, identity, table)


def _by_changelog(commit: Upstream, identity: Identity, table: Presence) -> Presence:
    """A Debian release's own changelog beats the table; the why says both."""
    assert identity.debian is not None
    if identity.debian.items is None:
        return Presence(commit.id, table.present, f"{table.why} (by the table: no Debian "
                        f"changelog kept for {identity.debian.version})")
    major, minor = kernel_numbers(identity.release, identity.version)[:2]
    said = presence.in_changelog(identity.debian, commit, f"{major}.{minor}",
                                 only_by_backport=(major, minor) < _numbers(commit.mainline))
    if said is None:
        return table
    if said.present == table.present:
        return Presence(commit.id, said.present, f"{said.detail}; the table agrees: {table.why}")
    return Presence(commit.id, said.present, f"{said.detail}; the changelog wins over the "
                    f"table's {'present' if table.present else 'absent'}: {table.why}")


def _by_table(commit: Upstream, identity: Identity) -> Presence:
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


def render(presences: Iterable[Presence], identity: Identity) -> str:
    """The suites' file: '#' comments, then '<id> present|absent <why>' per commit."""
    rows = list(presences)
    how = _how(identity)
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


def _how(identity: Identity) -> str:
    if identity.evidence is not None:
        kinds = [e.kind for e in identity.evidence if e.present]
        return (f"the git history of the commit under test ({kinds.count('ancestor')} "
                f"ancestors and {len(kinds) - kinds.count('ancestor')} stable backports "
                f"of {len(identity.evidence)} ids)")
    how = "release numbers and the stable table of bpf_tests/commits.yaml"
    if identity.debian is None:
        return how
    if identity.debian.items is None:
        return f"{how} (no Debian changelog kept for {identity.debian.version})"
    return f"{how}, checked against Debian's changelog of {identity.debian.version}"


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
    p.add_argument("--debian-changelog", type=Path, metavar="GZ",
                   help="the package's changelog.Debian.gz (Debian releases)")
    p.add_argument("--table", type=Path, default=TABLE)
    args = p.parse_args(argv)
    try:
        table = load_table(args.table)
        found = presence.in_git(Ops(verbose=False), args.git, args.sha, table) \
            if args.git else None
        debian = presence.read_changelog(args.debian_changelog) \
            if args.debian_changelog else None
        identity = Identity(args.release, found, tuple(args.reverts), tuple(args.backports),
                            args.variant, args.uname_v, debian)
        sys.stdout.write(render(decide(table, identity), identity))
    except (UserError, OSError, EOFError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
