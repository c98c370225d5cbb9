"""invoke matrix: for every target (commit x arch x variant) build, boot, run the
suites, collect, shut down (pipeline.run_target); the next build runs while a guest
tests the previous target. Every finished target is in the store before the next
one starts, and one run at a time holds the run directory."""

from __future__ import annotations

import hashlib
import json
import os
import queue
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from harness import catalog, commits, junit, report
from harness.boot import BootFn, boot, prepare_kit
from harness.build import Builder, BuildResult, compiler_version
from harness.config import PROJECT, Arch
from harness.csuite import build_c_suite
from harness.errors import LabError
from harness.main import Session
from harness.model import Selection, Stage, Status, Target, Verdict
from harness.pipeline import Context, CSuiteFn, Kits, Prepare, run_target
from harness.progress import fmt_secs
from harness.results import write_json
from harness.rootfs import RECIPE, recipe_files
from harness.store import Store
from harness.suites import suites_fingerprint

HARNESS = PROJECT / "harness"


@dataclass(frozen=True)
class MatrixResult:
    verdict: Verdict
    run_dir: Path
    targets: int
    ran: int


def shared_fingerprint() -> bytes:
    """What every target's result depends on alike: the suites, the rootfs recipe and
    the harness's own code (which decides verdicts)."""
    h = hashlib.sha256(suites_fingerprint().encode())
    for path in recipe_files(RECIPE) + sorted(HARNESS.rglob("*.py")) + \
            sorted(HARNESS.rglob("*.yaml")) + sorted(HARNESS.rglob("*.txt")):
        h.update(str(path.relative_to(PROJECT)).encode() + b"\0" + path.read_bytes())
    return h.digest()


