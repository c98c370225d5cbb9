"""What the tasks call: each function takes a lab and plain flags and returns a result
object; only tasks.py turns results into exit codes."""

from __future__ import annotations

from dataclasses import dataclass

from harness.build import Builder, BuildResult
from harness.config import Lab
from harness.gitrepo import Checkout, resolve, source_repo
from harness.model import Selection, Status, Target, Verdict
from harness.ops import Ops


@dataclass
class Session:
    """The lab's resolved history and its one checkout, shared by the tasks."""

    lab: Lab
    ops: Ops
    scheduler: str = ""  # a Dask scheduler's address; "" runs on a local cluster
    insecure: bool = False  # allow a plain-TCP scheduler beyond loopback

    def targets(self, selection: Selection = Selection()) -> list[Target]:
        repo = source_repo(self.ops, self.lab)
        commits = resolve(self.ops, repo, self.lab.source, str(self.lab.path))
        return selection.targets(self.lab, commits)

    def builder(self) -> Builder:
        repo = source_repo(self.ops, self.lab)
        checkout = Checkout(self.lab.workdir / "checkouts" / "linux", repo, self.ops)
        return Builder(self.lab, self.ops, checkout)


@dataclass(frozen=True)
class BuildRun:
    results: tuple[BuildResult, ...]

    @property
    def verdict(self) -> Verdict:
        return Verdict.OK if all(r.status is Status.PASS for r in self.results) \
            else Verdict.FAILED

    def summary(self) -> str:
        lines = []
        for r in self.results:
            state = "cached" if r.cached else r.status.value
            where = r.artifacts or r.log
            lines.append(f"{r.status.value.upper():5} {r.target.label:<40} {state:6} {where}")
            lines += [f"      {e}" for e in r.errors]
        return "\n".join(lines)


def build(session: Session, selection: Selection, force: bool = False) -> BuildRun:
    """Build every selected target; failures are results, the others go on."""
    targets = session.targets(selection)
    builder = session.builder()
    run = BuildRun(tuple(builder.build(t, force) for t in targets))
    print(run.summary())
    return run
