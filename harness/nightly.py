"""./lab nightly: follow a branch (bpf-next's master), test what landed since the last
night, and say what regressed, what got fixed and what is new. It composes the stages
that exist: the branch is fetched into the lab's git tree, its commits run through
the matrix's run_targets (everything built or run before is reused), the night goes
into the history database and is classified against the night before; a regression
is run again on a fresh boot before it is declared, and one that does not repeat is
unstable."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from html import escape
from pathlib import Path

from sqlalchemy.engine import Engine

from harness import history, kcidb
from harness.bisect import Bisection, bisect, lab_case
from harness.config import Lab
from harness.errors import LabError, UserError
from harness.gitrepo import describe, git
from harness.history import Change, Classified, Result, Seen, SigChange
from harness.junit import JUnitError, stored_cases
from harness.main import Session
from harness.matrix import Seams, run_targets
from harness.model import Selection, Stage, Status, Target, Verdict
from harness.ops import TIMED_OUT
from harness.results import write_atomic, write_json
from harness.store import Store, load_outcome

TRACKING = "refs/remotes/lab"  # where the followed branch is fetched to


@dataclass(frozen=True)
class NightPlan:
    head: str
    since: str | None  # the head last night tested, when it is an ancestor of tonight's
    commits: tuple[str, ...]  # to test tonight, oldest first; the head is last
    dropped: tuple[str, ...]  # over max_commits: the oldest, not tested


@dataclass
class NightResult:
    verdict: Verdict
    night: history.Night | None
    plan: NightPlan
    changes: list[Classified] = field(default_factory=list)
    signatures: list[tuple[str, SigChange]] = field(default_factory=list)
    bisections: list[Bisection] = field(default_factory=list)
    summary: str = ""
    ran: int = 0  # targets built and booted tonight (the rest came from the store)


def fetch(session: Session) -> str:
    """The followed branch's head, fetched from the remote in bounded time into the
    lab's git tree (made bare on the first night). Offline: one line, exit 2."""
    src, ops = session.lab.source, session.ops
    assert src.git is not None and src.remote and src.branch
    repo = src.git
    if not (repo / "HEAD").exists() and not (repo / ".git").exists():
        repo.mkdir(parents=True, exist_ok=True)
        ops.run(["git", "init", "-q", "--bare", str(repo)], quiet=True)
    ref = f"{TRACKING}/{src.branch}"
    done = ops.run(["git", "-C", str(repo), "fetch", "--quiet", "--no-tags", src.remote,
                    f"+refs/heads/{src.branch}:{ref}"], check=False, quiet=True,
                   timeout=src.fetch_timeout)
    if done.returncode != 0:
        lines = [line for line in done.stdout.splitlines() if line.strip()]
        why = (f"no answer within {src.fetch_timeout:g} s (source.fetch_timeout)"
               if done.returncode == TIMED_OUT else lines[-1] if lines else
               f"git exit {done.returncode}")
        raise LabError(f"fetching {src.branch} from {src.remote}: {why}")
    return git(ops, repo, "rev-parse", f"{ref}^{{commit}}")


def choose(session: Session, head: str, last: str | None) -> NightPlan:
    """The head always, and every commit since last night's head that touches
    source.paths; past max_commits the newest are kept and the rest named."""
    src, ops = session.lab.source, session.ops
    assert src.git is not None
    since = None
    if last and last != head and ops.run(
            ["git", "-C", str(src.git), "merge-base", "--is-ancestor", last, head],
            check=False, quiet=True).returncode == 0:
        since = last
    shas: list[str] = []
    if since:
        shas = git(ops, src.git, "rev-list", "--reverse", "--topo-order", f"{since}..{head}",
                   "--", *src.paths).split()
    shas = [s for s in shas if s != head] + [head]
    keep = shas[-src.max_commits:]
    return NightPlan(head, since, tuple(keep), tuple(shas[:-src.max_commits]))


BUILD, BOOT = "lab.build", "lab.boot"  # a target's stage as one result of its own


