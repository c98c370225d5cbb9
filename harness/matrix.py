"""invoke matrix: for every target (commit x arch x variant) build, boot, run the
suites, collect, shut down, on the engine (engine.py: Dask, local or a cluster); builds
run ahead while guests test the built targets. Every finished target is in the store
as soon as it is done, and one run at a time holds the run directory."""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from harness import catalog, emulator, engine, junit, report
from harness.build import Builder, compiler_version
from harness.config import PROJECT, shared_cache
from harness.main import Session
from harness.model import Selection, Stage, Status, Target, Verdict
from harness.pipeline import Context
from harness.results import write_json
from harness.rootfs import RECIPE, recipe_files
from harness.store import Store
from harness.suites import suites_fingerprint
from harness.worker import Job, Seams, code_digest, register_seams

__all__ = ["Seams", "matrix", "run_targets"]  # Seams: the tests' seam, worker.py's

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
    m = target.machine
    h.update(json.dumps([asdict(session.lab.guest), asdict(session.lab.limits),
                         [m.machine, m.cpu, m.smp, m.memory, list(m.cmdline), m.qemu_min]],
                        sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def run_dir_for(session: Session) -> Path:
    return session.lab.workdir / "runs" / session.lab.path.stem


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
        ctx = Context(session.lab, store, tests, order, prints)
        job = Job(session.lab, session.ops.verbose, code_digest(), str(PROJECT), tests,
                  uuid.uuid4().hex, register_seams(seams))
        try:
            if todo:
                engine.run(engine.engine(session.scheduler, session.insecure), ctx, job,
                           builder, todo, force)
        finally:
            write_report(store)
        return MatrixResult(verdict(store, targets, prints), store.root, len(targets),
                            len(todo))


def run_facts(session: Session, targets: list[Target]) -> dict[str, object]:
    """What a reader of the page needs to trust or reproduce it: the lab, when, where,
    and the tools' versions (the accelerator is per target, in its metadata)."""
    arches = sorted({t.arch.name: t.arch for t in targets}.items())
    pinned = sorted({t.machine.name: t.machine for t in targets if t.machine.qemu_min}.items())
    qemu = {name: emulator.installed_version(session.ops, a.qemu_binary) or "not found"
            for name, a in arches}
    qemu.update({name: emulator.described(session.ops, p, shared_cache()) for name, p in pinned})

    uname = os.uname()
    return {"lab": str(session.lab.path), "started": time.strftime("%Y-%m-%d %H:%M:%S UTC",
                                                                   time.gmtime()),
            "host": f"{uname.nodename}, Linux {uname.release} {uname.machine}, "
                    f"{os.cpu_count()} CPUs",
            "qemu": qemu,
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
