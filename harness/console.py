"""Serial console logs: lines in, facts and a boot verdict out. Never raises, never prints.

The parser states facts (first and last output, panics, KASAN, init reached); the
caller supplies the clock, whether QEMU is still running and whether SSH answered,
and classify() turns both into one state. A panic beats everything. A report the
kernel survives (KASAN, WARNING, an oops outside init) does not decide the boot: the
report parser ties it to the boot, outside any test, and it fails the target there
with its own signature, where a boot verdict would have named only its first line."""

from __future__ import annotations

import enum
import re
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

TAIL = 40
# Host-side prefix the Guest writes before each console line: ISO time, seconds
# since QEMU started, then the line as the guest printed it.
STAMP_RE = re.compile(r"^(\S+) \+\s*(\d+(?:\.\d+)?) \| ?(.*)$")
BUG_RE = re.compile(r"Kernel panic - not syncing|\bBUG: |\bOops\b|kernel BUG at|"
                    r"general protection fault|Unable to handle kernel|"
                    r"Internal error: ")
PANIC_RE = re.compile(r"Kernel panic - not syncing|end Kernel panic")
RELEASE_RE = re.compile(r"Linux version (\S+)")
KASAN_RE = re.compile(r"KernelAddressSanitizer initialized")
INIT_RE = re.compile(r"Run (\S+) as init process")
# sshd's own line (bpflab-init runs it with -e) or systemd's unit: sshd listens
SSHD_RE = re.compile(r"Server listening on|Started ssh\.service|"
                     r"Started .*OpenBSD Secure Shell server")


class State(str, enum.Enum):
    BOOTING = "booting"  # nothing decided yet: keep waiting
    READY = "ready"
    PANIC = "panic"
    HANG = "hang"
    EXITED = "exited"


@dataclass(frozen=True)
class ConsoleReport:
    lines: int
    first_output_s: float | None  # host seconds since QEMU started
    last_output_s: float | None
    kernel_release: str | None
    kasan: bool
    init: str | None  # the init the kernel ran
    sshd_started: bool
    bug: str | None  # the first panic / Oops / BUG line
    panic: bool  # the kernel said "Kernel panic - not syncing"
    tail: tuple[str, ...]
    panic_line: str | None = None  # that line


@dataclass(frozen=True)
class Verdict:
    state: State
    reason: str
    console: ConsoleReport
    log: Path | None = None


def split_stamp(line: str) -> tuple[float | None, str]:
    """'2026-...Z +  3.141 | text' -> (3.141, 'text'); an unstamped line has no time."""
    m = STAMP_RE.match(line)
    if not m:
        return None, line
    return float(m.group(2)), m.group(3)


MARK_RE = re.compile(r"bpflab: (begin|end) (\S+)(?: (\S+))?")


class ConsoleWatch:
    """Console facts kept up to date line by line: each line is looked at once, so
    a chatty kernel costs linear time and bounded memory (the tail, not the log).
    Also follows the suites' kmsg markers: which test is running, since when."""

    def __init__(self, tail: int = TAIL) -> None:
        self.count = 0
        self.first: float | None = None
        self.last: float | None = None
        self.release: str | None = None
        self.init: str | None = None
        self.bug: str | None = None
        self.panic_line: str | None = None
        self.kasan = self.sshd = self.panic = False
        self.recent: deque[str] = deque(maxlen=tail)
        self.running: tuple[str, float | None] | None = None  # test, host s at begin
        self.ended: dict[str, str] = {}  # test -> outcome its end marker gave

    def feed(self, raw: str) -> None:
        stamp, text = split_stamp(raw.rstrip("\r\n"))
        self.count += 1
        if stamp is not None:
            self.first = stamp if self.first is None else self.first
            self.last = stamp
        self.recent.append(text)
        self.release = self.release or _group(RELEASE_RE, text)
        self.init = self.init or _group(INIT_RE, text)
        self.kasan = self.kasan or bool(KASAN_RE.search(text))
        self.sshd = self.sshd or bool(SSHD_RE.search(text))
        if self.panic_line is None and "Kernel panic - not syncing" in text:
            self.panic_line = text.strip()
        self.panic = self.panic or bool(PANIC_RE.search(text))
        if self.bug is None and BUG_RE.search(text):
            self.bug = text.strip()
        mark = MARK_RE.search(text) if "bpflab: " in text else None
        if mark and mark.group(1) == "begin":
            self.running = (mark.group(2), stamp)
        elif mark:
            self.ended[mark.group(2)] = mark.group(3) or ""
            self.running = None

    def report(self) -> ConsoleReport:
        return ConsoleReport(self.count, self.first, self.last, self.release, self.kasan,
                             self.init, self.sshd, self.bug, self.panic, tuple(self.recent),
                             self.panic_line)


def parse(lines: Iterable[str], tail: int = TAIL) -> ConsoleReport:
    watch = ConsoleWatch(tail)
    for raw in lines:
        watch.feed(raw)
    return watch.report()


def _group(regex: re.Pattern[str], text: str) -> str | None:
    m = regex.search(text)
    return m.group(1) if m else None


def parse_file(path: Path, tail: int = TAIL) -> ConsoleReport:
    """Parse a console log on disk; a missing or half-written file is just short."""
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except OSError:
        text = ""
    return parse(text.splitlines(), tail)


def classify(report: ConsoleReport, *, now_s: float, exited: bool, ssh_ready: bool,
             silence_limit_s: float, ready_limit_s: float,
             log: Path | None = None) -> Verdict:
    """One state from the console facts and the caller's facts; a panic beats all."""
    if report.panic:
        return Verdict(State.PANIC, report.panic_line or report.bug or "Kernel panic", report,
                       log)
    if ssh_ready:
        return Verdict(State.READY, "SSH answered", report, log)
    if exited:
        return Verdict(State.EXITED, "QEMU exited before SSH answered", report, log)
    quiet_since = report.last_output_s if report.last_output_s is not None else 0.0
    if now_s - quiet_since > silence_limit_s:
        what = "no console output" if report.last_output_s is None else "console silent"
        return Verdict(State.HANG, f"{what} for {now_s - quiet_since:.0f} s", report, log)
    if now_s > ready_limit_s:
        return Verdict(State.HANG, f"no SSH within {ready_limit_s:.0f} s", report, log)
    return Verdict(State.BOOTING, "waiting", report, log)
