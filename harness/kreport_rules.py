"""The rules that title one kernel report in syzkaller's manner, loaded once from
kreport_titles.yaml: the format a report matches, the frame that names the culprit,
the cleaned title and its alternatives."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

TABLES = Path(__file__).with_name("kreport_titles.yaml")
NO_FRAMES = "extracted no frames"
MAX_TITLE = 120  # glued or intermixed lines can make very long titles

Part = re.Pattern[str] | None  # None: parse a stack trace here


@dataclass(frozen=True)
class Stack:
    parts: tuple[Part, ...]
    parts2: tuple[Part, ...]
    skip: re.Pattern[str]
    extractor: str  # "" (first frame), "stall" or "hang"


@dataclass(frozen=True)
class Format:
    title: re.Pattern[str]
    report: re.Pattern[str] | None
    fmt: str
    alt: tuple[str, ...]
    stack: Stack | None
    no_stack: bool  # the report has no stack trace to check
    corrupted: bool  # matching this format means the real header was lost
    ends: re.Pattern[str] | None  # the line that closes a whole report


@dataclass(frozen=True)
class Group:
    header: str
    suppress: tuple[re.Pattern[str], ...]
    formats: tuple[Format, ...]


@dataclass(frozen=True)
class Rules:
    groups: tuple[Group, ...]
    stack_starts: tuple[re.Pattern[str], ...]
    frames: tuple[re.Pattern[str], ...]
    corrupted_lines: tuple[re.Pattern[str], ...]
    corrupted_titles: tuple[re.Pattern[str], ...]
    strip_prefixes: tuple[str, ...]
    stall_anchors: tuple[re.Pattern[str], ...]
    hang_anchors: tuple[tuple[str, str], ...]
    hang_skip: tuple[str, ...]
    start_ignores: tuple[re.Pattern[str], ...]
    replacements: tuple[tuple[re.Pattern[str], str], ...]
    kinds: tuple[tuple[re.Pattern[str], str], ...]
    leak_lines: re.Pattern[str]


@dataclass(frozen=True)
class Title:
    title: str
    alt: tuple[str, ...]
    corrupted: str
    format: Format | None


TOP_KEYS = {"placeholders", "stack_starts", "frames", "corrupted_lines", "corrupted_titles",
            "strip_prefixes", "skip_frames", "stall_anchors", "hang_anchors", "hang_skip",
            "start_ignores", "title_replacements", "kinds", "ends", "leak_lines", "groups",
            "stack_templates"}
GROUP_KEYS = {"header", "suppress", "formats"}
FORMAT_KEYS = {"title", "report", "fmt", "alt", "stack", "no_stack", "corrupted", "ends"}
STACK_KEYS = {"parts", "parts2", "skip", "extractor", "like"}


class _Loader:
    """Compiles the YAML tables, expanding placeholders; rejects unknown keys."""

    def __init__(self, data: dict[str, Any]) -> None:
        _check(data, TOP_KEYS, "top-level")
        self.data = data
        self.holders: dict[str, str] = {}
        for name, value in data["placeholders"].items():
            self.holders[name] = self.expand(value)
        self.skip: list[str] = list(data["skip_frames"])

    def expand(self, pattern: str) -> str:
        for name, value in self.holders.items():
            pattern = pattern.replace("{{" + name + "}}", value)
        return pattern

    def regex(self, pattern: str) -> re.Pattern[str]:
        return re.compile(self.expand(pattern))

    def regexes(self, patterns: list[str]) -> tuple[re.Pattern[str], ...]:
        return tuple(self.regex(p) for p in patterns)

    def parts(self, names: list[str]) -> tuple[Part, ...]:
        return tuple(None if p == "STACK" else self.regex(p) for p in names)

    def stack(self, spec: dict[str, Any]) -> Stack:
        _check(spec, STACK_KEYS, "stack")
        base = self.data["stack_templates"].get(spec.get("like", ""), {})
        spec = {**base, **{k: v for k, v in spec.items() if k != "like"}}
        skip = "|".join(self.skip + list(spec.get("skip", [])))
        return Stack(self.parts(spec["parts"]), self.parts(spec.get("parts2", [])),
                     re.compile(skip), spec.get("extractor", ""))

    def format(self, spec: dict[str, Any]) -> Format:
        _check(spec, FORMAT_KEYS, "format")
        ends = spec.get("ends")
        return Format(self.regex(spec["title"]),
                      self.regex(spec["report"]) if "report" in spec else None,
                      spec["fmt"], tuple(spec.get("alt", [])),
                      self.stack(spec["stack"]) if "stack" in spec else None,
                      bool(spec.get("no_stack")), bool(spec.get("corrupted")),
                      re.compile(self.data["ends"][ends], re.M) if ends else None)

    def group(self, spec: dict[str, Any]) -> Group:
        _check(spec, GROUP_KEYS, "group")
        return Group(spec["header"], self.regexes(spec.get("suppress", [])),
                     tuple(self.format(f) for f in spec["formats"]))

    def rules(self) -> Rules:
        d = self.data
        return Rules(
            tuple(self.group(g) for g in d["groups"]), self.regexes(d["stack_starts"]),
            self.regexes(d["frames"]), self.regexes(d["corrupted_lines"]),
            self.regexes(d["corrupted_titles"]), tuple(d["strip_prefixes"]),
            self.regexes(d["stall_anchors"]), tuple(d["hang_anchors"].items()),
            tuple(d["hang_skip"]), self.regexes(d["start_ignores"]),
            tuple((re.compile(a), b) for a, b in d["title_replacements"]),
            tuple((re.compile(a), b) for a, b in d["kinds"]), self.regex(d["leak_lines"]))


def _check(spec: dict[str, Any], allowed: set[str], what: str) -> None:
    unknown = set(spec) - allowed
    if unknown:
        raise ValueError(f"{TABLES}: unknown {what} keys {sorted(unknown)}, "
                         f"expected some of {sorted(allowed)}")


def load(path: Path = TABLES) -> Rules:
    return _Loader(yaml.safe_load(path.read_text())).rules()


RULES = load()


def describe(group: Group, text: str, rules: Rules = RULES) -> Title:
    """syzkaller's title of a report (text from its header line on): the earliest
    format title found wins, ties go to the first format in the table."""
    start, best, matched = len(text) + 1, None, False
    for f in group.formats:
        m = f.title.search(text)
        if m is None or m.start() > start or (m.start() == start and best):
            continue
        if m.start() < start:
            start, best = m.start(), None
        matched = True
        if f.report is not None:
            m = f.report.search(text)
            if m is None:
                continue
        best = _titled(f, m, text, rules)
    if best is None:
        return _untitled(group, text, matched, rules)
    marked = best.format is not None and best.format.corrupted
    reason = best.corrupted or ("report format is marked as corrupted" if marked else "")
    return Title(best.title, best.alt, reason, best.format)


def _untitled(group: Group, text: str, matched: bool, rules: Rules) -> Title:
    at = text.find(group.header)
    line = text[at:].split("\n", 1)[0] if at >= 0 else text.split("\n", 1)[0]
    title = clean(line, rules)
    return Title(title, (), "matched title but not report regexp" if matched else "", None)


def _titled(f: Format, m: re.Match[str], text: str, rules: Rules) -> Title:
    groups = [g or "" for g in m.groups()]
    frames: list[tuple[str, str]] = []
    ok = True
    if f.stack is not None:
        frames, ok = stack_frames(f.stack, text[m.start():], rules)
    title = fill(f.fmt, groups + [c for c, _ in frames])
    alt = [fill(a, groups + [c for c, _ in frames]) for a in f.alt]
    for variant in _partly_stripped(frames, rules):
        alt += [fill(t, groups + variant) for t in (f.fmt, *f.alt)]
    alt = [clean(a, rules) for a in alt]
    title = clean(title, rules)
    unique = tuple(dict.fromkeys(a for a in alt if a != title))
    return Title(title, unique, "" if ok else NO_FRAMES, f)


def _partly_stripped(frames: list[tuple[str, str]], rules: Rules) -> list[list[str]]:
    """The raw frames, and each syscall prefix stripped alone: more alternatives."""
    out = [[raw for _, raw in frames]]
    for prefix in rules.strip_prefixes:
        trimmed = [raw.removeprefix(prefix) for _, raw in frames]
        if trimmed != [raw for _, raw in frames]:
            out.append(trimmed)
    return out


def fill(template: str, args: list[str]) -> str:
    def arg(m: re.Match[str]) -> str:
        n = int(m.group(1))
        return args[n - 1] if 0 < n <= len(args) else "?"
    return re.sub(r"\{(\d+)\}", arg, template)


def clean(title: str, rules: Rules = RULES) -> str:
    """syzkaller's title clean-up: addresses, numbers, offsets and PIDs go."""
    for pattern, repl in rules.replacements:
        while (new := pattern.sub(repl, title)) != title:
            title = new
    out: list[str] = []
    for ch in title[:MAX_TITLE].replace("\t", " "):
        if (" " <= ch < "\x7f") and not (ch == " " and (not out or out[-1] == " ")):
            out.append(ch)
    return "".join(out).strip()


