"""The result store: one directory per run, one per target inside it. A target is
finished when its metadata.json is there (written last, atomically) with the
fingerprint of what produced it; a rerun skips finished targets. A metadata.json
that cannot be read, or is of another schema, means the target is redone. One run
at a time holds a run directory (flock)."""

from __future__ import annotations

import fcntl
import json
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from harness.errors import LabError
from harness.kreport import Report
from harness.model import ReportRef, Target, TargetOutcome
from harness.results import write_atomic, write_json


class RunDirBusy(LabError):
    """Another run holds the run directory."""


def target_dirname(target: Target) -> str:
    """By tag when the commit has one (stable across re-imports), else short sha."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", target.commit.name)
    return f"{name}__{target.column}__{target.variant.name}"


def load_outcome(path: Path) -> TargetOutcome:
    """The outcome in a metadata.json; ValueError when unreadable or not this schema's."""
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"unreadable: {exc}") from exc
    return TargetOutcome.from_json(data)


@dataclass(frozen=True)
class Store:
    root: Path

    def target_dir(self, target: Target) -> Path:
        return self.root / "targets" / target_dirname(target)

    def finished(self, target: Target, fingerprint: str) -> TargetOutcome | None:
        meta = self.target_dir(target) / "metadata.json"
        if not meta.exists():
            return None
        try:
            outcome = load_outcome(meta)
        except ValueError as exc:
            print(f"store: {meta}: {exc}: the target is redone", flush=True)
            return None
        return outcome if outcome.fingerprint == fingerprint else None

    def save_reports(self, target: Target, reports: list[tuple[int, Report]],
                     expected: list[bool]) -> tuple[ReportRef, ...]:
        """Each report's text in kasan/NN-kind.txt; the references go in metadata."""
        refs = []
        for i, ((boot, report), wanted) in enumerate(zip(reports, expected)):
            name = f"kasan/{i + 1:02d}-{report.kind.lower()}.txt"
            write_atomic(self.target_dir(target) / name, report.text + "\n")
            refs.append(ReportRef(report.signature, report.kind, name,
                                  report.syz_title or report.signature,
                                  report.test, boot,
                                  report.line, wanted, report.corrupted))
        return tuple(refs)

    def save(self, target: Target, outcome: TargetOutcome) -> None:
        """Last write of a target: from here on it counts as finished."""
        write_json(self.target_dir(target) / "metadata.json", outcome.to_json())

    def outcomes(self) -> list[tuple[Path, TargetOutcome]]:
        """Every readable outcome, in history order; unreadable ones are named and left."""
        found = []
        for meta in sorted((self.root / "targets").glob("*/metadata.json")):
            try:
                found.append((meta.parent, load_outcome(meta)))
            except ValueError as exc:
                print(f"store: {meta}: {exc}: left out (a matrix run redoes it)", flush=True)
        return sorted(found, key=lambda p: (p[1].order, p[1].column, p[1].variant))

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run directory for this process; a second run stops with one line."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / ".lock"
        with open(path, "a+") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.seek(0)
                holder = fh.read().strip() or "?"
                raise RunDirBusy(f"{self.root} is in use by another run (pid {holder}): "
                                 "wait for it to end, or give another --run-dir") from None
            fh.seek(0)
            fh.truncate()
            fh.write(f"{os.getpid()}\n")
            fh.flush()
            yield


def counts(statuses: list[str]) -> dict[str, int]:
    tally = {s: 0 for s in ("pass", "fail", "skip", "error")}
    for s in statuses:
        tally[s] += 1
    tally["total"] = len(statuses)
    return tally
