"""Kernel reports in a console log or dmesg (KASAN, KMSAN, KCSAN, KFENCE, UBSAN,
WARNING, BUG, Oops, panic, lockdep, hung task, RCU stall, lockup, kmemleak), each
titled as syzkaller titles it (see harness/kreport_titles.yaml and kreport_rules),
with its text, its position, the test whose kmsg markers surround it and, when it
was cut short, why. Takes lines, returns objects; never raises, never prints.

The lab's signature is syzkaller's title with one deliberate difference: KASAN's
"slab-use-after-free" (Linux 6.4+) is folded into "use-after-free" (as 6.1 prints
it), so one expectation holds across kernel versions. `syz_title` keeps the exact
title."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable

from harness import kreport_rules as rules
from harness.kreport_rules import RULES, Format, Group

# Console lines may carry the lab's host stamp ("2026-11-26T10:00:00.123Z +  12.345 | ")
# and printk's ("[   12.345678] ", "[   12.345678][  T123] ", "<6>[ 1.5] ").
HOST_RE = re.compile(r"^\S+ \+\s*\d+(?:\.\d+)? \| ?")
PRINTK_RE = re.compile(r"(?:<\d+>)?\[\s*\d+\.\d+\](?:\[\s*([TC])\s*(\d+)\])? ?")
# A stamp after junk (a login prompt, a dropped-messages note) still marks kernel text.
LATE_PRINTK_RE = re.compile(r"(?:<\d+>)?\[\s*\d+\.\d{6}\](?:\[\s*([TC])\s*(\d+)\])? ?")
PREFIX_RE = re.compile(HOST_RE.pattern + r"?(?:" + PRINTK_RE.pattern + r")?")
# "? func+0x1/0x2" frames are guesses of the unwinder; powerpc says "(unreliable)".
QUESTIONABLE_RE = re.compile(r"(?:\[<[0-9a-f]+>\])? \? |^\? ")
MARK_BEGIN = re.compile(r"bpflab: begin (\S+)")
MARK_END = re.compile(r"bpflab: end (\S+)")
END_RE = re.compile(r"^(?:={50,}|-+\[ end (?:trace|Kernel panic)[^\]]*\]-*)\s*$")
SUFFIX_RE = re.compile(r"(\.(isra|constprop|part|cold|llvm|lto_priv)(\.\d+)?)+$")
NMI_TRACEBACK = "Sending NMI from CPU"
MAX_LINES = 400  # a reproducer in a loop must not make one report the whole log
AFTERMATH = 50  # lines after a report's end where its panic may still follow
FOLD = ("KASAN: slab-use-after-free", "KASAN: use-after-free")


@dataclass(frozen=True)
class Report:
    kind: str  # KASAN KMSAN KCSAN KFENCE UBSAN WARNING BUG OOPS PANIC LOCKDEP HUNG RCU LOCKUP LEAK
    signature: str  # the lab's: syzkaller's title but for the FOLD above
    title: str  # the header line as printed
    text: str
    line: int  # index of the header line in the log
    test: str | None = None  # the test between whose kmsg markers it appeared
    syz_title: str = ""  # syzkaller's exact title
    corrupted: str = ""  # why the report is incomplete; "" when whole
    alt: tuple[str, ...] = ()  # syzkaller's alternative titles ("bad-access in f")


@dataclass(frozen=True)
class Line:
    text: str  # without host and printk stamps
    context: str  # "" without printk stamp, "console" without caller id, "T12", "C1"
    questionable: bool


def split_line(raw: str) -> Line:
    line = HOST_RE.sub("", raw.rstrip("\n"), count=1)
    m = PRINTK_RE.match(line) or LATE_PRINTK_RE.search(line)
    text = line[m.end():] if m else line
    shaky = "<EOI>" not in text and (bool(QUESTIONABLE_RE.search(text))
                                     or text.endswith(" (unreliable)"))
    if m is None:
        return Line(text, "", shaky)
    return Line(text, f"{m.group(1)}{m.group(2)}" if m.group(1) else "console", shaky)


def strip(line: str) -> str:
    return split_line(line).text


def clean_func(name: str) -> str:
    return SUFFIX_RE.sub("", name)


@dataclass
class _Open:
    group: Group
    header: Line
    start: int
    test: str | None
    leak: bool  # a kmemleak record: its lines may come from any writer of /dev/kmsg
    text: list[str] = field(default_factory=list)
    body: list[str] = field(default_factory=list)  # text without questionable frames
    nmi: bool = False  # all CPUs' backtraces follow and belong to it
    traced: bool = False  # a stack trace has started

    def accepts(self, line: Line) -> bool:
        if self.leak:
            return bool(RULES.leak_lines.search(line.text))
        return line.context == self.header.context or (
            self.nmi and line.context.startswith("C"))

    def add(self, line: Line) -> str | None:
        """Takes the line; None while the report goes on, else what ended it ("" for
        an end line such as "---[ end trace ... ]---")."""
        self.text.append(line.text)
        if not line.questionable:
            self.body.append(line.text)
        self.nmi = self.nmi or NMI_TRACEBACK in line.text
        self.traced = self.traced or any(r.search(line.text) for r in RULES.stack_starts)
        if END_RE.match(line.text.strip()):
            return ""
        return "report longer than the lab keeps" if len(self.text) >= MAX_LINES else None


def header_group(line: str) -> Group | None:
    """The report group whose header this line carries, unless suppressed."""
    for group in RULES.groups:
        if group.header in line and not any(s.search(line) for s in group.suppress):
            return group
    return None


def start_ignored(line: str) -> bool:
    """Headers that may sit inside another report without starting one."""
    return any(r.search(line) for r in RULES.start_ignores)


def kind_of(title: str) -> str:
    return next((kind for pattern, kind in RULES.kinds if pattern.search(title)), "BUG")


def whole(title: str, text: str, f: Format | None) -> str:
    """Why a report is not whole ("" when it is), as syzkaller judges it: a glued
    title, a stack trace announced but missing, or none where one is expected."""
    if any(r.search(title) for r in RULES.corrupted_titles):
        return "title matches corrupted regexp"
    if f is None or f.no_stack:
        return ""
    has_stack = False
    for start in RULES.stack_starts:
        m = start.search(text)
        if m is None:
            continue
        after = text[m.start():].split("\n")
        if len(after) < 4:
            return "call trace is missed"
        found = _frame_follows(after[1:16])
        has_stack = has_stack or found
        if not found and "badaddr" not in start.pattern:  # riscv may print no frame
            return "no frames in a stack trace"
    return "" if has_stack else "no stack trace in report"


def _frame_follows(lines: list[str]) -> bool:
    for line in lines:
        if any(r.search(line) for r in RULES.stack_starts):
            return False
        if "(stack is not available)" in line or any(r.search(line) for r in RULES.frames):
            return True
    return False


def describe(o: _Open, cut: str) -> Report:
    """The report an open one becomes; `cut` says what ended it if not its end line."""
    text, body = "\n".join(o.text), "\n".join(o.body)
    try:
        t = rules.describe(o.group, body)
    except Exception as error:  # a table bug must not lose the report
        t = rules.Title(o.header.text.strip(), (), f"parser error: {error!r}", None)
    ends = t.format.ends if t.format else None
    reason = (t.corrupted or whole(t.title, body, t.format)
              or (cut if ends and not ends.search(text) else ""))
    return Report(kind_of(t.title), t.title.replace(*FOLD), o.header.text.strip(), text,
                  o.start, o.test, t.title, reason, t.alt)


class _Scanner:
    """Reports open per printk context (a task or CPU when the kernel prints caller
    ids): interleaved reports from two CPUs stay apart."""

    def __init__(self) -> None:
        self.reports: list[Report] = []
        self.open: dict[str, _Open] = {}
        self.test: str | None = None
        self.ended: dict[str, int] = {}  # context: index of the last report's end line

    def close(self, key: str, cut: str) -> None:
        o = self.open.pop(key, None)
        if o is not None:
            self.reports.append(describe(o, cut))

    def close_all(self, cut: str) -> None:
        for key in list(self.open):
            self.close(key, cut)

    def feed(self, index: int, raw: str) -> None:
        line = split_line(raw)
        mark = MARK_BEGIN.search(line.text) or MARK_END.search(line.text)
        if mark:
            self.close_all("report cut short by a test marker")
            self.test = mark.group(1) if mark.re is MARK_BEGIN else None
            return
        group = header_group(line.text)
        owner = self.owner(line)
        if group and self.aftermath(owner, index, line):
            return
        if group and not self.nested(owner, line):
            self.close(line.context, "report cut short by another report")
            self.open[line.context] = _Open(group, line, index, self.test,
                                            group.header.startswith("unreferenced"))
            self.open[line.context].add(line)
        elif owner and (ended := owner.add(line)) is not None:
            key = self.key_of(owner)
            self.ended[key] = index
            self.close(key, ended or "report cut short before its own end line")

    def owner(self, line: Line) -> _Open | None:
        """The open report this line belongs to: the one of its context, else one
        gathering all CPUs' backtraces or a kmemleak record written line by line."""
        own = self.open.get(line.context)
        if own is not None and not own.accepts(line):
            self.close(line.context, "")  # only a leak record refuses its own context
            own = None
        return own or next((o for o in self.open.values() if o.accepts(line)), None)

    def nested(self, owner: _Open | None, line: Line) -> bool:
        """A header inside a report: a panic after an oops, kmemleak's record right
        after syzkaller's "BUG: memory leak" line, or an oops in the very task that
        was printing a report before its stack trace (lockdep tripping over itself)."""
        if owner is None:
            return False
        same_task = owner.header.context[:1] in ("T", "C") and not owner.traced
        return start_ignored(line.text) or len(owner.text) == 1 or same_task

    def aftermath(self, owner: _Open | None, index: int, line: Line) -> bool:
        """A panic ("Fatal exception", "panic_on_warn set") printed just after a
        report's end line belongs to that report, not to a new one."""
        recent = index - self.ended.get(line.context, -AFTERMATH) < AFTERMATH
        return owner is None and recent and start_ignored(line.text)

    def key_of(self, o: _Open) -> str:
        return next(k for k, v in self.open.items() if v is o)


def parse(lines: Iterable[str]) -> list[Report]:
    """Every kernel report in a log, in order of their headers, with the test it
    happened in."""
    scanner = _Scanner()
    for index, raw in enumerate(lines):
        scanner.feed(index, raw)
    scanner.close_all("log ends mid-report")
    return sorted(scanner.reports, key=lambda r: r.line)


KEEP_PER_KEY = 3


def bounded(reports: list[Report], keep: int = KEEP_PER_KEY) -> tuple[list[Report], int]:
    """The first `keep` reports of each (signature, test): a reproducer in a loop can
    print thousands of the same report; the rest are counted, not stored or attached."""
    seen: dict[tuple[str, str | None], int] = {}
    kept: list[Report] = []
    for report in reports:
        key = (report.signature, report.test)
        seen[key] = seen.get(key, 0) + 1
        if seen[key] <= keep:
            kept.append(report)
    return kept, len(reports) - len(kept)
