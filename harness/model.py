"""The lab's vocabulary for one target's run: what is tested (Commit, Target,
Selection), the stages it goes through, and what came of it (TargetOutcome, with its
kernel reports as typed references). Plain data; the store writes it as JSON."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Iterable

from harness.errors import UserError

if TYPE_CHECKING:
    from harness.config import Arch, Lab, Profile, Variant

# metadata.json's layout; an older or foreign one is redone, never read half-way
SCHEMA = 2


class Status(str, enum.Enum):
    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"
    ERROR = "error"


class Stage(str, enum.Enum):
    BUILD = "build"
    BOOT = "boot"
    TESTS = "tests"


class Verdict(enum.Enum):
    """What an entry point's run amounts to; only tasks.py turns it into an exit code."""

    OK = "ok"  # every result as the kernel under test should give
    FAILED = "failed"  # a test, a build, a boot or a kernel report was not as expected
    LAB = "lab"  # the lab itself could not produce a result


@dataclass(frozen=True)
class TaskResult:
    """An entry point's result: its verdict, and for a command run in a guest on the
    user's behalf (./lab boot --run, ./lab ssh --command) that command's own status."""

    verdict: Verdict
    command_status: int | None = None


# Worst first: a target's status is the worst of its stages.
SEVERITY = (Status.ERROR, Status.FAIL, Status.PASS, Status.SKIP)


def worst(statuses: Iterable[Status]) -> Status:
    found = set(statuses)
    return next((s for s in SEVERITY if s in found), Status.SKIP)


@dataclass(frozen=True)
class Commit:
    sha: str
    tree: str
    name: str  # a tag when one points here, else the short sha
    subject: str
    series: str = ""  # "6.1", "7.3": VERSION.PATCHLEVEL of its top Makefile ("" unknown)

    @property
    def short(self) -> str:
        return self.sha[:12]


@dataclass(frozen=True)
class Target:
    commit: Commit
    arch: "Arch"
    variant: "Variant"
    profile: "Profile | None" = None  # None: the arch's own machine

    @classmethod
    def on(cls, commit: Commit, profile: "Profile", variant: "Variant") -> "Target":
        """commit's variant on a machine profile (an arch's own one: profile None)."""
        own = profile.name == profile.arch.name
        return cls(commit, profile.arch, variant, None if own else profile)

    @property
    def column(self) -> str:
        """The matrix column: the profile's name, which for an arch's own profile is
        the arch's (so labels, store keys and JUnit names of such targets stay)."""
        return self.profile.name if self.profile else self.arch.name

    @property
    def machine(self) -> "Profile":
        from harness.config import default_profile
        return self.profile or default_profile(self.arch)

    @property
    def label(self) -> str:
        return f"{self.column} {self.commit.name} {self.variant.name}"


@dataclass(frozen=True)
class Selection:
    """The --arch/--variant/--commit filters; a filter that matches nothing is refused
    with the choices, before any work."""

    arch: str | None = None
    variant: str | None = None
    commit: str | None = None
    # Target labels ("x86_64 v7.3-rc7 base") to keep, after the filters above; () keeps
    # all. A label that matches no target is refused like the filters.
    labels: tuple[str, ...] = ()

    def commits(self, commits: list[Commit]) -> list[Commit]:
        if not self.commit:
            return commits
        c = self.commit
        found = [x for x in commits if c in (x.name, x.sha) or x.sha.startswith(c)]
        if not found:
            names = ", ".join(x.name for x in commits)
            raise UserError(f"--commit {c}: not among the lab's commits ({names})")
        return found

    def targets(self, lab: "Lab", commits: list[Commit]) -> list[Target]:
        columns = list(lab.columns)
        if self.arch:
            columns = [p for p in columns if self.arch == p.name] or \
                [p for p in columns if p.arch == lab.arch(self.arch)]
        variants = [v for v in lab.variants if self.variant in (None, v.name)]
        if not variants:
            names = ", ".join(v.name for v in lab.variants)
            raise UserError(f"--variant {self.variant}: not a variant of {lab.path.name} "
                            f"(choices: {names})")
        chosen = self.commits(commits)
        found = [Target.on(c, p, v) for c in chosen for p in columns for v in variants
                 if (not v.arches or p.arch.name in v.arches or p.name in v.arches)
                 and v.runs_on(c.series) and p.runs_on(c.series)]
        if self.labels:
            unknown = sorted(set(self.labels) - {t.label for t in found})
            if unknown:
                raise UserError(f"target {unknown[0]!r}: not among the lab's targets "
                                f"({', '.join(t.label for t in found)})")
            found = [t for t in found if t.label in self.labels]
        if not found:
            where = [f"{v.name}: arches {', '.join(v.arches) or 'any'}, series "
                     f"{', '.join(v.series) or 'any'}" for v in variants]
            kernels = [f"{c.name} ({c.series or 'series unknown'})" for c in chosen]
            raise UserError(f"no target is left: {'; '.join(where)}; asked for "
                            f"{', '.join(p.name for p in columns)} on {', '.join(kernels)}")
        return found


