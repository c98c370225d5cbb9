"""Bisection of one regressed test between a good and a bad commit, over every commit
between them: git bisect's own walk (merges and skips as git handles them), in a
scratch clone so the user's tree keeps its own bisect state. Each step is a matrix
target running that test alone on that arch and variant (kernels build incrementally
and are cached); a commit that does not build is skipped, as `git bisect run` does
with 125; when the test was ever unstable each step runs `repeat` times and a split
verdict is a skip. The culprit is then verified: its diff reversed on top of the bad
commit, the test must pass again."""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from harness.errors import UserError
from harness.gitrepo import describe, git, source_repo
from harness.junit import JUnitError, stored_cases
from harness.main import Session
from harness.matrix import Seams, run_targets
from harness.config import Variant
from harness.model import Stage, Status, Target
from harness.store import Store, load_outcome

FIRST_BAD = re.compile(r"^([0-9a-f]{40}) is the first bad commit", re.M)


@dataclass(frozen=True)
class Step:
    sha: str
    name: str
    verdict: str  # good, bad or skip
    why: str
    seconds: float


@dataclass
class Bisection:
    test: str
    arch: str
    variant: str
    good: str
    bad: str
    steps: list[Step] = field(default_factory=list)
    culprit: str = ""  # "" when git could not single one out (skips)
    subject: str = ""
    author: str = ""
    candidates: tuple[str, ...] = ()  # when skips left several
    verification: str = ""  # verified, or unverified: why
    seconds: float = 0.0

    @property
    def confidence(self) -> str:
        if not self.culprit:
            return "none"
        skipped = any(s.verdict == "skip" for s in self.steps)
        if self.verification == "verified":
            return "medium" if skipped else "high"
        return "low"

    def text(self) -> str:
        lines = [f"bisect {self.test} ({self.arch}/{self.variant}) between "
                 f"{self.good[:12]} (good) and {self.bad[:12]} (bad):"]
        lines += [f"  step {i + 1}: {s.name:<14} {s.verdict:<5} {s.seconds:6.1f} s  {s.why}"
                  for i, s in enumerate(self.steps)]
        if self.culprit:
            lines.append(f"  culprit: {self.culprit[:12]} {self.subject!r} by {self.author}; "
                         f"{len(self.steps)} step(s), {self.seconds:.0f} s; revert: "
                         f"{self.verification}; confidence {self.confidence}")
        else:
            lines.append(f"  no single culprit: {' '.join(c[:12] for c in self.candidates)}"
                         " (skipped commits left between)")
        return "\n".join(lines)

    def to_json(self) -> dict[str, object]:
        return {"test": self.test, "arch": self.arch, "variant": self.variant,
                "good": self.good, "bad": self.bad, "culprit": self.culprit,
                "subject": self.subject, "author": self.author,
                "candidates": list(self.candidates), "verification": self.verification,
                "confidence": self.confidence, "seconds": round(self.seconds, 1),
                "steps": [s.__dict__ for s in self.steps]}


def lab_case(test: str) -> bool:
    """A case the lab writes itself (kernel-health, lab.build, lab.boot), not a test of
    the suites: only the whole suites on a fresh boot judge it again."""
    return test.startswith("lab.")


def _scratch(session: Session, repo: Path) -> Path:
    """A bare clone sharing the source's objects, for git bisect's state."""
    where = session.lab.workdir / "bisect" / "repo.git"
    shutil.rmtree(where, ignore_errors=True)
    where.parent.mkdir(parents=True, exist_ok=True)
    session.ops.run(["git", "clone", "-q", "--bare", "--shared", str(repo), str(where)],
                    quiet=True)
    return where


def _judge(session: Session, store: Store, target: Target, test: str, force: bool,
           seams: Seams) -> tuple[str, str]:
    """One run of the test on target: good, bad or skip, and why."""
    run_targets(session, store, force, [target], seams)
    where = store.target_dir(target)
    try:
        outcome = load_outcome(where / "metadata.json")
    except ValueError as exc:
        return "skip", f"no result: {exc}"
    if outcome.stages.get(Stage.BUILD) is not Status.PASS:
        return "skip", f"does not build: {outcome.reason}"[:200]
    if outcome.stages.get(Stage.BOOT) is not Status.PASS:
        return "bad", f"did not boot: {outcome.reason}"[:200]
    try:
        found = [c for c in stored_cases(where / "junit.xml") if c.test_id == test]
    except JUnitError as exc:
        return "skip", f"unreadable results: {exc}"
    if not found:
        return "skip", f"{test} did not run"
    status = found[0].status
    if status is Status.SKIP:
        return "skip", f"the test skipped: {found[0].message}"[:200]
    return ("bad" if status in (Status.FAIL, Status.ERROR) else "good"), status.value


