"""Targets: commits x arches x variants, in history order."""

from __future__ import annotations

from harness.build import Target
from harness.config import Lab
from harness.gitrepo import Commit


def targets(lab: Lab, commits: list[Commit], arch: str | None = None,
            variant: str | None = None) -> list[Target]:
    arches = [lab.arch(arch)] if arch else list(lab.arches)
    variants = [v for v in lab.variants if variant in (None, v.name)]
    return [Target(c, a, v) for c in commits for a in arches for v in variants
            if not v.arches or a.name in v.arches]


def describe(targets_: list[Target]) -> str:
    rows = [f"{t.commit.name:<16} {t.commit.short}  {t.arch.name:<7} {t.variant.name:<12} "
            f"{t.commit.subject[:60]}" for t in targets_]
    return "\n".join([f"{len(targets_)} targets (commit x arch x variant):", *rows])
