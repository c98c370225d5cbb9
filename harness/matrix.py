"""invoke matrix: for every target (commit x arch x variant) build, boot, run the
suites, collect, shut down; the next build runs while a guest tests the previous
target. Every finished target is in the store before the next one starts."""

from __future__ import annotations

import hashlib
import queue
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager, TypeVar

from harness import junit, kreport, report
from harness.boot import boot, options_for
from harness.build import Builder, BuildResult, Target
from harness.config import Arch
from harness.csuite import build_c_suite
from harness.errors import LabError
from harness.ops import Ops
from harness.main import EXIT_FAILED, EXIT_LAB, EXIT_OK, Session
from harness.progress import fmt_secs
from harness.results import Status, write_atomic
from harness.rootfs import RECIPE, recipe_files
from harness.ssh import GuestSSH, SSHError
from harness.store import Store, TargetOutcome, counts
from harness.suites import (C_CLASS, Rounds, declared_commits, present_commits,
                            suites_fingerprint)


# The seam to QEMU and SSH: boot(workdir, arch, image, options, run_dir=...) is a
# context manager yielding a booted guest (harness.boot.BootedGuest's interface).
BootFn = Callable[..., ContextManager[Any]]
T = TypeVar("T")
# Boots per target at most: the first, then one per KASAN report the suites provoke.
MAX_BOOTS = 8
# The seam to the C suite's build: (workdir, arch, vmlinux, ops) -> the binary.
CSuiteFn = Callable[[Path, Arch, Path, Ops], Path]


@dataclass(frozen=True)
class Plan:
    targets: list[Target]
    order: dict[str, int]  # commit sha -> position in history
    fingerprints: dict[Target, str]


def shared_fingerprint() -> bytes:
    """What every target's result depends on alike: the suites and the rootfs recipe."""
    h = hashlib.sha256(suites_fingerprint().encode())
    for path in recipe_files(RECIPE):
        h.update(path.read_bytes())
    return h.digest()


def fingerprint(builder: Builder, target: Target, shared: bytes) -> str:
    """What decides a target's result: its kernel, what the variant declares
    (reverted commits, expected reports), and the shared part (suites, rootfs)."""
    h = hashlib.sha256(builder.key(target).encode())
    h.update(shared)
    h.update(repr((target.variant.reverts, target.variant.backports,
                   target.variant.expect_reports)).encode())
    return h.hexdigest()[:16]


def run_dir_for(session: Session) -> Path:
    return session.lab.workdir / "runs" / session.lab.path.stem


def matrix(session: Session, run_dir: Path | None, force: bool, arch: str | None,
           variant: str | None, commit: str | None, boot_fn: BootFn = boot,
           c_suite_fn: CSuiteFn = build_c_suite) -> int:
    store = Store(run_dir or run_dir_for(session))
    targets = session.targets(arch, variant, commit)
    builder = session.builder()
    order: dict[str, int] = {}
    for t in targets:
        order.setdefault(t.commit.sha, len(order))
    shared = shared_fingerprint()
    prints = {t: fingerprint(builder, t, shared) for t in targets}
    todo = [t for t in targets if force or not store.finished(t, prints[t])]
    print(f"matrix: {len(targets)} targets, {len(targets) - len(todo)} already in "
          f"{store.root}, {len(todo)} to run", flush=True)
    runner = Runner(session, store, builder, Plan(targets, order, prints), boot_fn, c_suite_fn)
    try:
        runner.run(todo)
    finally:
        table, page = report.write_all(store)
        _merge_junit(store)
        print("\n" + table + f"\n\nreport: {page}\njunit:  {store.root / 'junit.xml'}")
    return verdict(store, targets, prints)


def verdict(store: Store, targets: list[Target], prints: dict[Target, str]) -> int:
    """2: a target has no result or the lab broke building or booting it; 1: a build
    failed, a kernel did not boot, a test or a kernel report was not as expected."""
    outcomes = [store.finished(t, prints[t]) for t in targets]
    if any(o is None or "error" in (o.stages.get("build"), o.stages.get("boot"))
           for o in outcomes):
        return EXIT_LAB
    return EXIT_OK if all(o and o.status in (Status.PASS, Status.SKIP) for o in outcomes) \
        else EXIT_FAILED


def _merge_junit(store: Store) -> None:
    files = sorted((store.root / "targets").glob("*/junit.xml"))
    if files:
        junit.merge(files, store.root / "junit.xml")


