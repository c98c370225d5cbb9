"""A Dask worker's side of the lab: the tasks the engine submits (build a target's
kernel, run its guests, hand a kernel over to another worker), the per-process state
they share (one builder and one set of guest kits per lab), and what a worker offers
(resources). Tasks take and return plain values; the coordinator writes every result."""

from __future__ import annotations

import io
import json
import os
import socket
import shutil
import tarfile
import threading
import uuid
from dataclasses import dataclass, fields, is_dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

from harness import commits
from harness.accel import kvm_usable
from harness.boot import BootFn, boot, prepare_kit
from harness.build import Builder, BuildResult, cached_build, read_entry
from harness.config import PROJECT, Arch, Lab, load_arches, shared_cache
from harness.csuite import build_c_suite
from harness.errors import LabError
from harness.main import Session
from harness.model import Status, Target
from harness.ops import Ops, working_for
from harness.pipeline import CSuiteFn, GuestRun, Guests, Kits, Prepare, commits_text, run_guest
from harness.store import target_dirname

T = TypeVar("T")


@dataclass(frozen=True)
class Seams:
    """The outside things a run touches, swapped by tests for fakes. They belong to a
    process: a worker started by `./lab worker` always has the real ones."""

    boot: BootFn = boot
    c_suite: CSuiteFn = build_c_suite
    prepare: Prepare = prepare_kit
    catalog: dict[str, tuple[str, ...]] | None = None  # None: collect the real suites


# Seams registered by a coordinator for the workers of its own process (the local
# cluster), by token: tasks carry the token, never the (unpicklable) fakes.
_SEAMS: dict[str, Seams] = {}
_HOME: dict[str, Path] = {}  # "workdir": this process serves as a worker with its own


def register_seams(seams: Seams) -> str:
    token = uuid.uuid4().hex
    _SEAMS[token] = seams
    return token


@dataclass(frozen=True)
class Job:
    """What every task of one run carries: the lab as the coordinator loaded it."""

    lab: Lab
    verbose: bool
    code: str  # the coordinator's digest of harness, suites and rootfs recipe
    project: str  # the coordinator's project directory
    catalog: dict[str, tuple[str, ...]]
    run: str  # one token per run: a worker keeps one Local per run
    seams: str = ""  # a token of _SEAMS, for a worker in the coordinator's process


@dataclass(frozen=True)
class Built:
    """A build task's answer: the result (its paths are the building worker's), the log
    and the kernel's commits.txt, decided beside the source."""

    result: BuildResult
    log: str
    commits: str
    worker: str


@dataclass(frozen=True)
class Guested:
    """A guest task's answer: the guests' record and their files (a tar of the target's
    consoles and suite outputs), or no run when the build failed."""

    built: Built
    run: GuestRun | None
    files: bytes
    worker: str


def relocate(value: T, old: Path, new: Path) -> T:
    """value with every path under old moved under new (frozen dataclasses, tuples and
    dicts are rebuilt): the coordinator's project paths on a worker's checkout."""
    if isinstance(value, Path):
        return new / value.relative_to(old) if value.is_relative_to(old) else value
    if isinstance(value, tuple):
        return tuple(relocate(v, old, new) for v in value)  # type: ignore[return-value]
    if isinstance(value, dict):
        return {k: relocate(v, old, new) for k, v in value.items()}  # type: ignore[return-value]
    if is_dataclass(value) and not isinstance(value, type):
        changes = {f.name: relocate(getattr(value, f.name), old, new)
                   for f in fields(value) if f.init}
        return replace(value, **changes)
    return value


class Local:
    """One lab's state in this worker process: its builder (made on first build), its
    guest kits, and the guest context."""

    def __init__(self, job: Job) -> None:
        lab = job.lab
        if "workdir" in _HOME:  # a worker of its own: this checkout, this workdir
            lab = replace(relocate(lab, Path(job.project), PROJECT), workdir=_HOME["workdir"])
        self.lab, self.ops = lab, Ops(verbose=job.verbose)
        seams = _SEAMS.get(job.seams, Seams())
        self.guests = Guests(lab, self.ops, seams.boot, seams.c_suite, job.catalog,
                             Kits(lab, self.ops, seams.prepare))
        self.table = commits.load_table()
        self._builder: Builder | None = None
        self._lock = threading.Lock()

    def builder(self) -> Builder:
        with self._lock:
            if self._builder is None:
                self._builder = Session(self.lab, self.ops).builder()
            return self._builder


_locals: dict[str, Local] = {}
KEEP_RUNS = 8
_locals_lock = threading.Lock()


def local(job: Job) -> Local:
    if job.code != code_digest():
        raise LabError(f"worker {worker_name()} runs other bpflab code than the coordinator "
                       f"(digest {code_digest()[:12]}, the coordinator's {job.code[:12]}): "
                       "run the same commit of the project on every machine")
    with _locals_lock:
        if job.run not in _locals:
            _locals[job.run] = Local(job)
            for old in list(_locals)[:-KEEP_RUNS]:  # a long-lived worker serves many runs
                del _locals[old]
        return _locals[job.run]


@cache
def code_digest() -> str:
    from harness.matrix import shared_fingerprint
    return shared_fingerprint().hex()


def worker_name() -> str:
    """As progress lines name it: its --name, or "local" for the lab's own cluster."""
    if "workdir" not in _HOME:
        return "local"
    from distributed import get_worker
    return str(get_worker().name)


