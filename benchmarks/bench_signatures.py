"""How closely the lab's report titles follow syzkaller's. Runs harness.kreport over
corpora of titled console logs (syzkaller's pkg/report/testdata/linux/report files,
or the lab's tests/data/reports: header lines "TITLE: ...", "ALT: ...",
"CORRUPTED: ...", an empty line, then the log) and prints a table per family of
bugs: files, reports found, exact titles (syz_title and the lab's signature),
titles matching an alternative, and the same for the parser as it was before it
followed syzkaller (harness/kreport.py read from git at run time, never copied).

    .venv/bin/python benchmarks/bench_signatures.py [DIR ...] [--before REF] [--misses]

Columns: files; found (a report at all; for "(no report expected)" a false alarm);
whole (files not marked CORRUPTED, whose titles are syzkaller's best guess on a
broken log); exact (syz_title == TITLE); signature (the lab's signature == TITLE);
alt (the title or one of its alternatives is TITLE or one of the file's ALT);
before found / before exact (the old parser's signature == TITLE)."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness import kreport  # noqa: E402

DEFAULT_DIRS = [Path("/work/corpus/syzkaller"), ROOT / "tests" / "data" / "reports"]
BEFORE_PATH = "harness/kreport.py"
FAMILIES: list[tuple[str, str]] = [
    ("KASAN", r"^KASAN:"),
    ("KMSAN", r"^KMSAN:"),
    ("KCSAN", r"^KCSAN:"),
    ("KFENCE", r"^KFENCE:"),
    ("UBSAN", r"^UBSAN:"),
    ("memory leak", r"^memory leak"),
    ("hung task", r"^INFO: task (hung|can't die)"),
    ("RCU stall", r"^INFO: rcu detected stall"),
    ("lockup", r"^BUG: (soft|workqueue) lockup"),
    ("lockdep", r"^(possible deadlock|inconsistent lock state)|^(WARNING|BUG|INFO): "
                r"(locking bug|bad unlock balance|held lock freed|nested lock|lock held|"
                r"still has locks held|MAX_STACK_TRACE|trying to register non-static key|"
                r"suspicious RCU)"),
    ("WARNING", r"^WARNING"),
    ("general protection fault", r"^general protection fault"),
    ("panic", r"^(kernel panic|kernel stack overflow|PANIC)"),
    ("BUG", r"^(BUG|kernel BUG)"),
    ("other", r""),
]
NO_REPORT = "(no report expected)"


@dataclass(frozen=True)
class Case:
    path: Path
    title: str  # "" when no report is expected
    alt: tuple[str, ...]
    corrupted: bool
    log: list[str]


@dataclass(frozen=True)
class Outcome:
    found: bool
    syz_title: str
    signature: str
    alt: tuple[str, ...]
    corrupted: str
    before: str  # the old parser's signature


def read_case(path: Path) -> Case | None:
    """A titled log; None for files that are not one (READMEs, scripts)."""
    lines = path.read_text(errors="replace").splitlines()
    if "" not in lines:
        return None
    end = lines.index("")
    fields: dict[str, list[str]] = {}
    for line in (x for x in lines[:end] if not x.startswith("#")):
        key, colon, value = line.partition(":")
        if not (colon and key.isupper()):
            return None
        fields.setdefault(key, []).append(value.strip())
    log = lines[end + 1:]
    log = log[:log.index("REPORT:")] if "REPORT:" in log else log  # expected text follows
    return Case(path, (fields.get("TITLE") or [""])[0], tuple(fields.get("ALT", [])),
                bool(fields.get("CORRUPTED")), log)


def family(title: str) -> str:
    if not title:
        return NO_REPORT
    return next(name for name, pattern in FAMILIES if re.search(pattern, title))


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout


def before_source(ref: str) -> tuple[str, str]:
    """kreport.py at `ref`, or at the newest commit before the syzkaller-style
    rewrite (the one that does not use kreport_rules) when `ref` already has it."""
    source = git("show", f"{ref}:{BEFORE_PATH}")
    if "kreport_rules" not in source:
        return ref, source
    for commit in git("log", "--format=%H", ref, "--", BEFORE_PATH).split():
        source = git("show", f"{commit}:{BEFORE_PATH}")
        if "kreport_rules" not in source:
            return commit[:12], source
    raise SystemExit(f"no version of {BEFORE_PATH} before the rewrite at {ref}")


def load_before(ref: str) -> tuple[str, Callable[[list[str]], list[object]]]:
    used, source = before_source(ref)
    module = types.ModuleType("kreport_before")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source, f"{used}:{BEFORE_PATH}", "exec"), module.__dict__)
    parse: Callable[[list[str]], list[object]] = module.parse
    return used, parse


def run(case: Case, before: Callable[[list[str]], list[object]]) -> Outcome:
    reports = kreport.parse(case.log)
    old = before(case.log)
    old_sig = str(getattr(old[0], "signature", "")) if old else ""
    if not reports:
        return Outcome(False, "", "", (), "", old_sig)
    r = reports[0]
    return Outcome(True, r.syz_title, r.signature, r.alt, r.corrupted, old_sig)


def alternative(case: Case, out: Outcome) -> bool:
    wanted = {case.title, *case.alt}
    return bool(wanted & {out.syz_title, *out.alt})


@dataclass
class Row:
    files: int = 0
    found: int = 0
    whole: int = 0
    exact: int = 0
    signature: int = 0
    alt: int = 0
    before: int = 0
    before_found: int = 0

    def add(self, case: Case, out: Outcome) -> None:
        self.files += 1
        self.found += out.found
        self.before_found += bool(out.before)
        if case.corrupted or not case.title:
            return
        self.whole += 1
        self.exact += out.syz_title == case.title
        self.signature += out.signature == case.title
        self.alt += alternative(case, out)
        self.before += out.before == case.title


def percent(n: int, of: int) -> str:
    return f"{n:3d} {100 * n // of:3d}%" if of else f"{n:3d}   - "


def table(rows: dict[str, Row]) -> str:
    head = (f"{'family':26} {'files':>5} {'found':>9} {'whole':>5} {'exact':>9} "
            f"{'signature':>9} {'alt':>9} | {'before found':>12} {'before exact':>12}")
    out = [head, "-" * len(head)]
    order = [name for name, _ in FAMILIES] + [NO_REPORT, "total"]
    for name in (n for n in order if n in rows):
        r = rows[name]
        out.append(f"{name:26} {r.files:5d} {percent(r.found, r.files):>9} {r.whole:5d} "
                   f"{percent(r.exact, r.whole):>9} {percent(r.signature, r.whole):>9} "
                   f"{percent(r.alt, r.whole):>9} | {percent(r.before_found, r.files):>12} "
                   f"{percent(r.before, r.whole):>12}")
    return "\n".join(out)


def miss(case: Case, out: Outcome) -> str | None:
    if case.corrupted or out.syz_title == case.title:
        return None
    return f"{case.path.name}: want {case.title!r} got {out.syz_title!r} {out.corrupted!r}"


def bench(directory: Path, before: Callable[[list[str]], list[object]], misses: bool) -> None:
    cases = [c for p in sorted(directory.iterdir()) if p.is_file() and (c := read_case(p))]
    rows: dict[str, Row] = {}
    for case in cases:
        out = run(case, before)
        for name in (family(case.title), "total"):
            rows.setdefault(name, Row()).add(case, out)
        if misses and (line := miss(case, out)):
            print("  miss", line)
    print(f"\n{directory} ({len(cases)} files)\n{table(rows)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", nargs="*", type=Path, default=DEFAULT_DIRS)
    parser.add_argument("--before", default="HEAD", help="git ref of the old parser")
    parser.add_argument("--misses", action="store_true", help="list titles that differ")
    args = parser.parse_args()
    used, before = load_before(args.before)
    print(f"before = {BEFORE_PATH} at {used}")
    for directory in args.dirs:
        if directory.is_dir():
            bench(directory, before, args.misses)
        else:
            print(f"\n{directory}: no such directory, skipped")


if __name__ == "__main__":
    main()