class Runner:
    """Builds in a background thread, one target ahead; guests in this thread."""

    def __init__(self, session: Session, store: Store, builder: Builder, plan: Plan,
                 boot_fn: BootFn, c_suite_fn: CSuiteFn) -> None:
        self.session, self.store, self.builder, self.plan = session, store, builder, plan
        self.boot = boot_fn
        self.c_suite = c_suite_fn
        self.started = time.monotonic()
        self.done_s: list[float] = []
        self.work_s = 0.0  # seconds the current target's suites ran

    def run(self, todo: list[Target]) -> None:
        built: queue.Queue[tuple[Target, BuildResult | BaseException]] = queue.Queue(maxsize=1)
        stop = threading.Event()

        def build_all() -> None:
            for target in todo:
                if stop.is_set():
                    return
                try:
                    result: BuildResult | BaseException = self.builder.build(target)
                except Exception as exc:  # a lab error on one target ends only that one
                    result = exc
                built.put((target, result))

        thread = threading.Thread(target=build_all, name="builder", daemon=True)
        thread.start()
        try:
            for index in range(len(todo)):
                target, result = built.get()
                self._progress(index, len(todo), target)
                self.test(target, result)
        finally:
            stop.set()

    def _progress(self, index: int, total: int, target: Target) -> None:
        elapsed = time.monotonic() - self.started
        eta = ""
        if index:
            eta = f", about {fmt_secs(elapsed / index * (total - index))} left"
        print(f"\n== [{index + 1}/{total}] {target.label} ({fmt_secs(elapsed)} elapsed{eta})",
              flush=True)

    def outcome(self, target: Target, stages: dict[str, str], **fields: object) -> TargetOutcome:
        return TargetOutcome(commit=target.commit.sha, name=target.commit.name,
                             subject=target.commit.subject, arch=target.arch.name,
                             variant=target.variant.name,
                             order=self.plan.order[target.commit.sha],
                             fingerprint=self.plan.fingerprints[target], stages=stages,
                             expected_reports=target.variant.expect_reports,
                             **fields)  # type: ignore[arg-type]

    def test(self, target: Target, result: BuildResult | BaseException) -> None:
        tdir = self.store.target_dir(target)
        shutil.rmtree(tdir, ignore_errors=True)
        tdir.mkdir(parents=True)
        if isinstance(result, BaseException):
            self.store.save(target, self.outcome(target, {"build": "error"},
                                                 errors=(f"lab error: {result}",)))
            return
        shutil.copy2(result.log, tdir / "build.log")
        took = result.meta.get("durations", {})
        durations = {"build": float(took.get("total", 0.0))
                     if isinstance(took, dict) and not result.cached else 0.0}
        if result.status is not Status.PASS or result.image is None:
            self.store.save(target, self.outcome(target, {"build": "fail", "boot": "skip",
                                                          "tests": "skip"},
                                                 errors=result.errors, durations=durations))
            print(f"   build failed: {'; '.join(result.errors[:3])}")
            return
        self._boot_and_test(target, result, tdir, durations)

    def _boot_and_test(self, target: Target, result: BuildResult, tdir: Path,
                       durations: dict[str, float]) -> None:
        """Boot, run the suites, shut down. KASAN reports once per boot: once a test
        has tainted the kernel, the tests it left blind and the rest of the suites
        get a fresh boot (suites.Rounds), so every reproducer can show its report."""
        assert result.image is not None
        image = result.image
        started = time.monotonic()
        stages = {"build": "pass", "boot": "error", "tests": "skip"}
        fields: dict[str, object] = {"kernel_release": str(result.meta.get("kernel_release", ""))}
        c_binary, cases = self._c_suite(target, result)
        boots: list[Any] = []
        consoles: list[Path] = []
        out = tdir / "suites"
        env, has_commits = self._env(target), self._has_commits(target)
        rounds = Rounds(c_binary is not None)

        def work(ssh: GuestSSH) -> bool:
            rounds.run(ssh, out, env, c_binary, has_commits)
            return True
        self.work_s = 0.0
        try:
            while not rounds.done() and rounds.boots < MAX_BOOTS:
                if rounds.boots:
                    left = sum(len(p.only) or 1 for p in rounds.queue)
                    print(f"   KASAN tainted the kernel: a fresh boot for {left} more "
                          f"test run(s)", flush=True)
                name = "guest" if not rounds.boots else f"guest-{rounds.boots + 1}"
                if self._in_guest(target, image, tdir / name, boots, consoles, work) is None:
                    if rounds.boots:
                        rounds.errors.append(f"fresh boot {len(boots)} did not come up")
                    break
            if rounds.boots:
                suites = rounds.result()
                durations["tests"] = round(self.work_s, 1)
                write_atomic(tdir / "suites.log", suites.log)
                cases += suites.cases
                stages["tests"] = "error" if suites.error else "pass"
                if suites.error:
                    fields["errors"] = (suites.error,)
        except (LabError, SSHError) as exc:
            fields["errors"] = (f"{type(exc).__name__}: {exc}",)
        if boots:
            o = boots[0]
            stages["boot"] = "pass" if o.ready else "fail"
            fields.update(accel=o.accel, exit_reason=f"{o.state.value}: {o.reason}")
            durations["boot"] = round(o.ssh_ready_s or 0.0, 1)
        durations["total_guest"] = round(time.monotonic() - started, 1)
        self._collect(target, tdir, consoles or [tdir / "guest" / "console.log"], cases,
                      stages, fields, durations)

    def _in_guest(self, target: Target, image: Path, run_dir: Path, boots: list[Any],
                  consoles: list[Path], work: Callable[[GuestSSH], T]) -> T | None:
        """One boot: record its outcome and console; run `work` if SSH is up; power off."""
        lab = self.session.lab
        with self.boot(lab.workdir, target.arch, image, options_for(lab.guest),
                       run_dir=run_dir) as guest:
            o = guest.outcome
            boots.append(o)
            consoles.append(guest.guest.console_log)
            ready = f" after {o.ssh_ready_s:.1f} s" if o.ssh_ready_s else f": {o.reason}"
            print(f"   boot ({o.accel}): {o.state.value}{ready}", flush=True)
            if not o.ready:
                return None
            print("   suites: running", flush=True)
            t0 = time.monotonic()
            try:
                return work(guest.ssh)
            finally:
                self.work_s += time.monotonic() - t0
                self._shutdown(guest)

    def _c_suite(self, target: Target, result: BuildResult) -> tuple[Path | None,
                                                                      list[junit.Case]]:
        """The C suite's binary for this kernel's BTF; a failed build is an error case
        of the C suite, and the Python suite still runs."""
        assert result.artifacts is not None
        try:
            return self.c_suite(self.session.lab.workdir, target.arch,
                                result.artifacts / "vmlinux", self.session.ops), []
        except LabError as exc:
            return None, [junit.Case("c", C_CLASS, "build", Status.ERROR,
                                     message=f"C suite did not build: {exc}")]

    def _shutdown(self, guest: object) -> None:
        try:
            guest.ssh.run("sync; poweroff -f >/dev/null 2>&1 &", timeout=10)  # type: ignore[attr-defined]
        except SSHError:
            pass  # the guest is going down; boot() kills QEMU behind it anyway

    def _has_commits(self, target: Target) -> list[str] | None:
        repo = self.session.lab.source.git
        if repo is None:
            return None
        return present_commits(self.session.ops, repo, target.commit.sha, declared_commits())

    def _env(self, target: Target) -> dict[str, str]:
        env = {"BPFLAB_ARCH": target.arch.name, "BPFLAB_COMMIT": target.commit.sha,
               "BPFLAB_VARIANT": target.variant.name}
        if target.variant.reverts:
            env["BPFLAB_REVERTED_COMMITS"] = " ".join(target.variant.reverts)
        if target.variant.backports:
            env["BPFLAB_BACKPORTED_COMMITS"] = " ".join(target.variant.backports)
        return env

    def _collect(self, target: Target, tdir: Path, consoles: list[Path],
                 cases: list[junit.Case], stages: dict[str, str], fields: dict[str, object],
                 durations: dict[str, float]) -> None:
        parsed: list[kreport.Report] = []
        for i, console in enumerate(c for c in consoles if c.exists()):
            shutil.copy2(console, tdir / ("console.log" if i == 0 else f"console-{i + 1}.log"))
            parsed += kreport.parse(console.read_text(errors="replace").splitlines())
        reports, dropped = kreport.bounded(parsed)
        if dropped:
            fields["reports_not_kept"] = dropped
        self.store.save_reports(target, reports)
        tied = junit.tie_reports(cases, reports, target.variant.expect_reports) \
            if stages["boot"] == "pass" else cases
        if stages["tests"] == "pass" and any(c.status in (Status.FAIL, Status.ERROR)
                                             for c in tied):
            stages["tests"] = "fail"
        junit.write(tied, f"{target.arch.name}/{target.commit.name}/{target.variant.name}",
                    {"commit": target.commit.sha, "commit_name": target.commit.name,
                     "arch": target.arch.name, "variant": target.variant.name,
                     "kernel_release": str(fields.get("kernel_release", ""))},
                    tdir / "junit.xml")
        outcome = self.outcome(target, stages, durations=durations, counts=counts(tied),
                               signatures=tuple(dict.fromkeys(r.signature for r in reports)),
                               **fields)
        self.store.save(target, outcome)
        c = outcome.counts
        print(f"   {outcome.status.value.upper()}: {c.get('pass', 0)}/{c.get('total', 0)} "
              f"passed, boot {durations.get('boot', '-')} s, tests {durations.get('tests', '-')}"
              f" s" + "".join(f"\n   report: {s}" for s in outcome.signatures), flush=True)
