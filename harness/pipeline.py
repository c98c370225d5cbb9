"""One target, start to end, as a straight pipeline: the build's result, the suites
over as many boots as they need (guest.py, suites.Rounds), the kernel reports of
every boot tied to tests, the outcome, the store. Every fault ends as a recorded
result: a kernel that dies mid-suite fails its target, never reads as a pass."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, ContextManager, Sequence

from harness import commits, junit, kreport, presence
from harness.boot import BootedGuest, BootFn, GuestKit, prepare_kit
from harness.build import BuildResult
from harness.config import Arch, GuestSettings, Lab, Profile, shared_cache
from harness.emulator import Qemu, qemu_for
from harness.errors import LabError
from harness.junit import Case
from harness.keys import ensure_lab_key
from harness.model import ReportRef, Stage, Status, Target, TargetOutcome, worst
from harness.ops import Ops
from harness.progress import fmt_secs
from harness.qemu import machine_of
from harness.remote import boot_remote
from harness.results import write_atomic
from harness.ssh import SSHError
from harness.store import Store, counts
from harness.suites import BootEnd, Guard, Install, Pending, Rounds

# The seam to the C suite's build: (workdir, arch, vmlinux, ops) -> the binary.
CSuiteFn = Callable[[Path, Arch, Path, Ops], Path]


@dataclass(frozen=True)
class Context:
    """What recording every target of one run shares: the coordinator's side, the one
    writer of the store."""

    lab: Lab
    store: Store
    catalog: dict[str, tuple[str, ...]]  # suite -> test ids every target must report
    order: dict[str, int]  # commit sha -> position in history
    fingerprints: dict[Target, str]


@dataclass(frozen=True)
class Guests:
    """What running a target's guests needs, on whichever worker runs them."""

    lab: Lab
    ops: Ops
    boot: BootFn
    c_suite: CSuiteFn
    catalog: dict[str, tuple[str, ...]]
    kits: "Kits"
    remote: Callable[..., ContextManager[BootedGuest]] = boot_remote  # real machines


Prepare = Callable[[Path, Arch, Path, GuestSettings, Ops], GuestKit]


class Kits:
    """Guest preparation once per arch per run (rootfs, keys, accelerator)."""

    def __init__(self, lab: Lab, ops: Ops, prepare: Prepare = prepare_kit) -> None:
        self.lab, self.ops, self.prepare = lab, ops, prepare
        self._kits: dict[str, GuestKit] = {}
        self._qemu: dict[str, Qemu] = {}

    def get(self, arch: Arch, kernel: Path) -> GuestKit:
        if arch.name not in self._kits:
            self._kits[arch.name] = self.prepare(self.lab.workdir, arch, kernel,
                                                 self.lab.guest, self.ops)
        return self._kits[arch.name]

    def qemu(self, profile: Profile) -> Qemu | None:
        """The QEMU for the profile's guests when it needs a newer one than the arch's
        (fetched once into the shared cache), else None: the arch's own."""
        if not profile.qemu_min:
            return None
        if profile.name not in self._qemu:
            self._qemu[profile.name] = qemu_for(self.ops, profile, shared_cache())
        return self._qemu[profile.name]

    def lab_key(self) -> Path:
        """The lab's private key: what a real machine accepts unless its entry names
        another."""
        return ensure_lab_key(self.lab.workdir, self.ops).private


@dataclass(frozen=True)
class BootRecord:
    state: str  # ready, panic, hang, exited
    reason: str
    accel: str
    ssh_ready_s: float | None
    console: Path
    fault: str = ""  # how the suites' share of this boot ended, when cut short


@dataclass(frozen=True)
class GuestRun:
    boots: tuple[BootRecord, ...]
    cases: tuple[Case, ...]
    log: str
    tests_s: float
    guest_s: float
    error: str = ""  # the lab could not boot at all (a LabError), if so


def record(ctx: Context, target: Target, build: BuildResult | LabError, build_log: str,
           run: GuestRun | None, files: Path | None) -> TargetOutcome:
    """A target's build and guests, wherever they ran, into its directory of the store:
    the build log, the guests' files (consoles, suites), the reports tied to tests, the
    outcome."""
    tdir = ctx.store.target_dir(target)
    shutil.rmtree(tdir, ignore_errors=True)
    if files is not None:
        shutil.move(files, tdir)
    tdir.mkdir(parents=True, exist_ok=True)
    if isinstance(build, LabError):
        return _save(ctx, target, _outcome(ctx, target, {Stage.BUILD: Status.ERROR},
                                           reason=f"build: lab error: {build}",
                                           errors=(f"lab error: {build}",)))
    (tdir / "build.log").write_text(build_log)
    durations = {"build": 0.0 if build.cached else _build_seconds(build)}
    if run is None or build.status is not Status.PASS:
        print(f"   build failed: {'; '.join(build.errors[:3])}", flush=True)
        stages = {Stage.BUILD: Status.FAIL, Stage.BOOT: Status.SKIP, Stage.TESTS: Status.SKIP}
        return _save(ctx, target, _outcome(ctx, target, stages, errors=build.errors,
                                           durations=durations,
                                           reason=f"build: {(build.errors or ('failed',))[0]}"))
    moved = replace(run, boots=tuple(replace(b, console=tdir / b.console) for b in run.boots))
    return _save(ctx, target, collect(ctx, target, build, moved, tdir, durations))