def _results(store: Store, targets: Sequence[Target]) -> tuple[list[Result], list[Seen]]:
    """Each target's test results; a target that did not build or boot is one result
    (lab.build, lab.boot), not every test it could not run: one regression, not 32."""
    results, seen = [], []
    for target in targets:
        where = store.target_dir(target)
        key = (target.commit.sha, target.column, target.variant.name)
        try:
            outcome = load_outcome(where / "metadata.json")
        except ValueError:
            continue  # no result: the run's verdict says the lab failed
        stage = next((name for name, s in ((BUILD, outcome.stages.get(Stage.BUILD)),
                                           (BOOT, outcome.stages.get(Stage.BOOT)))
                      if s is not Status.PASS), None)
        if stage == BUILD:
            results.append(Result(*key, BUILD, Status.FAIL.value, 0.0, outcome.reason[:2000]))
        elif stage == BOOT:
            results += [Result(*key, BUILD, Status.PASS.value),
                        Result(*key, BOOT, Status.FAIL.value, 0.0, outcome.reason[:2000])]
        else:
            results += [Result(*key, BUILD, Status.PASS.value), Result(*key, BOOT, Status.PASS.value)]
            try:
                cases = stored_cases(where / "junit.xml")
            except (OSError, JUnitError):
                cases = []
            results += [Result(*key, c.test_id, c.status.value, c.duration, c.message[:2000])
                        for c in cases]
        seen += [Seen(*key, ref.signature, ref.test, ref.expected) for ref in outcome.reports]
    return results, seen


def classify(before: list[Result], now: list[Result]) -> list[Classified]:
    """history.classify, less the noise of a stage that failed: when a target did not
    build or boot, its tests are not missing (tonight) nor new (after such a night);
    the stage is the one change."""
    def down(results: list[Result]) -> set[tuple[str, str]]:
        return {(r.arch, r.variant) for r in results
                if r.test in (BUILD, BOOT) and r.status in history.BAD}
    was, now_down = down(before), down(now)
    return [c for c in history.classify(before, now)
            if not (c.change is Change.MISSING and c.key[1:] in now_down)
            and not (c.change is Change.NEW and c.key[1:] in was)]


def _database(lab: Lab) -> Engine:
    return history.open_db(lab.history or history.default_url(lab.workdir))


def _retry(session: Session, run_dir: Path, head: list[Target],
           regressed: list[Classified], seams: Seams) -> dict[history.Key, str]:
    """Each regressed test once more, on a fresh boot of the same kernel, alone with
    the other regressions of its target."""
    by_target: dict[tuple[str, str], list[str]] = {}
    for c in regressed:
        test, arch, variant = c.key
        by_target.setdefault((arch, variant), []).append(test)
    targets = []
    for t in head:
        tests = by_target.get((t.column, t.variant.name))
        if tests:  # the lab's own cases (kernel-health) need the whole suites again
            share = () if any(lab_case(x) for x in tests) else tuple(tests)
            targets.append(replace(t, variant=replace(t.variant, tests=share)))
    if not targets:
        return {}
    # a store of its own: a fresh boot of the same (cached) kernel, no rebuild
    store = Store(run_dir / "retries" / head[0].commit.sha[:12])
    run_targets(session, store, False, targets, seams)
    results, _ = _results(store, targets)
    return {(r.test, r.arch, r.variant): r.status for r in results}


