"""./lab backports: is each fix of the table (bpf_tests/commits.yaml) in a kernel, and
does it really fix the bug there?

Per fix, kernel and arch, composed from the matrix's own stages (run_targets: build,
boot, suites, store), with the fix's reproducers only:
  as is        the kernel as it is, expected to behave as fixed;
  without      the same kernel with the fix taken out (on a git tree the commit that
               brought it, reverted; on a release without history, the project's revert
               patch for the series, kernels/patches/reverts/<series>/<id>.patch);
  before       on a git tree, the last commit before the one that brought it.
Every run declares the fix present, so the bug shows the same way whatever the kernel:
a reproducer failing, or a kernel report tied to it. Presence is decided exactly as
for the suites (harness/commits.py), with its evidence."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from typing import Sequence

from harness import commits, junit, presence, report
from harness.config import PROJECT, Arch, Variant
from harness.errors import UserError
from harness.gitrepo import describe, git, makefile_version, source_repo
from harness.main import Session
from harness.matrix import Seams, run_targets
from harness.pipeline import kernel_identity
from harness.model import Commit, Selection, Stage, Status, Target, TargetOutcome, Verdict
from harness.results import write_atomic, write_json
from harness.store import Store, load_outcome

REVERTS = PROJECT / "kernels" / "patches" / "reverts"


class Judgement(str, Enum):
    VERIFIED = "verified"  # present, clean, and the bug comes back without it
    INEFFECTIVE = "ineffective"  # present, and the bug still shows
    MISSING = "missing"  # absent, and the bug shows
    MISSING_NOT_REPRODUCED = "missing-not-reproduced"  # absent, clean: inconclusive
    UNPROVABLE = "unprovable"  # present and clean, but taking it out brings nothing back
    NOT_AFFECTED = "not-affected"  # absent, clean, and so is what it fixes
    ERROR = "error"  # a kernel did not build or boot, or the lab failed: no answer


# Exit 0 for these; a flag (a missing prerequisite or follow-up) fails any of them.
GOOD = (Judgement.VERIFIED, Judgement.NOT_AFFECTED)


@dataclass(frozen=True)
class Seen:
    """What one run of a fix's reproducers showed."""

    bug: bool | None  # None: no answer (not built, not booted, no test ran)
    detail: str
    seconds: float = 0.0  # its kernel's build (0 when cached) and its guests


@dataclass(frozen=True)
class Check:
    """One fix on one kernel and arch: presence with evidence, and the runs to make."""

    fix: commits.Upstream
    commit: Commit
    arch: Arch
    present: bool
    evidence: str
    flags: tuple[str, ...]  # a prerequisite or follow-up the kernel lacks
    affected: bool  # the commits it fixes (those the table has) are in this kernel
    as_is: Target
    without: Target | None
    before: Target | None
    no_without: str = ""  # why there is no `without` run


@dataclass(frozen=True)
class FixVerdict:
    check: Check
    judgement: Judgement
    as_is: Seen
    without: Seen | None
    before: Seen | None

    @property
    def good(self) -> bool:
        return self.judgement in GOOD and not self.check.flags


@dataclass(frozen=True)
class BackportsResult:
    verdict: Verdict
    verdicts: tuple[FixVerdict, ...]
    root: Path


def choose_fixes(table: Sequence[commits.Upstream], wanted: str) -> list[commits.Upstream]:
    """The table's fixes with reproducers, or the one --fix names."""
    fixes = [c for c in table if c.tests]
    if not wanted:
        return fixes
    found = [c for c in fixes if presence.same_commit(c.id, wanted)]
    if not found:
        raise UserError(f"--fix {wanted}: not a fix with reproducers in "
                        f"{commits.TABLE.relative_to(PROJECT)} (choices: "
                        f"{', '.join(c.id for c in fixes)})")
    return found


def release_of(session: Session, repo: Path, commit: Commit) -> str:
    """The kernel release a commit builds, from its top Makefile: "6.1.192"."""
    found = makefile_version(session.ops, repo, commit.sha)
    if "VERSION" not in found or "PATCHLEVEL" not in found:
        raise UserError(f"{repo}: {commit.name} has no kernel Makefile (VERSION, PATCHLEVEL)")
    return f"{found['VERSION']}.{found['PATCHLEVEL']}.{found.get('SUBLEVEL') or 0}" \
        f"{found.get('EXTRAVERSION', '')}"


def plan(session: Session, selection: Selection, fix: str) -> list[Check]:
    """Every check to make, with the targets each needs; nothing is built here."""
    table = commits.load_table()
    fixes = choose_fixes(table, fix)
    repo = source_repo(session.ops, session.lab)
    targets = session.targets(replace(selection, variant=None))
    kernels = list(dict.fromkeys((t.commit, t.arch) for t in targets))
    checks = []
    for commit, arch in kernels:
        release = release_of(session, repo, commit)
        who = kernel_identity(session.lab, session.ops, table,
                              Target(commit, arch, Variant("as is", (), ())), release)
        decided = {p.id: p for p in commits.decide(table, who)}
        evidence = {e.id: e for e in who.evidence or ()}
        for f in fixes:
            checks.append(_check(session, repo, table, f, Target(commit, arch, _variant(
                "as-is", fixes)), release, decided, evidence.get(f.id)))
    return checks