def stack_frames(stack: Stack, text: str, rules: Rules = RULES
                 ) -> tuple[list[tuple[str, str]], bool]:
    """One (canonical, raw) key frame per stack trace the parts walk through."""
    lines = text.split("\n")
    frames, ok = _walk(stack, stack.parts, lines, rules)
    if ok or not stack.parts2:
        return frames, ok
    return _walk(stack, stack.parts2, lines, rules)


def _walk(stack: Stack, parts: tuple[Part, ...], lines: list[str], rules: Rules
          ) -> tuple[list[tuple[str, str]], bool]:
    raw: list[str] = []
    results: list[tuple[str, str]] = []
    ok, traces, pos, i = True, 0, 0, 0
    while True:
        if i == len(parts) or (parts[i] is None and traces > 0):
            key = key_frame(stack, raw, rules)
            ok = ok and key is not None
            results.append(key or ("corrupted", "corrupted"))
            raw = []
        if i == len(parts):
            return results, ok
        part = parts[i]
        if part is None:
            traces += 1
            after = parts[i + 1] if i + 1 < len(parts) else None
            pos, found, skipped_next, clean_run = _scan_stack(lines, pos, after, stack, rules,
                                                              begun=i > 0)
            i += skipped_next
        else:
            pos, found, clean_run = _scan_part(lines, pos, part, stack, rules)
        raw += found
        ok = ok and clean_run
        i += 1