def _build_seconds(build: BuildResult) -> float:
    took = build.meta.get("durations", {})
    total = took.get("total", 0.0) if isinstance(took, dict) else 0.0
    return float(total) if isinstance(total, (int, float)) else 0.0


def run_guest(ctx: Guests, target: Target, build: BuildResult, tdir: Path,
              commits_file: Path) -> GuestRun:
    """The suites over as many boots as they need, within guest.max_boots, into tdir;
    consoles named relative to it."""
    started = time.monotonic()
    assert build.image is not None and build.artifacts is not None
    try:  # a real machine has its own root filesystem and no accelerator to probe
        kit = ctx.kits.get(target.arch, build.image) if not target.machine.remote else None
    except LabError as exc:
        return GuestRun((), (), "", 0.0, 0.0, f"guest preparation: {exc}")
    c_binary, c_cases = _c_suite(ctx, target, build)
    catalog = {s: ids for s, ids in tests_of(ctx.catalog, target).items()
               if s == "python" or c_binary}
    # a variant running some tests only names them; the whole catalogue runs each suite
    rounds = Rounds(catalog, [Pending(s, ids) for s, ids in catalog.items()]) \
        if target.variant.tests else Rounds(catalog)
    setup = Install(_env(target), c_binary, commits_file)
    boots: list[BootRecord] = []
    why, tests_s, lab_error = "", 0.0, ""
    while not rounds.done():
        if len(boots) >= ctx.lab.guest.max_boots:
            why = (f"the boot budget ran out (guest.max_boots = {ctx.lab.guest.max_boots})"
                   f" with {rounds.left()} test run(s) queued")
            break
        if boots:
            print(f"   a fresh boot for {rounds.left()} more test run(s)", flush=True)
        try:
            record, end, secs = _one_boot(ctx, target, kit, build, tdir,
                                          len(boots) + 1, rounds, setup)
        except LabError as exc:  # the lab, not the kernel: no further boot
            why = lab_error = f"boot {len(boots) + 1}: lab error: {exc}"
            break
        boots.append(record)
        tests_s += secs
        why = _stop_why(boots, end)
        if why:
            break
    suites = rounds.result(why)
    boots = [replace(b, console=b.console.relative_to(tdir)) for b in boots]
    return GuestRun(tuple(boots), suites.cases + c_cases, suites.log, tests_s,
                    time.monotonic() - started, lab_error)


def _stop_why(boots: list[BootRecord], end: BootEnd | None) -> str:
    """Why no further boot would help, or ''."""
    last = boots[-1]
    if end is None:  # the guest did not come up
        if len(boots) == 1:
            return f"the kernel did not boot ({last.state}: {last.reason})"
        return f"fresh boot {len(boots)} did not come up ({last.state}: {last.reason})"
    if end.fault and not end.progress and len(boots) > 1 and boots[-2].fault:
        return f"two boots in a row ended without a new result: {end.fault}"
    return ""


def _booted(ctx: Guests, target: Target, kit: GuestKit | None, build: BuildResult,
            settings: GuestSettings, run_dir: Path) -> ContextManager[BootedGuest]:
    """A QEMU guest of the target's profile, or the real machine it names."""
    profile = target.machine
    assert build.image is not None
    if profile.remote is not None:
        return ctx.remote(profile.remote, profile.name, build.image,
                          str(build.meta.get("kernel_release", "")), settings, run_dir,
                          ctx.kits.lab_key())
    assert kit is not None
    return ctx.boot(kit, build.image, settings, run_dir,
                    machine=machine_of(profile, ctx.kits.qemu(profile)))