def _check(session: Session, repo: Path, table: Sequence[commits.Upstream],
           fix: commits.Upstream, as_is: Target, release: str,
           decided: dict[str, commits.Presence], found: presence.Evidence | None) -> Check:
    commit, arch = as_is.commit, as_is.arch
    mine = decided[fix.id]
    flags = tuple(f"{'prerequisite' if cid in fix.prerequisites else 'follow-up fix'} "
                  f"{cid} absent: {decided[cid].why}"
                  for cid in (*fix.prerequisites, *fix.followups)
                  if mine.present and not decided[cid].present)
    origins = [decided[c.id] for c in table for f in fix.fixes if presence.same_commit(c.id, f)]
    affected = not origins or any(p.present for p in origins)
    without, before, why = None, None, ""
    if mine.present:
        patch, why = _revert_patch(session, repo, fix, release, found)
        if patch:
            without = Target(commit, arch, replace(_variant(f"without-{fix.id}", [fix]),
                                                   patches=(patch,)))
        last = _release_before(session, repo, found.sha) if found is not None and found.sha \
            else ""
        if last:
            before = Target(describe(session.ops, repo, last), arch, as_is.variant)
    return Check(fix, commit, arch, mine.present, mine.why, flags, affected, as_is, without,
                 before, why)


def _variant(name: str, fixes: Sequence[commits.Upstream]) -> Variant:
    """Runs the fixes' reproducers only, declaring the fixes present: a reproducer that
    fails, or a report tied to it, is the bug showing."""
    tests = tuple(dict.fromkeys(t for f in fixes for t in f.tests))
    return Variant(name, (), (), backports=tuple(f.id for f in fixes), tests=tests)


def _release_before(session: Session, repo: Path, sha: str) -> str:
    """The last release (tag) of the history before the commit that brought the fix,
    else its parent; '' for a root commit."""
    tag = git(session.ops, repo, "describe", "--tags", "--abbrev=0", f"{sha}^", check=False)
    return git(session.ops, repo, "rev-parse", "--verify", "--quiet",
               f"{tag or sha + '^'}^{{commit}}", check=False)


def _revert_patch(session: Session, repo: Path, fix: commits.Upstream, release: str,
                  found: presence.Evidence | None) -> tuple[Path | None, str]:
    """The fix taken out of this kernel: the commit that brought it, reverted (a git
    tree), else the project's revert patch for the kernel's series."""
    if found is not None and found.sha:
        out = session.lab.workdir / "backports" / "reverts" / f"{found.sha[:16]}.patch"
        out.parent.mkdir(parents=True, exist_ok=True)
        raw = out.with_suffix(".diff")
        # the diff byte for byte: a hunk may end in a blank context line (" "), and
        # stripped output or a warning on stderr would make the patch corrupt
        done = session.ops.run(["git", "-C", str(repo), "diff", "--no-color", "--no-ext-diff",
                                "--no-renames", f"--output={raw}", found.sha, f"{found.sha}^"],
                               check=False, quiet=True)
        diff = raw.read_text() if done.returncode == 0 and raw.exists() else ""
        raw.unlink(missing_ok=True)
        if not diff.strip():
            return None, f"{found.sha[:12]} has no diff to revert"
        # named by the commit, worded without it: the same revert is the same kernel
        write_atomic(out, f"Revert \"{fix.subject}\" (./lab backports)\n---\n{diff}")
        return out, ""
    series = ".".join(release.split(".")[:2])
    patch = REVERTS / series / f"{fix.id}.patch"
    if patch.exists():
        return patch, ""
    return None, (f"no revert patch for {series} ({patch.relative_to(PROJECT)}) and no "
                  f"git history to revert it from")


def targets_of(checks: Sequence[Check]) -> list[Target]:
    wanted = [t for c in checks for t in (c.as_is, c.without, c.before) if t is not None]
    return list(dict.fromkeys(wanted))


def seen(store: Store, target: Target, fix: commits.Upstream) -> Seen:
    """What the fix's reproducers showed in a finished target."""
    path = store.target_dir(target)
    try:
        outcome = load_outcome(path / "metadata.json")
    except (OSError, ValueError):
        return Seen(None, "no result")
    took = sum(outcome.durations.get(k, 0.0) for k in ("build", "total_guest"))
    return replace(_seen(path, outcome, fix), seconds=round(took, 1))


