"""The run's report, rebuilt from the store alone: a terminal table (commits x
arch/variant), a JSON summary, and a static HTML page with the matrix, per-test
first-bad/first-good commits and every kernel report signature. Everything on the
page comes from kernels, guests and git and is escaped: a tag, test name or report
text runs nothing."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from html import escape
from pathlib import Path

from harness import kreport
from harness.errors import UserError
from harness.junit import Case, JUnitError, stored_cases
from harness.model import ReportRef, Stage, Status, TargetOutcome
from harness.results import write_atomic, write_json
from harness.store import Store

BAD = (Status.FAIL, Status.ERROR)


@dataclass(frozen=True)
class Cell:
    path: Path
    outcome: TargetOutcome
    cases: tuple[Case, ...]

    @property
    def column(self) -> str:
        return f"{self.outcome.column}/{self.outcome.variant}"

    def short(self) -> str:
        """A glance: 'build fail', 'boot panic', '31/32 pass, 1 bad [2 reports]'."""
        o = self.outcome
        build, boot = o.stages.get(Stage.BUILD), o.stages.get(Stage.BOOT)
        if build is not Status.PASS:
            return f"build {(build or Status.SKIP).value}"
        if boot is Status.ERROR:
            return "lab error"  # the lab could not run a boot: the reason says why
        if boot is not Status.PASS:
            return f"boot {o.exit_reason or (boot or Status.SKIP).value}"
        c = o.counts
        text = f"{c.get('pass', 0)}/{c.get('total', 0)} pass"
        bad = c.get("fail", 0) + c.get("error", 0)
        n = len(o.signatures)
        return text + (f", {bad} bad" if bad else "") + \
            (f" [{n} report{'s' * (n > 1)}]" if n else "")


def rederive(target_dir: Path, refs: tuple[ReportRef, ...]) -> tuple[ReportRef, ...]:
    """Each stored report's signature and syzkaller title from its stored text, by the
    parser as it is now: a parser change reaches earlier runs through ./lab report.
    Whether the variant expected it stays what the run decided."""
    out = []
    for ref in refs:
        try:
            text = (target_dir / ref.file).read_text(errors="replace")
        except OSError:
            out.append(ref)
            continue
        found = kreport.parse(text.splitlines())
        if len(found) != 1:
            out.append(ref)  # the text no longer reads as one report: keep what was stored
            continue
        r = found[0]
        out.append(replace(ref, signature=r.signature, syz_title=r.syz_title or r.signature,
                           kind=r.kind, corrupted=r.corrupted))
    return tuple(out)


def load(store: Store) -> list[Cell]:
    cells = []
    for path, outcome in store.outcomes():
        outcome = replace(outcome, reports=rederive(path, outcome.reports))
        try:
            cases = tuple(stored_cases(path / "junit.xml")) \
                if (path / "junit.xml").exists() else ()
        except JUnitError as exc:
            print(f"report: {path.name}: {exc}", flush=True)
            cases = ()
        cells.append(Cell(path, outcome, cases))
    return cells


def first_bad_good(seq: list[tuple[str, Status]]) -> tuple[str | None, str | None]:
    """Along history order: the first commit whose result was not as expected, and
    the first commit after it where the result is as expected again."""
    first_bad = first_good = None
    for name, status in seq:
        if first_bad is None and status in BAD:
            first_bad = name
        elif first_bad is not None and status is Status.PASS:
            first_good = name
            break
    return first_bad, first_good


def transitions(cells: list[Cell]) -> list[dict[str, str | None]]:
    """Per test and arch/variant: first-bad and first-good commit, for tests that
    were ever bad."""
    series: dict[tuple[str, str], list[tuple[str, Status]]] = {}
    for cell in cells:  # cells come in history order
        for case in cell.cases:
            key = (case.test_id, cell.column)
            series.setdefault(key, []).append((cell.outcome.name, case.status))
    rows = []
    for (test, column), seq in sorted(series.items()):
        bad, good = first_bad_good(seq)
        if bad:
            rows.append({"test": test, "column": column, "first_bad": bad, "first_good": good})
    return rows


def signatures(cells: list[Cell]) -> list[dict[str, object]]:
    """Every signature: where it was seen (commit, column, tests, expected or not),
    first and last commit. From the outcomes' report references alone."""
    seen: dict[str, dict[str, object]] = {}
    for cell in cells:
        for sig in cell.outcome.signatures:
            refs = [r for r in cell.outcome.reports if r.signature == sig]
            entry = seen.setdefault(sig, {"signature": sig, "syz_title": refs[0].syz_title,
                                          "where": [], "first_seen": None, "last_seen": None})
            tests = list(dict.fromkeys(r.test or "(no test)" for r in refs))
            note = ", ".join(tests) + (" - expected by the variant"
                                       if all(r.expected for r in refs) else "")
            where = entry["where"]
            assert isinstance(where, list)
            where.append(f"{cell.outcome.name} {cell.column} ({note})")
            entry["first_seen"] = entry["first_seen"] or cell.outcome.name
            entry["last_seen"] = cell.outcome.name
    return list(seen.values())


