"""Kernel reports in a console log or dmesg: KASAN, BUG, WARNING, Oops, panic, lockdep,
hung task. Each gets a signature that survives rebuilds, arches and kernel versions
(bug type, access, first meaningful frame without offsets or compiler suffixes, in
the manner of syzkaller titles), its text and its position. Reports are tied to the
test whose kmsg markers surround them. Takes lines, returns objects; never raises on
a truncated log and never prints."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable

# Console lines may carry the lab's host timestamp ("11:00:01.123 +  12.345 | ")
# and printk's ("[   12.345678] ", "[   12.345678][  T123] ").
PREFIX_RE = re.compile(r"^(\S+ \+\s*\d+(?:\.\d+)? \| ?)?"
                       r"(\[\s*\d+\.\d+\](\[\s*[TC]\d+\])?\s?)?")
MARK_BEGIN = re.compile(r"bpflab: begin (\S+)")
MARK_END = re.compile(r"bpflab: end (\S+)")
FRAME_RE = re.compile(r"^\s*(?:\[<[0-9a-f]+>\]\s*)?\??\s*([A-Za-z_][\w.]*)\+0x[0-9a-f]+/0x[0-9a-f]+")
SUFFIX_RE = re.compile(r"(\.(isra|constprop|part|cold|llvm|lto_priv)(\.\d+)?)+$")
SKIP_FRAMES = re.compile(
    r"^(dump_stack\w*|show_stack|print_address_description\w*|print_report|kasan_\w+|"
    r"__kasan_\w+|check_memory_region\w*|__asan_\w+|report_\w+|__warn|warn_slowpath\w*|"
    r"__schedule|schedule\w*|io_schedule\w*|__wait_\w+|wait_for_\w+|__mutex_lock\w*|"
    r"mutex_lock\w*|rwsem_\w+|down_\w+|__down\w*|panic|lockdep_\w+|__lock_acquire|"
    r"lock_acquire|print_circular_bug|check_noncircular|validate_chain|dump_backtrace|"
    r"die|do_trap\w*|exc_\w+|asm_exc_\w+|handle_bug|el1_\w+|el0_\w+)$")
END_RE = re.compile(r"^(={50,}|---\[ end (trace|Kernel panic)[^\]]*\]---)")
HEADERS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("KASAN", re.compile(r"BUG: KASAN: ([\w-]+) in ([\w.]+)")),
    ("LOCKDEP", re.compile(r"WARNING: (possible circular locking dependency detected|"
                           r"possible recursive locking detected|inconsistent lock state|"
                           r"suspicious RCU usage)")),
    ("HUNG", re.compile(r"INFO: task (\S+):\d+ blocked for more than \d+ seconds")),
    ("WARNING", re.compile(r"WARNING: CPU: \d+ PID: \d+ at (\S+) ([\w.]+)\+")),
    ("BUG", re.compile(r"(kernel BUG at ([^!]+)!|(?:BUG: |Unable to handle )"
                       r"(kernel NULL pointer dereference|unable to handle page fault|"
                       r"kernel paging request|scheduling while atomic|sleeping function "
                       r"called from invalid context))")),
    ("OOPS", re.compile(r"(general protection fault|Internal error: Oops)")),
    ("PANIC", re.compile(r"Kernel panic - not syncing: (.*)")),
)
ACCESS_RE = re.compile(r"^(Read|Write) of size \d+ at addr")
PC_RE = re.compile(r"(?:RIP: \w+:|pc : )([\w.]+)\+0x")
MAX_LINES = 200


@dataclass(frozen=True)
class Report:
    kind: str  # KASAN, WARNING, BUG, OOPS, PANIC, LOCKDEP, HUNG
    signature: str
    title: str  # the header line as printed
    text: str
    line: int  # index of the header line in the log
    test: str | None = None  # the test between whose kmsg markers it appeared


def strip(line: str) -> str:
    return PREFIX_RE.sub("", line.rstrip("\n"), count=1)


def clean_func(name: str) -> str:
    return SUFFIX_RE.sub("", name)


def first_frame(body: list[str]) -> str | None:
    """The first frame of the report's stacks that is not report machinery."""
    for line in body:
        m = PC_RE.search(line)
        if m:
            return clean_func(m.group(1))
    for line in body:
        m = FRAME_RE.match(line)
        if m and not SKIP_FRAMES.match(clean_func(m.group(1))):
            return clean_func(m.group(1))
    return None


def signature(kind: str, match: re.Match[str], body: list[str]) -> str:
    if kind == "KASAN":
        bug = match.group(1).replace("slab-use-after-free", "use-after-free")
        access = next((m.group(1) for m in map(ACCESS_RE.match, body) if m), "")
        return f"KASAN: {bug} {access} in {clean_func(match.group(2))}".replace("  ", " ")
    if kind == "WARNING":
        return f"WARNING in {clean_func(match.group(2))}"
    if kind == "LOCKDEP":
        return f"{match.group(1)} in {first_frame(body) or '?'}"
    if kind == "HUNG":
        return f"INFO: task hung in {first_frame(body) or '?'}"
    if kind == "PANIC":
        return "panic: " + re.sub(r"0x[0-9a-f]+|\d+", "N", match.group(1).strip())
    if kind == "BUG" and match.group(2):
        return f"kernel BUG in {first_frame(body) or match.group(2)}"
    what = (match.group(3) if kind == "BUG" else match.group(1)) or match.group(0)
    if what == "kernel paging request":  # arm64's words for x86's page fault
        what = "unable to handle page fault"
    return f"{'BUG: ' if kind == 'BUG' else ''}{what} in {first_frame(body) or '?'}"


def _header(line: str) -> tuple[str, re.Match[str]] | None:
    for kind, pattern in HEADERS:
        m = pattern.search(line)
        if m:
            return kind, m
    return None


@dataclass
class _Open:
    kind: str
    match: re.Match[str]
    start: int
    test: str | None
    body: list[str] = field(default_factory=list)


def parse(lines: Iterable[str]) -> list[Report]:
    """Every kernel report in a log, in order, with the test it happened in."""
    reports: list[Report] = []
    current: _Open | None = None
    test: str | None = None

    def close() -> None:
        nonlocal current
        if current:
            reports.append(Report(current.kind, signature(current.kind, current.match,
                                                          current.body),
                                  strip(current.match.string).strip(),
                                  "\n".join(current.body), current.start, current.test))
        current = None

    for index, raw in enumerate(lines):
        line = strip(raw)
        begin, end = MARK_BEGIN.search(line), MARK_END.search(line)
        if begin or end:
            close()
            test = begin.group(1) if begin else None
            continue
        header = _header(line)
        # A panic inside a report (panic_on_warn, oops), or arm64's "Internal error:
        # Oops" after its "Unable to handle" line, belongs to that report.
        if header and current and (header[0] == "PANIC" or
                                   (header[0] == "OOPS" and current.kind == "BUG")):
            header = None
        if header:
            close()
            current = _Open(header[0], header[1], index, test, [line])
            continue
        if current:
            current.body.append(line)
            if END_RE.match(line.strip()) or len(current.body) >= MAX_LINES:
                close()
    close()
    return reports


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