def _seen(path: Path, outcome: TargetOutcome, fix: commits.Upstream) -> Seen:
    if outcome.stages.get(Stage.BUILD) is not Status.PASS:
        return Seen(None, f"not built: {outcome.reason}")
    if outcome.stages.get(Stage.BOOT) is not Status.PASS:
        return Seen(None, f"did not boot: {outcome.reason}")
    mine = set(fix.tests)
    reports = [r for r in outcome.reports if r.test in mine]
    if reports:
        return Seen(True, f"{reports[0].signature} in {reports[0].test}")
    try:
        cases = [c for c in junit.stored_cases(path / "junit.xml") if c.test_id in mine]
    except junit.JUnitError as exc:
        return Seen(None, f"its results are unreadable: {exc}")
    bad = [c for c in cases if c.status in (Status.FAIL, Status.ERROR)]
    if bad:
        return Seen(True, f"{bad[0].test_id}: {bad[0].status.value}: "
                          f"{bad[0].message.splitlines()[0] if bad[0].message else ''}"[:300])
    ran = [c for c in cases if c.status is Status.PASS]
    if not ran:
        return Seen(None, "none of its reproducers ran here (all skipped)")
    return Seen(False, f"clean: {len(ran)} reproducer(s) passed, no report")


def judge(check: Check, as_is: Seen, without: Seen | None, before: Seen | None) -> Judgement:
    if as_is.bug is None:
        return Judgement.ERROR
    if not check.present:
        if as_is.bug:
            return Judgement.MISSING
        return Judgement.MISSING_NOT_REPRODUCED if check.affected else Judgement.NOT_AFFECTED
    if as_is.bug:
        return Judgement.INEFFECTIVE
    # a revert that does not apply, or a kernel without the fix that does not boot,
    # proves nothing either way: unprovable, and the row says why
    back = any(s is not None and s.bug for s in (without, before))
    return Judgement.VERIFIED if back else Judgement.UNPROVABLE


def backports(session: Session, run_dir: Path | None, force: bool, selection: Selection,
              fix: str = "", seams: Seams = Seams()) -> BackportsResult:
    checks = plan(session, selection, fix)
    store = Store(run_dir or session.lab.workdir / "runs" / f"{session.lab.path.stem}-backports")
    run = run_targets(session, store, force, targets_of(checks), seams)
    verdicts = []
    for c in checks:
        a = seen(store, c.as_is, c.fix)
        w = seen(store, c.without, c.fix) if c.without else None
        b = seen(store, c.before, c.fix) if c.before else None
        verdicts.append(FixVerdict(c, judge(c, a, w, b), a, w, b))
    write_results(store.root, verdicts)
    report.write_all(store)  # the page again, now with its backports section
    print("\n" + table(verdicts) + f"\n\nbackports: {store.root / 'backports.json'}\n"
          f"junit:     {store.root / 'backports.xml'}", flush=True)
    if run.verdict is Verdict.LAB and any(v.judgement is Judgement.ERROR for v in verdicts):
        final = Verdict.LAB
    else:
        final = Verdict.OK if all(v.good for v in verdicts) else Verdict.FAILED
    return BackportsResult(final, tuple(verdicts), store.root)


def rows(verdicts: Sequence[FixVerdict]) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for v in verdicts:
        c = v.check
        out.append({
            "fix": c.fix.id, "subject": c.fix.subject, "cve": c.fix.cve,
            "kernel": c.commit.name, "sha": c.commit.sha, "arch": c.arch.name,
            "verdict": v.judgement.value, "present": c.present, "evidence": c.evidence,
            "flags": list(c.flags),
            "as_is": v.as_is.detail,
            "without": v.without.detail if v.without else (c.no_without or None),
            "before": (f"{c.before.commit.name}: {v.before.detail}"
                       if c.before and v.before else None),
            "seconds": round(sum(s.seconds for s in (v.as_is, v.without, v.before) if s), 1)})
    return out


def table(verdicts: Sequence[FixVerdict]) -> str:
    lines = [f"{'fix':<11} {'kernel':<14} {'arch':<7} {'verdict':<23} evidence"]
    for r, v in zip(rows(verdicts), verdicts):
        verdict = str(r["verdict"]) + (" INCOMPLETE" if v.check.flags else "")
        lines.append(f"{r['fix']:<11} {str(r['kernel'])[:14]:<14} {r['arch']:<7} "
                     f"{verdict:<23} {'present' if r['present'] else 'absent'}: "
                     f"{r['evidence']} [{r['seconds']} s]")
        for key in ("as_is", "without", "before"):
            if r[key]:
                lines.append(f"{'':<34}{key.replace('_', ' ')}: {r[key]}")
        for flag in v.check.flags:
            lines.append(f"{'':<34}flag: {flag}")
    return "\n".join(lines)


def write_results(root: Path, verdicts: Sequence[FixVerdict]) -> None:
    """backports.json (read by the page), backports.xml: one case per fix, kernel, arch."""
    data = rows(verdicts)
    write_json(root / "backports.json", {"backports": data})
    cases = []
    for r, v in zip(data, verdicts):
        status = Status.PASS if v.good else \
            Status.ERROR if v.judgement is Judgement.ERROR else Status.FAIL
        why = "; ".join([str(r["verdict"]), *v.check.flags])
        cases.append(junit.Case("backports", str(r["fix"]), f"{r['kernel']} {r['arch']}",
                                status, float(str(r["seconds"])), why,
                                json.dumps(r, indent=1)))
    junit.write(cases, "backports", {}, root / "backports.xml")