def summary(cells: list[Cell], trans: list[dict[str, str | None]],
            reports: list[dict[str, object]]) -> dict[str, object]:
    return {"targets": [{"commit": c.outcome.commit, "name": c.outcome.name,
                         "arch": c.outcome.arch, "profile": c.outcome.column,
                         "variant": c.outcome.variant,
                         "status": c.outcome.status.value,
                         "stages": {k.value: v.value for k, v in c.outcome.stages.items()},
                         "reason": c.outcome.reason, "counts": c.outcome.counts,
                         "signatures": list(c.outcome.signatures),
                         "kernel_release": c.outcome.kernel_release,
                         "durations": c.outcome.durations, "dir": c.path.name}
                        for c in cells],
            "transitions": trans, "reports": reports}


def table(cells: list[Cell], reports: list[dict[str, object]]) -> str:
    columns = sorted({c.column for c in cells})
    rows: dict[str, dict[str, str]] = {}
    for cell in cells:
        rows.setdefault(cell.outcome.name, {})[cell.column] = cell.short()
    width = max([len(c.short()) for c in cells] + [len(c) for c in columns] + [10])
    first = max([len(n) for n in rows] + [6])
    lines = [f"{'commit':<{first}}  " + "  ".join(f"{c:<{width}}" for c in columns)]
    for name, by_col in rows.items():
        lines.append(f"{name:<{first}}  " + "  ".join(
            f"{by_col.get(c, '-'):<{width}}" for c in columns))
    for cell in cells:
        if cell.outcome.reason:
            lines.append(f"  why {cell.outcome.name} {cell.column}: {cell.outcome.reason}")
    for sig in reports:
        where = sig["where"]
        assert isinstance(where, list)
        syz = f" [syzkaller: {sig['syz_title']}]" if sig["syz_title"] != sig["signature"] else ""
        lines.append(f"  report: {sig['signature']}{syz}  ({', '.join(map(str, where))})")
    return "\n".join(lines)


def rebuild(root: Path) -> tuple[str, Path]:
    """invoke report: the table and page of an existing run directory."""
    if not (root / "targets").is_dir():
        raise UserError(f"{root}: not a run directory (no targets/ in it; matrix runs "
                        "are stored in <workdir>/runs/<lab name>)")
    return write_all(Store(root))


def write_all(store: Store) -> tuple[str, Path]:
    """Rebuild summary.json and index.html from the store; return the table."""
    cells = load(store)
    trans, reports = transitions(cells), signatures(cells)
    write_json(store.root / "summary.json", summary(cells, trans, reports))
    page = store.root / "index.html"
    write_atomic(page, render_html(cells, store.root, trans, reports,
                                   backports_section(store.root)))
    return table(cells, reports), page


def _link(root: Path, path: Path, text: str) -> str:
    return f'<a href="{escape(os.path.relpath(path, root))}">{escape(text)}</a>'


def _cell_html(cell: Cell, root: Path) -> str:
    o = cell.outcome
    files = [p for p in (cell.path / n for n in ("junit.xml", "console.log", "build.log",
                                                 "suites.log")) if p.exists()]
    files += sorted(cell.path.glob("console-*.log")) + sorted((cell.path / "kasan").glob("*.txt"))
    links = " ".join(_link(root, p, p.name) for p in files)
    sigs = "".join(f'<div class="sig">{escape(s)}</div>' for s in o.signatures)
    why = f'<div class="why">{escape(o.reason)}</div>' if o.reason else ""
    return (f'<td class="{escape(o.status.value)}"><b>{escape(cell.short())}</b>{why}{sigs}'
            f'<div class="links">{links}</div></td>')


def _rows(rows: list[list[str]], empty: str, width: int) -> str:
    if not rows:
        return f'<tr><td colspan="{width}">{escape(empty)}</td></tr>'
    return "".join("<tr>" + "".join(f"<td>{escape(v)}</td>" for v in row) + "</tr>"
                   for row in rows)


def backports_section(root: Path) -> str:
    """The verdicts of ./lab backports (backports.json) when this run has them."""
    try:
        found = json.loads((root / "backports.json").read_text()).get("backports")
    except (OSError, ValueError, AttributeError):
        return ""
    if not isinstance(found, list):
        return ""
    rows = [[str(r.get(k) or "") for k in ("fix", "kernel", "arch", "verdict", "evidence")]
            + ["; ".join(f"{k.replace('_', ' ')}: {r[k]}" for k in ("as_is", "without",
                                                                     "before") if r.get(k))
               + "".join(f"; flag: {f}" for f in r.get("flags") or [])]
            for r in found if isinstance(r, dict)]
    return ("<h2>Backports: is each fix in the kernel, and does it fix the bug there?</h2>\n"
            '<table id="backports"><tr><th>fix</th><th>kernel</th><th>arch</th>'
            "<th>verdict</th><th>evidence</th><th>runs</th></tr>"
            f"{_rows(rows, 'no fix was checked', 6)}</table>")


