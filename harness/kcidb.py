"""A run exported in KernelCI's KCIDB schema (kcidb-io's latest), so a KernelCI
submitter can send it as is: one checkout per commit, one build per target (commit,
arch, variant), one test per case of the target's JUnit, and an issue per unexpected
kernel report signature with an incident per target and test it showed in. Validated
with kcidb-io before it is written: an export that would not be accepted is never
left behind."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path

import kcidb_io

from harness.errors import LabError
from harness.junit import JUnitError, stored_cases
from harness.model import Stage, Status, Target
from harness.results import write_json
from harness.store import Store, load_outcome

ORIGIN = "bpflab"
STATUS = {Status.PASS: "PASS", Status.FAIL: "FAIL", Status.ERROR: "ERROR",
          Status.SKIP: "SKIP"}


def _id(*parts: str) -> str:
    return f"{ORIGIN}:" + ":".join(re.sub(r"[^A-Za-z0-9._-]", "_", p) for p in parts)


def test_path(test_id: str, suite: str) -> str:
    """A dot-separated KCIDB path: bpflab.python.test_map_in_map_free.test_x_param_."""
    words = [test_id.split("::")[-1]] if suite == "lab" else \
        [w for w in re.split(r"::|\.py::|\.", test_id) if w and w != "py"]
    return ".".join(re.sub(r"[^A-Za-z0-9_-]", "_", w) for w in [ORIGIN, suite, *words])


def export(store: Store, targets: Sequence[Target], branch: str = "",
           repository: str = "") -> dict[str, object]:
    """The KCIDB data of targets as the store holds them."""
    checkouts: dict[str, dict[str, object]] = {}
    builds: list[dict[str, object]] = []
    tests: list[dict[str, object]] = []
    issues: dict[str, dict[str, object]] = {}
    incidents: list[dict[str, object]] = []
    for target in targets:
        where = store.target_dir(target)
        try:
            outcome = load_outcome(where / "metadata.json")
        except ValueError:
            continue  # not run: nothing to say
        sha = target.commit.sha
        checkout = _id(sha)
        checkouts.setdefault(checkout, {
            "id": checkout, "origin": ORIGIN, "git_commit_hash": sha,
            "git_commit_name": target.commit.name, "tree_name": "bpflab",
            **({"git_repository_url": repository} if repository.startswith("https://")
               else {}),
            **({"git_repository_branch": branch} if branch else {}),
            "valid": True})
        build = _id(sha[:12], target.column, target.variant.name)
        built = outcome.stages.get(Stage.BUILD)
        builds.append({"id": build, "origin": ORIGIN, "checkout_id": checkout,
                       "architecture": target.arch.name,
                       "config_name": f"bpflab-{target.variant.name}",
                       "status": "PASS" if built is Status.PASS else "FAIL",
                       **({"duration": float(outcome.durations["total"])}
                          if "total" in outcome.durations else {}),
                       "misc": {"kernel_release": outcome.kernel_release,
                                "variant": target.variant.name}})
        try:
            cases = stored_cases(where / "junit.xml")
        except JUnitError:
            cases = []
        for n, case in enumerate(cases):
            tests.append({"id": _id(sha[:12], target.column, target.variant.name, str(n)),
                          "origin": ORIGIN, "build_id": build,
                          "path": test_path(case.test_id, case.suite),
                          "status": STATUS[case.status], "duration": float(case.duration),
                          "environment": {"comment": f"QEMU {outcome.accel or 'guest'}"},
                          "misc": {"test_id": case.test_id}})
        for ref in outcome.reports:
            if ref.expected:
                continue  # the variant's own fault injection, not a kernel issue
            issue = _id("report", hashlib.sha1(ref.signature.encode()).hexdigest()[:16])
            issues[issue] = {"id": issue, "version": 1, "origin": ORIGIN,
                             "report_subject": ref.signature, "culprit": {"code": True},
                             "comment": ref.syz_title or ref.signature}
            incidents.append({"id": _id("incident", build, issue.split(":")[-1],
                                        str(len(incidents))),
                              "origin": ORIGIN, "issue_id": issue, "issue_version": 1,
                              "build_id": build, "present": True,
                              **({"comment": f"in {ref.test}"} if ref.test else {})})
    schema = kcidb_io.schema.LATEST
    return {"version": {"major": schema.major, "minor": schema.minor},
            "checkouts": list(checkouts.values()), "builds": builds, "tests": tests,
            "issues": list(issues.values()), "incidents": incidents}


def write(data: dict[str, object], path: Path) -> Path:
    """Validated, then written; an invalid export is the lab's bug: said, not written."""
    try:
        kcidb_io.schema.LATEST.validate(data)
    except Exception as exc:  # jsonschema's ValidationError and kcidb-io's own
        raise LabError(f"KCIDB export does not validate: {str(exc).splitlines()[0]}") from exc
    write_json(path, data)
    return path