def nightly(session: Session, run_dir: Path | None = None, force: bool = False,
            seams: Seams = Seams()) -> NightResult:
    lab = session.lab
    src = lab.source
    if not (src.remote and src.branch):
        raise UserError(f"{lab.path}: source.remote and source.branch: ./lab nightly follows "
                        "a branch; name it and where to fetch it from")
    engine = _database(lab)
    name = lab.path.stem
    nights = history.nights_of(engine, name, src.branch)
    previous = nights[-1] if nights else None
    head = fetch(session)
    plan = choose(session, head, previous.head if previous else None)
    for sha in plan.dropped:
        print(f"nightly: not testing {sha[:12]} (over source.max_commits "
              f"{src.max_commits}; the newest are kept)", flush=True)
    tonight = Session(replace(lab, source=replace(src, commits=plan.commits, range=None)),
                      session.ops)
    targets = tonight.targets(Selection())
    store = Store(run_dir or lab.workdir / "runs" / f"{name}-nightly")
    run = run_targets(tonight, store, force, targets, seams)
    results, seen = _results(store, targets)
    head_targets = [t for t in targets if t.commit.sha == head]
    now = [r for r in results if r.sha == head]
    before = history.results_of(engine, previous.id) if previous else []
    before = [r for r in before if previous and r.sha == previous.head]
    changes = classify(before, now)
    # a build failure is not retried: the same tree fails the same way
    regressed = [c for c in changes if c.change is Change.REGRESSION and c.key[0] != BUILD]
    retried = _retry(tonight, store.root, head_targets, regressed, seams) if regressed else {}
    results = [replace(r, retry=retried.get((r.test, r.arch, r.variant)))
               if r.sha == head else r for r in results]
    now = [r for r in results if r.sha == head]
    changes = classify(before, now)
    old_seen = history.seen_of(engine, previous.id) if previous else []
    sigs = history.classify_signatures([s for s in old_seen if previous and
                                        s.sha == previous.head],
                                       [s for s in seen if s.sha == head])
    confirmed = any(c.change is Change.REGRESSION for c in changes)
    verdict = Verdict.LAB if run.verdict is Verdict.LAB else \
        Verdict.FAILED if confirmed else Verdict.OK
    night = history.record(engine, name, src.branch, head, describe(
        session.ops, src.git, head).name if src.git else head[:12], results, seen,
        verdict.value)
    bisections = []
    if previous:  # between last night's head (good) and tonight's, over every commit
        for c in changes:
            # a kernel that stopped building is not bisected here: a step judges a
            # test on a built kernel (a commit that does not build is skipped)
            if c.change is Change.REGRESSION and c.key[0] != BUILD:
                test, arch, variant = c.key
                repeat = 2 if history.ever_unstable(engine, name, c.key) else 1
                found = bisect(session, previous.head, head, test, arch, variant, repeat,
                               store.root / "bisect" / head[:12] / f"{arch}-{variant}",
                               seams)
                print(found.text(), flush=True)
                bisections.append(found)
    history.record_culprits(engine, night.id, [
        history.Culprit(b.test, b.arch, b.variant, b.culprit, b.subject, b.verification,
                        b.confidence) for b in bisections])
    kcidb.write(kcidb.export(store, targets, src.branch, src.remote),
                store.root / "kcidb.json")
    write_atomic(store.root / "nights.html", nights_page(engine, name))
    result = NightResult(verdict, night, plan, changes, sigs, bisections, ran=run.ran)
    flipped = {c.key: history.flips(engine, name, c.key) for c in changes
               if c.change is Change.UNSTABLE}
    result.summary = summarize(result, previous, flipped)
    write_json(store.root / "night.json", to_json(result))
    write_atomic(store.root / "night.txt", result.summary + "\n")  # for a CI job to mail
    return result


def summarize(r: NightResult, previous: history.Night | None,
              flipped: dict[history.Key, int] | None = None) -> str:
    p = r.plan
    lines = [f"night {r.night.id if r.night else '?'}: {p.head[:12]} "
             f"({len(p.commits)} commit(s) tested"
             + (f", {len(p.dropped)} over max_commits not tested" if p.dropped else "")
             + (f"; since {p.since[:12]}" if p.since else "; first night" if not previous
                else "; nothing new since last night" if previous.head == p.head
                else f"; last night's {previous.head[:12]} is not an ancestor: head only")
             + ")"]
    order = [Change.REGRESSION, Change.UNSTABLE, Change.STILL_FAILING, Change.FIXED,
             Change.NEW, Change.MISSING]
    for kind in order:
        found = [c for c in r.changes if c.change is kind]
        for c in found:
            test, arch, variant = c.key
            flips = (flipped or {}).get(c.key)
            lines.append(f"  {kind.value:<14} {test} ({arch}/{variant}): "
                         f"{c.before or '-'} -> {c.now or '-'}"
                         + (f", passed on a fresh boot ({flips} flips so far)"
                            if flips is not None else ""))
    for sig, change in r.signatures:
        lines.append(f"  report {change.value:<10} {sig}")
    for b in r.bisections:
        lines.append(f"  bisected {b.test} ({b.arch}/{b.variant}): " + (
            f"{b.culprit[:12]} {b.subject!r} by {b.author}, {len(b.steps)} steps, "
            f"{b.seconds:.0f} s, revert {b.verification}, confidence {b.confidence}"
            if b.culprit else "no single culprit"))
    if len(lines) == 1:
        lines.append("  nothing changed since last night" if previous else
                     "  first night: nothing to compare with")
    lines.append(f"verdict: {r.verdict.value}")
    return "\n".join(lines)