def facts_section(root: Path, cells: list[Cell]) -> str:
    """The run's facts (run.json, written when the run starts) and the accelerators
    its targets ran on."""
    try:
        facts = json.loads((root / "run.json").read_text())
    except (OSError, ValueError):
        facts = {}
    if not isinstance(facts, dict):
        facts = {}
    rows = [[k, str(facts[k])] for k in ("lab", "started", "host", "targets") if k in facts]
    for key in ("qemu", "compiler"):
        found = facts.get(key)
        if isinstance(found, dict):
            rows += [[f"{key} ({arch})", str(v)] for arch, v in sorted(found.items())]
    accels = sorted({c.outcome.accel for c in cells if c.outcome.accel})
    rows.append(["accelerator", ", ".join(accels) or "none: no target booted"])
    if not facts:
        rows.insert(0, ["run facts", "not recorded (a run from before run.json)"])
    return ('<h2>Run</h2>\n<table id="facts"><tr><th>fact</th><th>value</th></tr>'
            f"{_rows(rows, 'none', 2)}</table>")


def _case_html(case: Case | None) -> str:
    if case is None:
        return '<td class="skip">-</td>'
    head = f"{case.status.value} {case.duration:.1f} s"
    detail = "\n".join([case.message] + [f"{k}: {v}" for k, v in case.properties]).strip()
    if not detail:
        return f'<td class="{escape(case.status.value)}">{escape(head)}</td>'
    return (f'<td class="{escape(case.status.value)}"><details><summary>{escape(head)}'
            f"</summary><pre>{escape(detail[:4000])}</pre></details></td>")


def grid_section(cells: list[Cell]) -> str:
    """Every test x every target: status and seconds, the reason or the test's figures
    one click away."""
    by_test: dict[str, dict[int, Case]] = {}
    for i, cell in enumerate(cells):
        for case in cell.cases:
            by_test.setdefault(case.test_id, {})[i] = case
    head = "".join(f"<th>{escape(c.outcome.name)}<br>{escape(c.column)}</th>" for c in cells)
    body = "".join(f"<tr><th>{escape(test)}</th>" +
                   "".join(_case_html(row.get(i)) for i in range(len(cells))) + "</tr>"
                   for test, row in sorted(by_test.items()))
    if not by_test:
        body = f'<tr><td colspan="{len(cells) + 1}">none: no target ran a test</td></tr>'
    return ('<h2>Tests &times; targets</h2>\n<table id="tests"><tr><th>test</th>'
            f"{head}</tr>{body}</table>")


def render_html(cells: list[Cell], root: Path, trans_rows: list[dict[str, str | None]],
                reports: list[dict[str, object]], extra: str = "") -> str:
    columns = sorted({c.column for c in cells})
    by_name: dict[str, dict[str, Cell]] = {}
    for cell in cells:
        by_name.setdefault(cell.outcome.name, {})[cell.column] = cell
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    body = "".join(
        f"<tr><th>{escape(name)}</th>" + "".join(
            _cell_html(row[c], root) if c in row else "<td>-</td>" for c in columns) + "</tr>"
        for name, row in by_name.items())
    trans = _rows([[str(t["test"]), str(t["column"]), str(t["first_bad"]),
                    str(t["first_good"] or "-")] for t in trans_rows],
                  "none: every test was as expected on every target", 4)
    sigs = _rows([[str(s["signature"]), str(s["syz_title"]),
                   ", ".join(map(str, s["where"] if isinstance(s["where"], list) else [])),
                   str(s["first_seen"]), str(s["last_seen"])] for s in reports],
                 "none: no kernel printed a report", 5)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>bpflab matrix</title><style>
body{{font-family:sans-serif;margin:1.5em}} table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #999;padding:.4em;vertical-align:top;text-align:left}}
td.pass{{background:#d9f2d9}} td.fail,td.error{{background:#f8d0d0}} td.skip{{background:#eee}}
.sig{{font-family:monospace;color:#900}} pre{{white-space:pre-wrap;max-width:40em}} .why{{font-size:85%}} .links{{font-size:80%}}
</style></head><body>
<h1>bpflab: commit &times; arch matrix</h1>
<table id="matrix"><tr><th>commit</th>{head}</tr>{body}</table>
<h2>Tests not as expected: first bad, first good</h2>
<table id="transitions"><tr><th>test</th><th>arch/variant</th><th>first bad</th>
<th>first good</th></tr>{trans}</table>
<h2>Kernel reports</h2>
<table id="reports"><tr><th>signature</th><th>syzkaller title</th><th>where</th>
<th>first seen</th><th>last seen</th></tr>{sigs}</table>
{grid_section(cells)}
{extra}
{facts_section(root, cells)}
</body></html>
"""
