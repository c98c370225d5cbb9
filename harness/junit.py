"""Test cases in and out of JUnit: read what the guest's suites wrote (pytest JUnit,
TAP from the C suite) as untrusted input, tie kernel reports to cases, write one
file per target and a merged one. Reading never trusts the guest: size is bounded,
DTDs (entity tricks) are refused, bad values are errors of that file, and every
string written is made valid XML 1.0 first."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable

from junitparser import (Error, Failure, JUnitXml, Properties, Property, Skipped, TestCase,
                         TestSuite)

from harness.config import ExpectedReport, KnownReport
from harness.kreport import Report
from harness.model import Status

HEALTH = "kernel-health"
JUNIT_LIMIT = 16 << 20  # bytes of a guest JUnit file read at most (limits.junit_bytes)
# XML 1.0 allows tab, newline, carriage return and these ranges; nothing else
_XML_BAD = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


class JUnitError(ValueError):
    """A JUnit file the lab cannot take: its target gets an error case instead."""


@dataclass(frozen=True)
class Case:
    suite: str  # "python", "c", or "lab" for the lab's own cases
    classname: str
    name: str
    status: Status
    duration: float = 0.0
    message: str = ""
    output: str = ""
    reports: tuple[Report, ...] = ()
    # a test's own figures (pytest's record_property), e.g. racing_runs
    properties: tuple[tuple[str, str], ...] = ()

    @property
    def nodeid(self) -> str:
        return f"{self.classname}::{self.name}"

    @property
    def test_id(self) -> str:
        """The id the suites' kmsg markers and the catalogue use: for pytest the node
        id (test_x.py::Class::name), for the C suite map_in_map::name."""
        if self.suite != "python":
            return self.nodeid
        module, *classes = self.classname.split(".")
        return "::".join([f"{module}.py", *classes, self.name])


def case_of(test_id: str, suite: str, status: Status, message: str) -> Case:
    """A case for a test known only by its id (one that never reported)."""
    parts = test_id.split("::")
    if suite == "python":
        classname = ".".join([parts[0].removesuffix(".py").replace("/", "."), *parts[1:-1]])
    else:
        classname = "::".join(parts[:-1])
    return Case(suite, classname, parts[-1], status, message=message)


def clean(text: str) -> str:
    """Text as XML 1.0 can hold it: each forbidden character (ESC, NUL, ...) shown
    as \\xNN instead of making the whole file unreadable."""
    return _XML_BAD.sub(_shown, text)


def _shown(m: re.Match[str]) -> str:
    code = ord(m.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def from_junit(path: Path, suite: str, limit: int = JUNIT_LIMIT) -> list[Case]:
    """Cases of a JUnit file written by pytest (or any JUnit producer); JUnitError
    when it is too big, not XML, carries a DTD or has a bad value."""
    try:
        size = path.stat().st_size
        if size > limit:
            raise JUnitError(f"{path.name}: {size} bytes, over limits.junit_bytes ({limit})")
        data = path.read_bytes()
    except OSError as exc:
        raise JUnitError(f"{path.name}: unreadable ({exc.strerror})") from exc
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise JUnitError(f"{path.name}: carries a DTD or entities, which the lab refuses")
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise JUnitError(f"{path.name}: not well-formed XML ({exc})") from exc
    return [_case(tc, suite, path.name) for tc in root.iter("testcase")]


def stored_cases(path: Path) -> list[Case]:
    """The cases of a target's junit.xml as the lab wrote it (write()): the suite is the
    classname's first part ("python.test_x", "c.map_in_map"), so test_id is the
    catalogue's id again."""
    out = []
    for case in from_junit(path, "lab"):
        suite, _, rest = case.classname.partition(".")
        if suite in ("python", "c") and rest:
            case = replace(case, suite=suite, classname=rest)
        out.append(case)
    return out


_RESULTS = {"error": Status.ERROR, "failure": Status.FAIL, "skipped": Status.SKIP}


def _case(tc: ET.Element, suite: str, file: str) -> Case:
    name = tc.get("name")
    if not name:
        raise JUnitError(f"{file}: a testcase without a name")
    status, message, text = Status.PASS, "", ""
    for child in tc:
        if child.tag in _RESULTS:
            status, message, text = (_RESULTS[child.tag], child.get("message") or "",
                                     child.text or "")
    props = tuple((p.get("name") or "", p.get("value") or "")
                  for p in tc.iter("property"))
    return Case(suite, tc.get("classname") or suite, name, status,
                _seconds(tc.get("time"), file, name), message, text, properties=props)


