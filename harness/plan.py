"""invoke plan: the targets a lab resolves to, commit x arch x variant, in history
order. It changes nothing on disk and downloads nothing: Debian releases not yet
imported are listed with what would be fetched."""

from __future__ import annotations

from harness.config import Lab
from harness.debsrc import imported_versions, package_for, series_of_version, tag_for
from harness.gitrepo import resolve
from harness.model import Commit, Selection, Target
from harness.ops import Ops


def describe(targets_: list[Target]) -> str:
    wide = max([7, *(len(t.column) for t in targets_)])
    rows = [f"{t.commit.name:<16} {t.commit.short:<12}  {t.column:<{wide}} "
            f"{t.variant.name:<12} {t.commit.subject[:60]}" for t in targets_]
    column = "profile" if any(t.profile for t in targets_) else "arch"
    return "\n".join([f"{len(targets_)} targets (commit x {column} x variant):", *rows])


def plan_text(lab: Lab, ops: Ops, selection: Selection) -> str:
    if lab.source.git:
        commits = resolve(ops, lab.source.git, lab.source, str(lab.path))
        return describe(selection.targets(lab, commits))
    repo = lab.workdir / "src" / "debian.git"
    have = imported_versions(ops, repo)
    missing = [v for v in lab.source.debian_versions if v not in have]
    if not missing:
        return describe(selection.targets(lab, resolve(ops, repo, lab.source, str(lab.path))))
    commits = [Commit("", "", tag_for(v), "(not imported yet)", series_of_version(v))
               for v in lab.source.debian_versions]
    fetch = [f"  {package_for(v)} {v}: from Debian's archive, imported into {repo} as "
             f"{tag_for(v)}" for v in missing]
    return "\n".join([describe(selection.targets(lab, commits)), "",
                      f"./lab matrix would first fetch {len(missing)} release(s):", *fetch])