def _one_boot(ctx: Guests, target: Target, kit: GuestKit | None, build: BuildResult,
              tdir: Path, number: int, rounds: Rounds,
              setup: Install) -> tuple[BootRecord, BootEnd | None, float]:
    profile, limits = target.machine, ctx.lab.limits
    settings = replace(ctx.lab.guest, cmdline_extra=ctx.lab.guest.cmdline_extra + profile.cmdline)
    name = "guest" if number == 1 else f"guest-{number}"
    with _booted(ctx, target, kit, build, settings, tdir / name) as guest:
        o = guest.outcome
        ready = f" after {o.ssh_ready_s:.1f} s" if o.ssh_ready_s else f": {o.reason}"
        print(f"   boot {number} ({o.accel}): {o.state.value}{ready}", flush=True)
        record = BootRecord(o.state.value, o.reason, o.accel, o.ssh_ready_s, o.console_log)
        if not o.ready:
            return record, None, 0.0
        print("   suites: running", flush=True)
        guard = Guard(settings.suite_timeout, guest.watch(settings.test_timeout),
                      limits.output_bytes, limits.junit_bytes)
        t0 = time.monotonic()
        end = rounds.run(guest.ssh, tdir / "suites", setup, guard, guest.running_test)
        secs = time.monotonic() - t0
        if end.fault:
            print(f"   the guest died or wedged: {end.fault}", flush=True)
            guest.guest.sysrq()  # stacks of a wedged guest into its console
        else:
            guest.power_off()
        return BootRecord(o.state.value, o.reason, o.accel, o.ssh_ready_s, o.console_log,
                          end.fault), end, secs


def _c_suite(ctx: Guests, target: Target, build: BuildResult) -> tuple[Path | None,
                                                                         tuple[Case, ...]]:
    """The C suite's binary for this kernel's BTF; when it does not build, each of its
    tests is an error saying so, and the Python suite still runs."""
    assert build.artifacts is not None
    if "c" not in tests_of(ctx.catalog, target):
        return None, ()
    try:
        return ctx.c_suite(ctx.lab.workdir, target.arch, build.artifacts / "vmlinux",
                           ctx.ops), ()
    except LabError as exc:
        why = f"not run: the C suite did not build: {exc}"
        return None, tuple(junit.case_of(t, "c", Status.ERROR, why)
                           for t in tests_of(ctx.catalog, target).get("c", ()))


def tests_of(catalog: dict[str, tuple[str, ...]], target: Target) -> dict[str, tuple[str, ...]]:
    """The tests target must report, by suite: the catalogue, or the variant's share."""
    wanted = target.variant.tests
    if not wanted:
        return catalog
    chosen = {s: tuple(t for t in ids if t in wanted) for s, ids in catalog.items()}
    return {s: ids for s, ids in chosen.items() if ids}


def kernel_identity(lab: Lab, ops: Ops, table: Sequence[commits.Upstream], target: Target,
                    release: str) -> commits.Identity:
    """What is known of the kernel under test, for deciding what it carries: on a git
    tree the history's evidence, for a Debian release its changelog; the variant's
    declarations. One answer for the suites and for ./lab backports."""
    repo = lab.source.git
    found = presence.in_git(ops, repo, target.commit.sha, table) if repo else None
    debian = None if repo else presence.debian_release(lab.workdir, target.commit.subject)
    return commits.Identity(release, found, target.variant.reverts, target.variant.backports,
                            target.variant.name, debian=debian)


def commits_text(lab: Lab, ops: Ops, table: Sequence[commits.Upstream], target: Target,
                 build: BuildResult) -> str:
    """Which declared upstream commits this kernel carries (commits.txt, read by both
    suites in the guest): decided where the source is, beside the build."""
    identity = kernel_identity(lab, ops, table, target,
                               str(build.meta.get("kernel_release", "")))
    return commits.render(commits.decide(table, identity), identity)


def _env(target: Target) -> dict[str, str]:
    return {"BPFLAB_ARCH": target.arch.name, "BPFLAB_PROFILE": target.column,
            "BPFLAB_COMMIT": target.commit.sha,
            "BPFLAB_VARIANT": target.variant.name}