def _seconds(value: str | None, file: str, name: str) -> float:
    try:
        secs = float(value or 0)
    except ValueError:
        raise JUnitError(f"{file}: {name}: time={value!r} is not a number") from None
    if not math.isfinite(secs) or secs < 0:
        raise JUnitError(f"{file}: {name}: time={value!r} is not a duration")
    return secs


TAP_RE = re.compile(r"^(not ok|ok)\s+\d+\s*-?\s*([^#]*?)\s*(#\s*(SKIP|TODO)\b(.*))?$",
                    re.IGNORECASE)
PLAN_RE = re.compile(r"^1\.\.(\d+)")


@dataclass(frozen=True)
class Tap:
    cases: tuple[Case, ...]
    plan: int | None  # N of "1..N", when the producer said it
    bail: str  # "Bail out! ..." text, when it bailed

    def problem(self) -> str:
        """What makes the stream untrustworthy as a whole, or ''."""
        if self.bail:
            return f"the C suite bailed out: {self.bail}"
        if self.plan is None:
            return "the C suite printed no TAP plan (1..N)"
        if self.plan != len(self.cases):
            return f"TAP plan 1..{self.plan} but {len(self.cases)} result(s)"
        return ""


def from_tap(lines: Iterable[str], suite: str, classname: str) -> Tap:
    """TAP/KTAP results: 'ok N - name', 'not ok N - name', '# SKIP reason'. The
    diagnostic lines ('# ...') before a result become its output."""
    cases: list[Case] = []
    diag: list[str] = []
    plan, bail = None, ""
    for raw in lines:
        line = raw.strip()
        if line.startswith("Bail out!"):
            bail = line[len("Bail out!"):].strip() or "(no reason given)"
        planned = PLAN_RE.match(line)
        if plan is None and planned:
            plan = int(planned.group(1))
        m = TAP_RE.match(line)
        if not m:
            if line.startswith("#"):
                diag.append(line[1:].strip())
            continue
        if m.group(4) and m.group(4).upper() == "SKIP":
            status = Status.SKIP
        else:
            status = Status.PASS if m.group(1) == "ok" else Status.FAIL
        message = (m.group(5) or "").strip() if status is Status.SKIP else \
            (diag[-1] if diag and status is Status.FAIL else "")
        cases.append(Case(suite, classname, m.group(2) or f"case{len(cases) + 1}", status,
                          output="\n".join(diag), message=message))
        diag = []
    return Tap(tuple(cases), plan, bail)


def is_expected(report: Report, expected: tuple[ExpectedReport, ...]) -> bool:
    """Declared by the variant for the very test that printed it, by the lab's
    signature or syzkaller's exact title."""
    titles = {report.signature, report.syz_title or report.signature}
    return any(e.test == report.test and titles & set(e.signatures) for e in expected)


def is_known(report: Report, known: tuple[KnownReport, ...]) -> bool:
    """Outside any test, and declared by the lab as its environment's (known_reports)."""
    titles = {report.signature, report.syz_title or report.signature}
    return report.test is None and any(k.signature in titles for k in known)


def tie_reports(cases: list[Case], reports: list[Report], expected: tuple[ExpectedReport, ...],
                health_name: str = HEALTH, known: tuple[KnownReport, ...] = ()) -> list[Case]:
    """Reports inside a test's markers go to that case (an error unless the variant
    expects that signature from that test); the rest fail the kernel-health case
    (unless the lab declares them known), which also fails when an expected report
    never came."""
    out = {c.test_id: c for c in cases}
    stray: list[Report] = []
    for report in reports:
        case = case_for(report.test, list(out.values()))
        if case is None:
            stray.append(report)
            continue
        out[case.test_id] = replace(case, reports=case.reports + (report,))
    final = [_judge(c, expected) for c in out.values()]
    problems = [f"kernel report outside any test: {r.signature}" for r in stray
                if not is_known(r, known)]
    # a reproducer that skipped (one CPU for a race, say) proves nothing either way:
    # its report is not demanded, and its skip says why
    skipped = {e.test: c.message for e in expected
               for c in [case_for(e.test, final)] if c and c.status is Status.SKIP}
    missing = [e for e in expected if not any(is_expected(r, (e,)) for r in reports)]
    problems += [f"expected kernel report never appeared: {' or '.join(e.signatures)} in "
                 f"{e.test}" for e in missing if e.test not in skipped]
    notes = [f"known to this lab, not counted: {r.signature}" for r in stray
             if is_known(r, known)]
    notes += [f"expected report not demanded: {e.test} skipped ({skipped[e.test]})"
              for e in missing if e.test in skipped]
    health = Case("lab", "lab", health_name, Status.FAIL if problems else Status.PASS,
                  message="; ".join(problems + notes), reports=tuple(stray))
    return final + [health]


