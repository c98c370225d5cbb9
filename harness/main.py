"""What the tasks call: each function takes a lab and plain flags, returns an exit code."""

from __future__ import annotations

from dataclasses import dataclass

from harness import plan
from harness.build import Builder, BuildResult, Target
from harness.config import Lab
from harness.gitrepo import Checkout, resolve, source_repo
from harness.ops import Ops
from harness.results import Status

EXIT_OK, EXIT_FAILED, EXIT_LAB = 0, 1, 2


@dataclass
class Session:
    """The lab's resolved history and its one checkout, shared by the tasks."""

    lab: Lab
    ops: Ops

    def targets(self, arch: str | None = None, variant: str | None = None,
                commit: str | None = None) -> list[Target]:
        repo = source_repo(self.ops, self.lab)
        commits = resolve(self.ops, repo, self.lab.source, str(self.lab.path))
        if commit:
            commits = [c for c in commits if commit in (c.name, c.sha) or
                       c.sha.startswith(commit)] or commits_missing(commit, commits)
        return plan.targets(self.lab, commits, arch, variant)

    def builder(self) -> Builder:
        repo = source_repo(self.ops, self.lab)
        checkout = Checkout(self.lab.workdir / "checkouts" / self.lab.source.name, repo,
                            self.ops)
        return Builder(self.lab, self.ops, checkout)


def commits_missing(commit: str, commits: list) -> list:  # type: ignore[type-arg]
    from harness.errors import UserError
    names = ", ".join(c.name for c in commits)
    raise UserError(f"--commit {commit}: not among the lab's commits ({names})")


def build_summary(results: list[BuildResult]) -> str:
    lines = []
    for r in results:
        verdict = "cached" if r.cached else r.status.value
        where = r.artifacts or r.log
        lines.append(f"{r.status.value.upper():5} {r.target.label:<40} {verdict:6} {where}")
        lines += [f"      {e}" for e in r.errors]
    return "\n".join(lines)


def build(session: Session, arch: str | None, variant: str | None,
          commit: str | None) -> int:
    """Build every selected target; failures are results, the others go on."""
    targets = session.targets(arch, variant, commit)
    builder = session.builder()
    results = [builder.build(t) for t in targets]
    print(build_summary(results))
    return EXIT_OK if all(r.status is Status.PASS for r in results) else EXIT_FAILED