def collect(ctx: Context, target: Target, build: BuildResult, run: GuestRun, tdir: Path,
            durations: dict[str, float]) -> TargetOutcome:
    """Consoles, reports, cases and JUnit into the target's directory; the outcome."""
    parsed: list[tuple[int, kreport.Report]] = []
    for i, boot in enumerate(run.boots):
        if boot.console.exists():
            shutil.copy2(boot.console, tdir / ("console.log" if i == 0 else
                                               f"console-{i + 1}.log"))
            lines = boot.console.read_text(errors="replace").splitlines()
            parsed += [(i + 1, r) for r in kreport.parse(lines)]
    kept, dropped = kreport.bounded([r for _, r in parsed])
    keep = {id(r) for r in kept}
    pairs = [p for p in parsed if id(p[1]) in keep]
    ready = bool(run.boots) and run.boots[0].state == "ready"
    cases = list(run.cases)
    if not ready:
        why = run.error or (f"the kernel did not boot ({run.boots[0].state}: "
                            f"{run.boots[0].reason})" if run.boots else "no boot")
        cases = [junit.case_of(t, s, Status.ERROR, f"not run: {why}")
                 for s, ids in tests_of(ctx.catalog, target).items() for t in ids]
    expected = target.variant.expect_reports
    known = ctx.lab.known_reports
    tied = junit.tie_reports(cases, [r for _, r in pairs], expected, known=known) \
        if ready else cases
    refs = ctx.store.save_reports(target, pairs, [junit.is_expected(r, expected) or
                                                  junit.is_known(r, known) for _, r in pairs])
    write_atomic(tdir / "suites.log", run.log)
    junit.write(tied, f"{target.column}/{target.commit.name}/{target.variant.name}",
                {"commit": target.commit.sha, "commit_name": target.commit.name,
                 "arch": target.arch.name, "variant": target.variant.name,
                 **({"profile": target.profile.name} if target.profile else {}),
                 "kernel_release": str(build.meta.get("kernel_release", ""))},
                tdir / "junit.xml")
    stages = _stages(run, ready, tied)
    first = run.boots[0] if run.boots else None
    took = {**durations, "boot": round(first.ssh_ready_s or 0.0, 1) if first else 0.0,
            "tests": round(run.tests_s, 1), "total_guest": round(run.guest_s, 1)}
    return _outcome(ctx, target, stages, kernel_release=str(build.meta.get("kernel_release", "")),
                    accel=first.accel if first else "", exit_reason=first.state if first else "",
                    reason=_reason(run, stages, tied), errors=(run.error,) if run.error else (),
                    durations=took, counts=counts([c.status.value for c in tied]),
                    reports=refs, reports_not_kept=dropped, boots=len(run.boots))


def _stages(run: GuestRun, ready: bool, tied: list[Case]) -> dict[Stage, Status]:
    if run.error and not run.boots:
        return {Stage.BUILD: Status.PASS, Stage.BOOT: Status.ERROR, Stage.TESTS: Status.SKIP}
    if not ready:
        return {Stage.BUILD: Status.PASS, Stage.BOOT: Status.FAIL, Stage.TESTS: Status.SKIP}
    bad = any(c.status in (Status.FAIL, Status.ERROR) for c in tied) or run.error
    # a boot the lab itself could not run (QEMU, ports, keys) is the lab's failure
    return {Stage.BUILD: Status.PASS, Stage.BOOT: Status.ERROR if run.error else Status.PASS,
            Stage.TESTS: Status.FAIL if bad else Status.PASS}


def _reason(run: GuestRun, stages: dict[Stage, Status], tied: list[Case]) -> str:
    """The one line a reader needs first when the target is not a pass."""
    if worst(stages.values()) in (Status.PASS, Status.SKIP):
        return ""
    if run.error:
        return run.error
    if stages.get(Stage.BOOT) is Status.FAIL and run.boots:
        return f"boot: {run.boots[0].state}: {run.boots[0].reason}"
    bad = [c for c in tied if c.status in (Status.FAIL, Status.ERROR)]
    if not bad:
        return "no test of the variant is in the suites' catalogue" if not tied else \
            f"{worst(stages.values()).value}: see the boots' consoles"
    first = bad[0]
    more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
    return f"{first.status.value}: {first.test_id}: {first.message}{more}"


def _outcome(ctx: Context, target: Target, stages: dict[Stage, Status], *,
             reason: str = "", errors: tuple[str, ...] = (),
             durations: dict[str, float] | None = None, kernel_release: str = "",
             accel: str = "", exit_reason: str = "", counts: dict[str, int] | None = None,
             reports: tuple[ReportRef, ...] = (), reports_not_kept: int = 0,
             boots: int = 0) -> TargetOutcome:
    return TargetOutcome(commit=target.commit.sha, name=target.commit.name,
                         subject=target.commit.subject, arch=target.arch.name,
                         variant=target.variant.name, order=ctx.order[target.commit.sha],
                         profile=target.profile.name if target.profile else "",
                         fingerprint=ctx.fingerprints[target], stages=stages,
                         kernel_release=kernel_release, accel=accel, exit_reason=exit_reason,
                         reason=reason, errors=errors, durations=durations or {},
                         counts=counts or {}, reports=reports,
                         reports_not_kept=reports_not_kept, boots=boots)


def _save(ctx: Context, target: Target, outcome: TargetOutcome) -> TargetOutcome:
    ctx.store.save(target, outcome)
    c = outcome.counts
    took = outcome.durations
    print(f"   {outcome.status.value.upper()}: {c.get('pass', 0)}/{c.get('total', 0)} passed"
          f", boot {took.get('boot', '-')} s, tests {fmt_secs(took.get('tests', 0.0))}"
          + (f"\n   why: {outcome.reason}" if outcome.reason else "")
          + "".join(f"\n   report: {s}" for s in outcome.signatures), flush=True)
    return outcome