def case_for(nodeid: str | None, cases: list[Case]) -> Case | None:
    """The case a kmsg marker names: a pytest node id (path/to/test_x.py::Class::name,
    which JUnit spells classname path.to.test_x.Class), or 'suite::name'."""
    if not nodeid:
        return None
    exact = [c for c in cases if c.test_id == nodeid]
    if exact:
        return exact[0]
    parts = nodeid.split("::")
    name = parts[-1]
    classname = ".".join([parts[0].removesuffix(".py").replace("/", ".")] + parts[1:-1])
    by_class = [c for c in cases if c.name == name and c.classname.endswith(classname)]
    by_name = [c for c in cases if c.name == name]
    if by_class:
        return by_class[0]
    return by_name[0] if len(by_name) == 1 else None


def _judge(case: Case, expected: tuple[ExpectedReport, ...]) -> Case:
    if not case.reports:
        return case
    bad = [r for r in case.reports if not is_expected(r, expected)]
    if not bad:
        return case
    syz = bad[0].syz_title or bad[0].signature
    message = f"kernel report during the test: {bad[0].signature}" + \
        (f" (syzkaller: {syz})" if syz != bad[0].signature else "")
    if case.status is Status.ERROR and case.message:
        message = f"{message} ({case.message})"
    return replace(case, status=Status.ERROR, message=message)


def write(cases: list[Case], name: str, properties: dict[str, str], path: Path) -> None:
    """One testsuite per target; properties carry commit, arch, variant, kernel."""
    suite = TestSuite(clean(name))
    for key, value in properties.items():
        suite.add_property(clean(key), clean(value))
    for case in cases:
        suite.add_testcase(_testcase(case))
    suite.update_statistics()
    xml = JUnitXml()
    xml.add_testsuite(suite)
    path.parent.mkdir(parents=True, exist_ok=True)
    xml.write(str(path), pretty=True)


def _testcase(case: Case) -> TestCase:
    tc = TestCase(clean(case.name), clean(f"{case.suite}.{case.classname}")
                  if case.suite != "lab" else "lab", case.duration)
    if case.properties:
        props = Properties()
        for key, value in case.properties:
            props.add_property(Property(clean(key), clean(value)))
        tc.append(props)
    texts = [clean(r.text) for r in case.reports]
    message = clean(case.message)
    if case.status is Status.FAIL:
        tc.result = [Failure(message or "failed")]
    elif case.status is Status.ERROR:
        err = Error(message or "error", "kernel-report" if case.reports else "error")
        err.text = "\n\n".join(texts) or clean(case.output)
        tc.result = [err]
    elif case.status is Status.SKIP:
        tc.result = [Skipped(message or "skipped")]
    if case.status is not Status.ERROR and texts:
        tc.system_err = "expected kernel report(s):\n\n" + "\n\n".join(texts)
    if case.output and case.status is Status.FAIL:
        tc.system_out = clean(case.output)
    return tc


def merge(paths: Iterable[Path], out: Path) -> list[str]:
    """Every target's file in one; a file that cannot be read is left out and named."""
    merged = JUnitXml("bpflab")
    skipped = []
    for path in paths:
        try:
            xml = JUnitXml.fromfile(str(path))
        except (ET.ParseError, OSError) as exc:
            skipped.append(f"{path}: {exc}")
            continue
        for suite in ([xml] if isinstance(xml, TestSuite) else xml):
            merged.add_testsuite(suite)
    merged.update_statistics()
    out.parent.mkdir(parents=True, exist_ok=True)
    merged.write(str(out), pretty=True)
    return skipped