def to_json(r: NightResult) -> dict[str, object]:
    return {"night": r.night.id if r.night else None, "head": r.plan.head,
            "since": r.plan.since, "commits": list(r.plan.commits),
            "dropped": list(r.plan.dropped), "verdict": r.verdict.value,
            "changes": [{"test": c.key[0], "arch": c.key[1], "variant": c.key[2],
                         "change": c.change.value, "before": c.before, "now": c.now}
                        for c in r.changes],
            "signatures": [{"signature": s, "change": c.value} for s, c in r.signatures],
            "bisections": [b.to_json() for b in r.bisections]}


def nights_text(session: Session) -> str:
    """./lab history: the lab's nights, oldest first."""
    lab = session.lab
    engine = _database(lab)
    found = history.nights_of(engine, lab.path.stem)
    if not found:
        return f"no night recorded for {lab.path.stem} yet (./lab nightly records them)"
    rows = [f"{n.id:>4}  {n.started}  {n.branch:<20} {n.head[:12]}  {n.verdict}" for n in found]
    return "\n".join(["night  started (UTC)        branch               head          verdict",
                      *rows])



def nights_page(engine: Engine, lab: str) -> str:
    """Every night of the lab: its head, counts, regressions with their culprit; every
    unexpected report signature with the first and last night it was seen."""
    rows: list[list[str]] = []
    seen: dict[str, tuple[int, int, int]] = {}
    for n in history.nights_of(engine, lab):
        results = [r for r in history.results_of(engine, n.id) if r.sha == n.head]
        bad = sum(1 for r in results if r.status in history.BAD)
        found = "; ".join(
            f"{c.test} ({c.arch}/{c.variant}): " + (
                f"{c.sha[:12]} {c.subject} [{c.verification}, {c.confidence}]" if c.sha
                else "no single culprit") for c in history.culprits_of(engine, n.id))
        rows.append([str(n.id), n.started, n.branch, f"{n.head_name} ({n.head[:12]})",
                     f"{len(results) - bad}/{len(results)} pass", n.verdict,
                     found or "none"])
        for sig in history.seen_of(engine, n.id):
            if not sig.expected:
                first, _, count = seen.get(sig.signature, (n.id, n.id, 0))
                seen[sig.signature] = (first, n.id, count + 1)

    def table(head: list[str], body: list[list[str]], empty: str) -> str:
        cells = "".join("<tr>" + "".join(f"<td>{escape(v)}</td>" for v in row) + "</tr>"
                        for row in body) or f'<tr><td colspan="{len(head)}">{escape(empty)}</td></tr>'
        return "<table><tr>" + "".join(f"<th>{escape(h)}</th>" for h in head) + \
            f"</tr>{cells}</table>"
    sigs = [[s, f"night {a}", f"night {b}", str(c)] for s, (a, b, c) in sorted(seen.items())]
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>bpflab nights: {escape(lab)}</title><style>
body{{font-family:sans-serif;margin:1.5em}} table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #999;padding:.4em;vertical-align:top;text-align:left}}
</style></head><body>
<h1>bpflab nights: {escape(lab)}</h1>
<h2>Nights</h2>
{table(["night", "started (UTC)", "branch", "head", "tests", "verdict",
        "regressions bisected"], rows, "none: no night recorded")}
<h2>Kernel report signatures across nights</h2>
{table(["signature", "first seen", "last seen", "seen on"], sigs,
       "none: no unexpected report in any night")}
</body></html>
"""
