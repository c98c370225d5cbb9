"""Test cases in and out of JUnit: read the suites' files (pytest JUnit, TAP from the
C suite), tie kernel reports to cases, write one file per target and a merged one."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable

from junitparser import (Error, Failure, JUnitXml, Properties, Property, Skipped, TestCase,
                         TestSuite)

from harness.kreport import Report
from harness.results import Status

HEALTH = "kernel-health"


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


def from_junit(path: Path, suite: str) -> list[Case]:
    """Cases of a JUnit file written by pytest (or any JUnit producer)."""
    xml = JUnitXml.fromfile(str(path))
    suites = [xml] if isinstance(xml, TestSuite) else list(xml)
    cases = []
    for ts in suites:
        for tc in ts:
            status, message, text = Status.PASS, "", ""
            for res in tc.result:
                status = {Error: Status.ERROR, Failure: Status.FAIL,
                          Skipped: Status.SKIP}.get(type(res), Status.FAIL)
                message, text = res.message or "", res.text or ""
            props = tc.child(Properties)
            cases.append(Case(suite, tc.classname or suite, tc.name, status,
                              float(tc.time or 0), message, text,
                              properties=tuple((p.name, p.value) for p in (props or []))))
    return cases


TAP_RE = re.compile(r"^(not ok|ok)\s+\d+\s*-?\s*([^#]*?)\s*(#\s*(SKIP|TODO)\b(.*))?$",
                    re.IGNORECASE)


def from_tap(lines: Iterable[str], suite: str, classname: str) -> list[Case]:
    """TAP/KTAP results: 'ok N - name', 'not ok N - name', '# SKIP reason'. The
    diagnostic lines ('# ...') before a result become its output."""
    cases: list[Case] = []
    diag: list[str] = []
    for raw in lines:
        line = raw.strip()
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
    return cases


def tie_reports(cases: list[Case], reports: list[Report], expected: tuple[str, ...],
                health_name: str = HEALTH) -> list[Case]:
    """Reports inside a test's markers go to that case (an error unless the variant
    expects that signature); the rest fail the kernel-health case, which also fails
    when an expected report never came."""
    out = {c.nodeid: c for c in cases}
    stray: list[Report] = []
    for report in reports:
        case = case_for(report.test, cases)
        if case is None:
            stray.append(report)
            continue
        case = out[case.nodeid]
        out[case.nodeid] = replace(case, reports=case.reports + (report,))
    final = [_judge(c, expected) for c in out.values()]
    seen = {r.signature for r in reports}
    missing = [e for e in expected if not any(s.startswith(e) for s in seen)]
    unexpected = [r for r in stray if not any(r.signature.startswith(e) for e in expected)]
    problems = [f"kernel report outside any test: {r.signature}" for r in unexpected]
    problems += [f"expected kernel report never appeared: {e}" for e in missing]
    health = Case("lab", "lab", health_name, Status.FAIL if problems else Status.PASS,
                  message="; ".join(problems), reports=tuple(stray))
    return final + [health]


def case_for(nodeid: str | None, cases: list[Case]) -> Case | None:
    """The case a kmsg marker names: a pytest node id (path/to/test_x.py::Class::name,
    which JUnit spells classname path.to.test_x.Class), or 'suite::name'."""
    if not nodeid:
        return None
    parts = nodeid.split("::")
    name = parts[-1]
    classname = ".".join([parts[0].removesuffix(".py").replace("/", ".")] + parts[1:-1])
    exact = [c for c in cases if c.name == name and c.classname == classname]
    by_name = [c for c in cases if c.name == name]
    if exact:
        return exact[0]
    return by_name[0] if len(by_name) == 1 else None


def _judge(case: Case, expected: tuple[str, ...]) -> Case:
    if not case.reports:
        return case
    bad = [r for r in case.reports if not any(r.signature.startswith(e) for e in expected)]
    if not bad:
        return case
    message = f"kernel report during the test: {bad[0].signature}"
    return replace(case, status=Status.ERROR, message=message)


def write(cases: list[Case], name: str, properties: dict[str, str], path: Path) -> None:
    """One testsuite per target; properties carry commit, arch, variant, kernel."""
    suite = TestSuite(name)
    for key, value in properties.items():
        suite.add_property(key, value)
    for case in cases:
        suite.add_testcase(_testcase(case))
    suite.update_statistics()
    xml = JUnitXml()
    xml.add_testsuite(suite)
    path.parent.mkdir(parents=True, exist_ok=True)
    xml.write(str(path), pretty=True)


def _testcase(case: Case) -> TestCase:
    tc = TestCase(case.name, f"{case.suite}.{case.classname}" if case.suite != "lab"
                  else "lab", case.duration)
    if case.properties:
        props = Properties()
        for key, value in case.properties:
            props.add_property(Property(key, value))
        tc.append(props)
    texts = [r.text for r in case.reports]
    if case.status is Status.FAIL:
        tc.result = [Failure(case.message or "failed")]
    elif case.status is Status.ERROR:
        err = Error(case.message or "error", "kernel-report" if case.reports else "error")
        err.text = "\n\n".join(texts) or case.output
        tc.result = [err]
    elif case.status is Status.SKIP:
        tc.result = [Skipped(case.message or "skipped")]
    if case.status is not Status.ERROR and texts:
        tc.system_err = "expected kernel report(s):\n\n" + "\n\n".join(texts)
    if case.output and case.status is Status.FAIL:
        tc.system_out = case.output
    return tc


def merge(paths: Iterable[Path], out: Path) -> None:
    merged = JUnitXml("bpflab")
    for path in paths:
        xml = JUnitXml.fromfile(str(path))
        for suite in ([xml] if isinstance(xml, TestSuite) else xml):
            merged.add_testsuite(suite)
    merged.update_statistics()
    out.parent.mkdir(parents=True, exist_ok=True)
    merged.write(str(out), pretty=True)