def bisect(session: Session, good: str, bad: str, test: str, arch: str,
           variant: str = "base", repeat: int = 1, run_dir: Path | None = None,
           seams: Seams = Seams()) -> Bisection:
    lab, ops = session.lab, session.ops
    started = time.monotonic()
    repo = source_repo(ops, lab)
    shas = {}
    for role, rev in (("good", good), ("bad", bad)):
        shas[role] = git(ops, repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}",
                         check=False)
        if not shas[role]:
            raise UserError(f"--{role} {rev}: not a commit of {repo}")
    base = next((v for v in lab.variants if v.name == variant), None)
    if base is None:
        raise UserError(f"--variant {variant}: not a variant of {lab.path.name} (choices: "
                        f"{', '.join(v.name for v in lab.variants)})")
    # the test alone; kernel-health (the lab's own case) needs the whole suites
    one = base if lab_case(test) else replace(base, tests=(test,))
    column = lab.profile(arch)
    result = Bisection(test, column.name, variant, shas["good"], shas["bad"])
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{test}__{arch}__{variant}")[:150]
    root = run_dir or lab.workdir / "runs" / f"{lab.path.stem}-bisect" / slug
    scratch = _scratch(session, repo)
    # a clone of a tree with no branch (the nightly's fetched ref) has no HEAD to start
    # from: bisect starts from a detached one
    ops.run(["git", "-C", str(scratch), "update-ref", "--no-deref", "HEAD", shas["bad"]],
            quiet=True)
    started_bisect = ops.run(["git", "-C", str(scratch), "bisect", "start", "--no-checkout",
                              shas["bad"], shas["good"]], check=False, quiet=True)
    if started_bisect.returncode != 0:
        raise UserError(f"git bisect start {shas['bad'][:12]} {shas['good'][:12]}: "
                        f"{started_bisect.stdout.strip().splitlines()[-1:]}")
    out = started_bisect.stdout
    while not FIRST_BAD.search(out):
        sha = git(ops, scratch, "rev-parse", "BISECT_HEAD", check=False)
        if not sha or "only 'skip'ped commits left" in out:
            result.candidates = tuple(re.findall(r"^([0-9a-f]{40})$", out, re.M))
            break
        target = Target.on(describe(ops, repo, sha), column, one)
        t0 = time.monotonic()
        # each repeat in a store of its own: a fresh boot of the cached kernel
        verdicts = [_judge(session, Store(root / f"step-{n}"), target, test, False, seams)
                    for n in range(repeat)]
        kinds = {v for v, _ in verdicts}
        verdict, why = verdicts[0] if len(kinds) == 1 else \
            ("skip", "split over repeats: " + ", ".join(v for v, _ in verdicts))
        result.steps.append(Step(sha, target.commit.name, verdict, why,
                                 round(time.monotonic() - t0, 1)))
        out = ops.run(["git", "-C", str(scratch), "bisect", verdict], check=False,
                      quiet=True).stdout
    found = FIRST_BAD.search(out)
    if found:
        result.culprit = found.group(1)
        result.subject = git(ops, repo, "log", "-1", "--format=%s", result.culprit)
        result.author = git(ops, repo, "log", "-1", "--format=%an <%ae>", result.culprit)
        result.verification = _verify(session, repo, result, one, root, seams)
    result.seconds = round(time.monotonic() - started, 1)
    return result


def _verify(session: Session, repo: Path, b: Bisection, variant: Variant, root: Path,
            seams: Seams) -> str:
    """The culprit's diff reversed on the bad commit: the test must pass again."""
    ops = session.ops
    patch = root / f"revert-{b.culprit[:12]}.patch"
    patch.parent.mkdir(parents=True, exist_ok=True)
    diff = ops.run(["git", "-C", str(repo), "diff", "--binary", "--no-renames", b.culprit, f"{b.culprit}^"],
                   check=False, quiet=True)
    if diff.returncode != 0:
        return "unverified: the culprit has no parent to revert to"
    patch.write_text(diff.stdout)
    reverted = replace(variant, name=f"revert-{b.culprit[:12]}", patches=(patch,))
    target = Target.on(describe(ops, repo, b.bad), session.lab.profile(b.arch), reverted)
    verdict, why = _judge(session, Store(root / "verify"), target, b.test, False, seams)
    if verdict == "good":
        return "verified"
    if verdict == "skip" and "does not apply" in why:
        return "unverified: the revert does not apply on the bad commit"
    return f"unverified: with the revert the test is still {verdict} ({why})"