def fingerprint(builder: Builder, target: Target, shared: bytes, session: Session) -> str:
    """What decides a target's result: its kernel, what the variant declares, the guest
    settings and limits, and the shared part (suites, rootfs, harness)."""
    h = hashlib.sha256(builder.key(target).encode())
    h.update(shared)
    v = target.variant
    h.update(repr((v.reverts, v.backports, v.expect_reports, v.tests,
                   session.lab.known_reports)).encode())
    h.update(json.dumps([asdict(session.lab.guest), asdict(session.lab.limits)],
                        sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def run_dir_for(session: Session) -> Path:
    return session.lab.workdir / "runs" / session.lab.path.stem


@dataclass(frozen=True)
class Seams:
    """The outside things a matrix run touches, swapped by tests for fakes."""

    boot: BootFn = boot
    c_suite: CSuiteFn = build_c_suite
    prepare: Prepare = prepare_kit
    catalog: dict[str, tuple[str, ...]] | None = None  # None: collect the real suites


def matrix(session: Session, run_dir: Path | None, force: bool, selection: Selection,
           seams: Seams = Seams()) -> MatrixResult:
    return run_targets(session, Store(run_dir or run_dir_for(session)), force,
                       session.targets(selection), seams)


def run_targets(session: Session, store: Store, force: bool, targets: list[Target],
                seams: Seams = Seams()) -> MatrixResult:
    """Build, boot and test targets into store (resuming what it holds): the one path
    every workflow takes, the matrix and ./lab backports alike."""
    with store.lock():
        builder = session.builder()
        order: dict[str, int] = {}
        for t in targets:
            order.setdefault(t.commit.sha, len(order))
        shared = shared_fingerprint()
        prints = {t: fingerprint(builder, t, shared, session) for t in targets}
        todo = [t for t in targets if force or not store.finished(t, prints[t])]
        print(f"matrix: {len(targets)} targets, {len(targets) - len(todo)} already in "
              f"{store.root}, {len(todo)} to run", flush=True)
        write_json(store.root / "run.json", run_facts(session, targets))
        tests = seams.catalog or {"python": catalog.python_tests(), "c": catalog.c_tests()}
        ctx = Context(session.lab, session.ops, store, seams.boot, seams.c_suite, tests,
                      commits.load_table(), Kits(session.lab, session.ops, seams.prepare),
                      order, prints)
        try:
            Runner(ctx, builder, force).run(todo)
        finally:
            write_report(store)
        return MatrixResult(verdict(store, targets, prints), store.root, len(targets),
                            len(todo))


def run_facts(session: Session, targets: list[Target]) -> dict[str, object]:
    """What a reader of the page needs to trust or reproduce it: the lab, when, where,
    and the tools' versions (the accelerator is per target, in its metadata)."""
    arches = sorted({t.arch.name: t.arch for t in targets}.items())

    def qemu(arch: Arch) -> str:
        try:
            done = session.ops.run([arch.qemu_binary, "--version"], check=False, quiet=True)
        except LabError:  # not installed
            return "not found"
        lines = done.stdout.splitlines()
        return lines[0].strip() if done.returncode == 0 and lines else "not found"

    uname = os.uname()
    return {"lab": str(session.lab.path), "started": time.strftime("%Y-%m-%d %H:%M:%S UTC",
                                                                   time.gmtime()),
            "host": f"{uname.nodename}, Linux {uname.release} {uname.machine}, "
                    f"{os.cpu_count()} CPUs",
            "qemu": {name: qemu(a) for name, a in arches},
            "compiler": {name: compiler_version(session.ops, a) for name, a in arches},
            "targets": len(targets)}


def write_report(store: Store) -> None:
    table, page = report.write_all(store)
    files = sorted((store.root / "targets").glob("*/junit.xml"))
    for line in junit.merge(files, store.root / "junit.xml"):
        print(f"junit: left out of the merged file: {line}")
    print("\n" + table + f"\n\nreport: {page}\njunit:  {store.root / 'junit.xml'}", flush=True)


def verdict(store: Store, targets: list[Target], prints: dict[Target, str]) -> Verdict:
    """LAB: a target has no result, or the lab broke building or booting it; FAILED: a
    build failed, a kernel did not boot, a test or a kernel report was not as expected."""
    outcomes = [store.finished(t, prints[t]) for t in targets]
    if any(o is None or Status.ERROR in (o.stages.get(Stage.BUILD), o.stages.get(Stage.BOOT))
           for o in outcomes):
        return Verdict.LAB
    if all(o is not None and o.status in (Status.PASS, Status.SKIP) for o in outcomes):
        return Verdict.OK
    return Verdict.FAILED


class Runner:
    """Builds in a background thread, one target ahead; guests in this thread."""

    def __init__(self, ctx: Context, builder: Builder, force: bool) -> None:
        self.ctx, self.builder, self.force = ctx, builder, force
        self.started = time.monotonic()

    def run(self, todo: list[Target]) -> None:
        built: queue.Queue[tuple[Target, BuildResult | Exception]] = queue.Queue(maxsize=1)
        stop = threading.Event()

        def build_all() -> None:
            for target in todo:
                if stop.is_set():
                    return
                try:
                    result: BuildResult | Exception = self.builder.build(target, self.force)
                except Exception as exc:  # a lab error ends only that target; others, the run
                    result = exc
                built.put((target, result))
                if isinstance(result, Exception) and not isinstance(result, LabError):
                    return

        thread = threading.Thread(target=build_all, name="builder", daemon=True)
        thread.start()
        try:
            for index in range(len(todo)):
                target, result = built.get()
                if isinstance(result, Exception) and not isinstance(result, LabError):
                    raise result  # unexpected (disk full, a bug): the run stops, told
                self._progress(index, len(todo), target)
                run_target(self.ctx, target, result)
        finally:
            stop.set()

    def _progress(self, index: int, total: int, target: Target) -> None:
        elapsed = time.monotonic() - self.started
        eta = f", about {fmt_secs(elapsed / index * (total - index))} left" if index else ""
        print(f"\n== [{index + 1}/{total}] {target.label} ({fmt_secs(elapsed)} elapsed{eta})",
              flush=True)