def build_task(job: Job, target: Target, force: bool) -> Built:
    """Build (or find cached) target's kernel on this worker."""
    with working_for(job.run):
        return _build(job, target, force)


def _build(job: Job, target: Target, force: bool) -> Built:
    here = local(job)
    builder = here.builder()
    result = builder.build(target, force)
    log = result.log.read_text(errors="replace") if result.log.exists() else ""
    text = commits_text(here.lab, here.ops, here.table, target, result) \
        if result.status is Status.PASS else ""
    return Built(result, log, text, worker_address())


def guest_task(job: Job, built: Built) -> Guested:
    """Run target's guests on this worker, fetching the kernel when another built it;
    the files go back to the coordinator and leave nothing here."""
    with working_for(job.run):
        return _guests(job, built)


def _guests(job: Job, built: Built) -> Guested:
    if built.result.status is not Status.PASS:
        return Guested(built, None, b"", worker_address())
    here = local(job)
    target = built.result.target
    build = kernel_here(job, built)
    print(f"\n== {target.label}: guest on {worker_name()}", flush=True)
    scratch = here.lab.workdir / "engine" / f"{target_dirname(target)}-{uuid.uuid4().hex[:8]}"
    scratch.mkdir(parents=True)
    print(f"   live: {scratch}/guest/console.log (each boot's console while it runs)",
          flush=True)
    try:
        (scratch / "commits.txt").write_text(built.commits)
        run = run_guest(here.guests, target, build, scratch, scratch / "commits.txt")
        return Guested(built, run, pack(scratch), worker_address())
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def kernel_here(job: Job, built: Built) -> BuildResult:
    """The built kernel in this worker's cache: there already, or fetched from the
    worker that built it (by Dask, worker to worker), or, if that worker is gone,
    built here."""
    result = built.result
    found = cached_build(result.target, result.key)
    if found:
        return replace(found, cached=result.cached, meta=result.meta)
    if built.worker != worker_address():
        try:
            unpack_kernel(result.key, fetch_kernel(built))
        except (OSError, LabError, TimeoutError) as exc:
            print(f"   kernel {result.key}: not fetched from {built.worker} ({exc}); "
                  "building it here", flush=True)
        found = cached_build(result.target, result.key)
        if found:
            return replace(found, cached=result.cached, meta=result.meta)
    return local(job).builder().build(result.target)


def fetch_kernel(built: Built, timeout: float = 900.0) -> bytes:
    from distributed import worker_client
    with worker_client() as client:
        alive = client.scheduler_info(n_workers=-1)["workers"]
        if built.worker not in alive:
            raise LabError("that worker is gone")
        future = client.submit(pack_kernel, built.result.key, workers=[built.worker],
                               allow_other_workers=False, pure=False)
        data: bytes = future.result(timeout=timeout)
        return data


def pack_kernel(key: str) -> bytes:
    """A cached kernel as one content-keyed bundle (the cache entry, gzip -1)."""
    entry = shared_cache() / "kernels" / key
    why = read_entry(entry)[1]
    if why:
        raise LabError(f"kernel {key} on {worker_name()}: {why}")
    return pack(entry)


def unpack_kernel(key: str, data: bytes) -> None:
    """A bundle into this worker's cache, whole or not at all."""
    final = shared_cache() / "kernels" / key
    tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.in")
    try:
        unpack(data, tmp)
        meta, why = read_entry(tmp)
        if why or meta.get("key") != key:
            raise LabError(f"kernel bundle {key}: {why or 'its meta.json names another key'}")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def pack(root: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tar:
        for path in sorted(root.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(root)), recursive=False)
    return buf.getvalue()


def unpack(data: bytes, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tar.extractall(dest, filter="data")


def worker_address() -> str:
    try:
        from distributed import get_worker
        return str(get_worker().address)
    except ValueError:
        return ""


def capabilities(arches: tuple[Arch, ...], build_slots: int, guest_slots: int,
                 workdir: Path, which: Any = shutil.which) -> dict[str, float]:
    """What this host can do, as Dask resources: build and guest slots, the arches it
    can build (a compiler for them) and boot (their QEMU), KVM (/dev/kvm opens and no
    probe of this workdir saw KVM guests hang)."""
    res: dict[str, float] = {}
    if build_slots:
        res["build"] = build_slots
        for a in arches:
            if which(f"{a.cross_prefix}gcc"):
                res[f"build-{a.name}"] = build_slots
    if guest_slots:
        res["guest"] = guest_slots
        for a in arches:
            if which(a.qemu_binary):
                res[f"boot-{a.name}"] = guest_slots
        if kvm_usable() is None and not kvm_failed(workdir):
            res["kvm"] = guest_slots
    return res


def kvm_failed(workdir: Path) -> bool:
    """Whether this host's remembered accelerator probe (accel.py) fell back to TCG."""
    try:
        known = json.loads((workdir / "accel.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(known, dict) and any(
        isinstance(v, dict) and v.get("accel") == "tcg" and "KVM" in str(v.get("reason"))
        for k, v in known.items() if str(k).startswith(socket.gethostname() + "|"))


def local_resources() -> dict[str, float]:
    """The in-process worker of a run without a scheduler: today's one build beside
    one guest, every arch (a missing tool is the target's error, as it always was)."""
    arches = load_arches()
    return {"build": 1, "guest": 1, **{f"build-{a.name}": 1 for a in arches},
            **{f"boot-{a.name}": 1 for a in arches}}


def set_home(workdir: Path) -> None:
    _HOME["workdir"] = workdir.resolve()

