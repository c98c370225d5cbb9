"""The result store: one directory per run, one per target inside it. A target is
finished when its metadata.json is there (written last, atomically) with the
fingerprint of what produced it; a rerun skips finished targets."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.build import Target
from harness.junit import Case
from harness.kreport import Report
from harness.results import Status, write_atomic, write_json


@dataclass(frozen=True)
class TargetOutcome:
    """What one target did, stage by stage; plain data, saved as metadata.json."""

    commit: str
    name: str
    subject: str
    arch: str
    variant: str
    order: int  # position of the commit in history order
    fingerprint: str
    stages: dict[str, str]  # build/boot/tests -> Status value
    kernel_release: str = ""
    accel: str = ""
    exit_reason: str = ""
    errors: tuple[str, ...] = ()
    durations: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    signatures: tuple[str, ...] = ()
    expected_reports: tuple[str, ...] = ()
    reports_not_kept: int = 0  # repeats of one (signature, test) beyond kreport.bounded

    @property
    def status(self) -> Status:
        """Worst stage wins: error beats fail beats pass beats skip."""
        values = [Status(v) for v in self.stages.values()]
        for s in (Status.ERROR, Status.FAIL, Status.PASS):
            if s in values:
                return s
        return Status.SKIP


def target_dirname(target: Target) -> str:
    """By tag when the commit has one (stable across re-imports), else short sha."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", target.commit.name)
    return f"{name}__{target.arch.name}__{target.variant.name}"


@dataclass(frozen=True)
class Store:
    root: Path

    def target_dir(self, target: Target) -> Path:
        return self.root / "targets" / target_dirname(target)

    def finished(self, target: Target, fingerprint: str) -> TargetOutcome | None:
        meta = self.target_dir(target) / "metadata.json"
        if not meta.exists():
            return None
        outcome = load_outcome(meta)
        return outcome if outcome.fingerprint == fingerprint else None

    def save_reports(self, target: Target, reports: list[Report]) -> None:
        kasan = self.target_dir(target) / "kasan"
        for i, report in enumerate(reports):
            head = f"# {report.signature}\n# test: {report.test or '(none)'}\n" \
                   f"# console line {report.line + 1}\n"
            write_atomic(kasan / f"{i + 1:02d}-{report.kind.lower()}.txt",
                         head + report.text + "\n")

    def save(self, target: Target, outcome: TargetOutcome) -> None:
        """Last write of a target: from here on it counts as finished."""
        write_json(self.target_dir(target) / "metadata.json", asdict(outcome))

    def outcomes(self) -> list[tuple[Path, TargetOutcome]]:
        found = []
        for meta in sorted((self.root / "targets").glob("*/metadata.json")):
            found.append((meta.parent, load_outcome(meta)))
        return sorted(found, key=lambda p: (p[1].order, p[1].arch, p[1].variant))


def load_outcome(path: Path) -> TargetOutcome:
    data: dict[str, Any] = json.loads(path.read_text())
    for key in ("errors", "signatures", "expected_reports"):
        data[key] = tuple(data.get(key, ()))
    return TargetOutcome(**data)


def counts(cases: list[Case]) -> dict[str, int]:
    tally = {s.value: 0 for s in Status}
    for case in cases:
        tally[case.status.value] += 1
    tally["total"] = len(cases)
    return tally