def _scan_part(lines: list[str], pos: int, part: re.Pattern[str], stack: Stack,
               rules: Rules) -> tuple[int, list[str], bool]:
    while pos < len(lines):
        line, pos = lines[pos], pos + 1
        if any(r.search(line) for r in rules.corrupted_lines):
            return pos, [], False
        m = part.search(line)
        if m:
            return pos, _named(m, stack), True
    return pos, [], True


def _scan_stack(lines: list[str], pos: int, after: Part, stack: Stack, rules: Rules,
                begun: bool) -> tuple[int, list[str], int, bool]:
    """Frames until a new trace starts or the next part matches (then it is used).
    A trace parsed from the header on (KMSAN) begins at its first frame line."""
    found: list[str] = []
    while pos < len(lines):
        line, pos = lines[pos], pos + 1
        if any(r.search(line) for r in rules.corrupted_lines):
            return pos, found, 0, False
        if any(r.search(line) for r in rules.stack_starts):
            if begun:
                return pos, found, 0, True
            continue
        m = after.search(line) if after is not None else None
        if m:
            return pos, found + _named(m, stack), 1, True
        m = next((m for r in rules.frames if (m := r.search(line))), None)
        begun = begun or m is not None
        found += _named(m, stack) if m else []
    return pos, found, 0, True


def _named(m: re.Match[str], stack: Stack) -> list[str]:
    return [g for g in m.groups() if g and not stack.skip.search(g)]


def strip_prefix(frame: str, rules: Rules = RULES) -> str:
    """The shortest name left by removing one syscall entry prefix."""
    return min((frame.removeprefix(p) for p in rules.strip_prefixes), key=len, default=frame)


def key_frame(stack: Stack, raw: list[str], rules: Rules) -> tuple[str, str] | None:
    if not raw:
        return None
    names = [strip_prefix(f, rules) for f in raw]
    name, at = names[0], 0
    if stack.extractor == "stall":
        name, at = _stall(names, rules)
    elif stack.extractor == "hang":
        name, at = _hang(names, rules)
    return (name, raw[at]) if name else None


def _stall(names: list[str], rules: Rules) -> tuple[str, int]:
    """Stalls loop somewhere below a dispatcher: the frame just above it."""
    prev, at = names[0], 0
    for i, name in enumerate(names):
        if any(a.search(name) for a in rules.stall_anchors):
            return ("smp_call_function", i) if "smp_call_function" in name else (prev, at)
        prev, at = name, i
    return "", -1


def _hang(names: list[str], rules: Rules) -> tuple[str, int]:
    for i, name in enumerate(names):
        for anchor, instead in rules.hang_anchors:
            if anchor in name:
                return instead or name, i
    for i, name in enumerate(names):
        if not any(s in name for s in rules.hang_skip):
            return name, i
    return "", -1