@dataclass(frozen=True)
class ReportRef:
    """One kernel report of a target, as stored: the text is in `file` (relative to
    the target's directory), the rest is here so nothing parses text back."""

    signature: str
    kind: str
    file: str
    syz_title: str = ""
    test: str | None = None  # the test whose kmsg markers held it
    boot: int = 1  # which boot of the target printed it
    line: int = 0  # header line in that boot's console
    expected: bool = False  # the variant declared it for that test
    corrupted: str = ""


@dataclass(frozen=True)
class TargetOutcome:
    """What one target did, stage by stage; saved as metadata.json, written last."""

    commit: str
    name: str
    subject: str
    arch: str
    variant: str
    order: int  # position of the commit in history order
    fingerprint: str
    stages: dict[Stage, Status]
    kernel_release: str = ""
    accel: str = ""
    exit_reason: str = ""  # how the first boot ended: ready, panic, hang, exited
    reason: str = ""  # one line: why the target is not a pass, when it is not
    errors: tuple[str, ...] = ()
    durations: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    reports: tuple[ReportRef, ...] = ()
    reports_not_kept: int = 0  # repeats of one (signature, test) beyond the kept ones
    boots: int = 0
    profile: str = ""  # the machine profile, "" for the arch's own

    @property
    def column(self) -> str:
        """The matrix column: the profile, or the arch for the arch's own profile."""
        return self.profile or self.arch

    @property
    def status(self) -> Status:
        return worst(self.stages.values())

    @property
    def signatures(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(r.signature for r in self.reports))

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        data["stages"] = {k.value: v.value for k, v in self.stages.items()}
        data["reports"] = [{f.name: getattr(r, f.name) for f in fields(r)}
                           for r in self.reports]
        data["errors"] = list(self.errors)
        data["schema"] = SCHEMA
        return data

    @classmethod
    def from_json(cls, data: object) -> "TargetOutcome":
        """The outcome in a metadata.json; ValueError when it is not this schema's."""
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            found = data.get("schema") if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"schema {found!r}, this lab writes {SCHEMA}")
        raw = dict(data)
        raw.pop("schema")
        try:
            raw["stages"] = {Stage(k): Status(v) for k, v in _dict(raw["stages"]).items()}
            raw["reports"] = tuple(ReportRef(**_dict(r)) for r in _list(raw.get("reports", [])))
            raw["errors"] = tuple(str(e) for e in _list(raw.get("errors", [])))
            raw["durations"] = {str(k): _finite(v) for k, v in
                                _dict(raw.get("durations", {})).items()}
            raw["counts"] = {str(k): int(v) for k, v in _dict(raw.get("counts", {})).items()}
            outcome = cls(**raw)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not an outcome: {exc}") from exc
        for name in ("commit", "name", "arch", "variant", "fingerprint", "profile"):
            if not isinstance(getattr(outcome, name), str):
                raise ValueError(f"{name}: not a string")
        return outcome


def _dict(value: object) -> dict[Any, Any]:
    if not isinstance(value, dict):
        raise TypeError(f"expected an object, got {type(value).__name__}")
    return value


def _list(value: object) -> list[Any]:
    if not isinstance(value, list):
        raise TypeError(f"expected a list, got {type(value).__name__}")
    return value


def _finite(value: object) -> float:
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"expected a finite number, got {value!r}")
    return float(value)
