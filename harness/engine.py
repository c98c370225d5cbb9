"""The engine every workflow's builds and guests run on: Dask distributed. A run names
a scheduler (--scheduler tls://host:8786), or the lab starts a cluster in its own
process, bound to 127.0.0.1 and sized as the lab always ran (one build beside one
guest). Either way the same tasks run (worker.py), through the same scheduler code,
and the coordinator alone writes results (pipeline.record)."""

from __future__ import annotations

import atexit
import ipaddress
import logging
import os
import shutil
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from harness.build import Builder
from harness.errors import LabError, UserError
from harness.model import Status, Target
from harness.pipeline import Context, record
from harness.progress import fmt_secs
from harness.guest import call_off
from harness.worker import (Built, Guested, Job, build_task, guest_task, local_resources,
                            unpack)

TLS_ENV = "BPFLAB_TLS"  # a directory with ca.pem, cert.pem and key.pem
CONNECT_S = 10.0
POLL_S = 5.0  # how often the coordinator looks at its workers while it waits
ORPHAN_S = 60.0  # how long a target may lack a worker able to serve it (one restarting)


def check_address(address: str, insecure: bool, what: str = "--scheduler") -> None:
    """tcp:// only on loopback unless the user says --insecure: whoever reaches a
    scheduler runs code on every worker. tls:// anywhere."""
    scheme, sep, rest = address.partition("://")
    host = rest.rsplit(":", 1)[0].strip("[]") if ":" in rest else rest
    if not sep or scheme not in ("tcp", "tls") or not host:
        raise UserError(f"{what} {address!r}: expected tcp://HOST:PORT or tls://HOST:PORT")
    if scheme == "tcp" and not is_loopback(host) and not insecure:
        raise UserError(f"{what} {address}: plain TCP on a non-loopback address lets "
                        "anyone who reaches it run code on every worker; use tls:// with "
                        f"{TLS_ENV} (README, 'Across machines'), or say --insecure")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def security(address: str) -> Any:
    """Dask's Security for a tls:// address, from $BPFLAB_TLS; None for tcp://."""
    if not address.startswith("tls://"):
        return None
    from distributed.security import Security
    where = os.environ.get(TLS_ENV, "")
    files = [Path(where) / n for n in ("ca.pem", "cert.pem", "key.pem")] if where else []
    missing = [str(f) for f in files if not f.is_file()]
    if not where or missing:
        raise UserError(f"{address}: TLS needs ${TLS_ENV}, a directory holding ca.pem, "
                        f"cert.pem and key.pem" + (f" (missing: {', '.join(missing)})"
                                                   if missing else ""))
    ca, cert, key = (str(f) for f in files)
    return Security(tls_ca_file=ca, tls_client_cert=cert, tls_client_key=key,
                    tls_worker_cert=cert, tls_worker_key=key, tls_scheduler_cert=cert,
                    tls_scheduler_key=key, require_encryption=True)


@dataclass(frozen=True)
class WorkerInfo:
    address: str
    name: str
    resources: dict[str, float]

    def can(self, resource: str) -> bool:
        return self.resources.get(resource, 0) > 0


class Engine:
    """A Dask client: to the named scheduler, or to this process's local cluster."""

    def __init__(self, client: Any, where: str, local: bool) -> None:
        self.client, self.where, self.local = client, where, local

    def workers(self) -> list[WorkerInfo]:
        info = self.client.scheduler_info(n_workers=-1)["workers"]
        return sorted((WorkerInfo(a, "local" if self.local else str(w.get("name", a)),
                                  dict(w.get("resources", {}))) for a, w in info.items()),
                      key=lambda w: w.name)

    def describe(self) -> str:
        ws = self.workers()
        told = ", ".join(f"{w.name} ({_slots(w)})" for w in ws) or "none yet"
        url = self.dashboard()
        board = f"; dashboard {url}" if url else ""
        return f"engine: {self.where}, {len(ws)} worker(s): {told}{board}"


    def dashboard(self) -> str:
        """The dashboard's address when the scheduler serves one (Dask's needs bokeh;
        without it the same port only answers /health)."""
        port = self.client.scheduler_info().get("services", {}).get("dashboard")
        if not port:
            return ""
        url = f"http://{self.where.split('://')[-1].rsplit(':', 1)[0]}:{port}/status"
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                return url if answer.status == 200 else ""
        except (OSError, ValueError):
            return ""


def _slots(w: WorkerInfo) -> str:
    r = w.resources
    can = [k.split("-", 1)[1] for k in sorted(r) if k.startswith("boot-")]
    return (f"build {r.get('build', 0):g}, guest {r.get('guest', 0):g}"
            + (f", boots {'/'.join(can)}" if can else "") + (", kvm" if r.get("kvm") else ""))


_engines: dict[str, Engine] = {}


def engine(scheduler: str = "", insecure: bool = False) -> Engine:
    """One engine per process and scheduler: the nights, retries and bisection steps of
    one run share it."""
    if scheduler in _engines:
        return _engines[scheduler]
    from distributed import Client
    if scheduler:
        check_address(scheduler, insecure)
        try:
            client = Client(scheduler, timeout=CONNECT_S, security=security(scheduler))
        except (OSError, TimeoutError) as exc:
            raise LabError(f"scheduler {scheduler}: not reachable in {CONNECT_S:.0f} s "
                           f"({exc})") from None
        made = Engine(client, scheduler, local=False)
    else:
        from distributed import LocalCluster
        cluster = LocalCluster(n_workers=1, processes=False, threads_per_worker=2,
                               host="127.0.0.1", protocol="tcp", dashboard_address="127.0.0.1:0",
                               resources=local_resources(), silence_logs=logging.ERROR,
                               name="local")
        client = Client(cluster)
        atexit.register(_close, client, cluster)
        made = Engine(client, cluster.scheduler_address, local=True)
    _engines[scheduler] = made
    return made


def _close(client: Any, cluster: Any) -> None:
    client.close()
    cluster.close()


def place_builds(todo: list[Target], series: Callable[[Target], str],
                 workers: list[WorkerInfo]) -> dict[Target, str]:
    """Each (arch, series, profile fragment) walk of adjacent commits to one builder
    (its build directory stays warm, builds stay incremental); a walk is cut into
    contiguous pieces while builders would otherwise sit idle; the biggest pieces go
    first to the least loaded."""
    walks: dict[tuple[str, str, str], list[Target]] = {}
    for t in todo:
        walks.setdefault((t.arch.name, series(t), t.machine.flavour), []).append(t)
    chunks = [(arch, ts) for (arch, _, _), ts in walks.items()]
    builders = [w for w in workers if any(k.startswith("build-") for k in w.resources)]
    while len(chunks) < len(builders):  # an idle builder: halve the longest walk it can take
        able = {a: sum(w.can(f"build-{a}") for w in workers) for a, _ in chunks}
        split = [c for c in chunks if len(c[1]) > 1 and
                 able[c[0]] > sum(1 for a, _ in chunks if a == c[0])]
        if not split:
            break
        arch, ts = max(split, key=lambda c: len(c[1]))
        chunks.remove((arch, ts))
        half = (len(ts) + 1) // 2
        chunks += [(arch, ts[:half]), (arch, ts[half:])]
    load = {w.address: 0 for w in workers}
    placed: dict[Target, str] = {}
    for arch, ts in sorted(chunks, key=lambda c: -len(c[1])):
        able_ws = [w for w in workers if w.can(f"build-{arch}")]
        if able_ws:
            best = min(able_ws, key=lambda w: (load[w.address], w.name))
            load[best.address] += len(ts)
            placed.update((t, best.address) for t in ts)
    return placed


def pick_guest_worker(arch: str, workers: list[WorkerInfo], busy: Mapping[str, int],
                      building: set[str]) -> str:
    """The worker a ready guest starts on now: of those that boot arch and have a guest
    slot this run is not using, a KVM one, then one not building (a TCG guest beside a
    build boots at half speed), then the least loaded; "" when every one is busy (the
    guest waits here for the first free slot, never in a busy worker's queue)."""
    free = [w for w in workers if w.can(f"boot-{arch}")
            and busy.get(w.address, 0) < w.resources.get("guest", 0)]
    if not free:
        return ""
    return min(free, key=lambda w: (not w.can("kvm"), w.address in building,
                                    busy.get(w.address, 0), w.name)).address


def run(eng: Engine, ctx: Context, job: Job, builder: Builder, todo: list[Target],
        force: bool) -> None:
    """Submit every target's build; start each target's guests when its build is done
    and a worker has a free guest slot; record each target as its guests finish."""
    workers = eng.workers()
    print(eng.describe(), flush=True)
    placed = place_builds(todo, builder.series, workers)
    d = _Dispatch(eng, ctx, job, len(todo), force)
    for i, t in enumerate(todo):
        why = _unservable(t, workers)
        if why:
            _lab_error(ctx, t, why)
            continue
        d.build(t, placed[t], len(todo) - i)
    d.until_done()


class _Dispatch:
    """One run's builds in flight, targets built and waiting for a guest slot, and
    guests in flight. Every task is pinned to the worker the coordinator chose: builds
    to the builder of their walk (place_builds), guests to a free guest slot, so no
    guest waits in a busy worker's queue while a capable one is idle. (Dask's loose
    placement, allow_other_workers, may hand a task to a worker that lacks its
    resources, once a build went to a boot-only worker and wedged it, and its work
    stealing moves queued tasks by a cost model that knows nothing of QEMU.) A task
    whose worker leaves runs again on another: nothing is recorded twice, since a
    target is recorded only from the guest that finished."""

    def __init__(self, eng: Engine, ctx: Context, job: Job, total: int,
                 force: bool = False) -> None:
        self.eng, self.ctx, self.job, self.total, self.force = eng, ctx, job, total, force
        self.priority: dict[Target, int] = {}
        self.builds: dict[Any, tuple[Target, str]] = {}
        self.ready: list[tuple[Target, Built]] = []
        self.guests: dict[Any, tuple[Target, Built, str]] = {}
        self.busy: dict[str, int] = {}
        self.orphaned: dict[Any, float] = {}
        self.started, self.done = time.monotonic(), 0

    def until_done(self) -> None:
        try:
            while self.builds or self.ready or self.guests:
                self._step()
        except BaseException:
            self.eng.client.cancel(list(self.builds) + list(self.guests), force=True)
            # every worker ends this run's QEMUs and makes and starts it no more (a
            # cancelled task's thread runs on); the runs of other coordinators go on.
            # Best effort: a worker that cannot be told must not hide why the run ends.
            try:
                self.eng.client.run(call_off, self.job.run, on_error="ignore")
            except Exception as exc:  # noqa: BLE001 - the scheduler itself is gone
                print(f"   could not call the run off on the workers: {exc}", flush=True)
            raise

    def _step(self) -> None:
        from distributed import wait
        pending = list(self.builds) + list(self.guests)
        finished: set[Any] = set()
        if pending:
            try:
                finished = wait(pending, timeout=POLL_S, return_when="FIRST_COMPLETED").done
            except TimeoutError:  # nothing finished: look at the workers
                pass
        else:  # built targets waiting for a worker that can boot them
            time.sleep(POLL_S)
        for future in finished:
            if future in self.builds:
                self._built(future, self.builds.pop(future)[0])
            else:
                self._guested(future, *self.guests.pop(future))
        del finished, pending
        workers = self.eng.workers()
        self._requeue_lost(workers)
        self._start_guests(workers)
        self._drop_orphans(workers)

    def _built(self, future: Any, target: Target) -> None:
        built = self._answer(future, target)
        if built is None:
            return
        if built.result.status is Status.PASS:
            self.ready.append((target, built))
        else:  # a failed build has no guests: record it as it is
            self._record(target, Guested(built, None, b"", ""))

    def _guested(self, future: Any, target: Target, _: Built, where: str) -> None:
        self.busy[where] -= 1
        guested = self._answer(future, target)
        if guested is not None:
            self._record(target, guested)

    def _answer(self, future: Any, target: Target) -> Any:
        """The task's value; a lab error recorded (and None) when it raised one."""
        from distributed import KilledWorker
        try:
            return future.result()
        except LabError as exc:
            self.done += 1
            _lab_error(self.ctx, target, str(exc))
        except KilledWorker as exc:
            self.done += 1
            _lab_error(self.ctx, target, f"its workers died ({exc})")
        finally:
            # let go of it: a worker that dies holding a result still wanted would make
            # Dask compute it again for nothing
            future.release()
        return None

    def _record(self, target: Target, g: Guested) -> None:
        self.done += 1
        _record(self.eng, self.ctx, target, g, f"{self.done}/{self.total}",
                time.monotonic() - self.started)

    def build(self, target: Target, where: str, priority: int) -> None:
        self.priority[target] = priority
        built = self.eng.client.submit(
            build_task, self.job, target, self.force, pure=False, key=_key("build", target),
            resources={"build": 1, f"build-{target.arch.name}": 1}, workers=[where],
            allow_other_workers=False, priority=priority)
        self.builds[built] = (target, where)

    def _requeue_lost(self, workers: list[WorkerInfo]) -> None:
        """Builds whose worker left the cluster go to another builder (the least
        loaded); guests go back to the front of the queue."""
        alive = {w.address for w in workers}
        for future, (target, where) in list(self.builds.items()):
            able = [w for w in workers if w.can(f"build-{target.arch.name}")]
            if where not in alive and able:
                future.cancel()
                del self.builds[future]
                load = {w.address: 0 for w in able}
                for _, other in self.builds.values():
                    load[other] = load.get(other, 0) + 1
                again = min(able, key=lambda w: (load[w.address], w.name)).address
                print(f"\n== {target.label}: its builder left; building it again",
                      flush=True)
                self.build(target, again, self.priority[target])
        for future, (target, built, where) in list(self.guests.items()):
            if where not in alive:
                future.cancel()
                del self.guests[future]
                self.busy[where] -= 1
                print(f"\n== {target.label}: its guest worker left; starting it again",
                      flush=True)
                self.ready.insert(0, (target, built))

    def _start_guests(self, workers: list[WorkerInfo]) -> None:
        building = {where for _, where in self.builds.values() if where}
        for target, built in list(self.ready):
            where = pick_guest_worker(target.arch.name, workers, self.busy, building)
            if not where:
                continue
            self.ready.remove((target, built))
            guest = self.eng.client.submit(
                guest_task, self.job, built, pure=False, key=_key("guest", target),
                resources={"guest": 1, f"boot-{target.arch.name}": 1}, workers=[where],
                allow_other_workers=False)
            self.guests[guest] = (target, built, where)
            self.busy[where] = self.busy.get(where, 0) + 1

    def _drop_orphans(self, workers: list[WorkerInfo]) -> None:
        waiting: dict[Any, Target] = {f: t for f, (t, _) in self.builds.items()}
        waiting.update((f, t) for f, (t, _, _) in self.guests.items())
        waiting.update((id(built), t) for t, built in self.ready)
        for key in _orphans(workers, self.ctx, waiting, self.orphaned):
            self.done += 1
            if key in self.builds:
                key.cancel()
                del self.builds[key]
            elif key in self.guests:
                key.cancel()
                _, _, where = self.guests.pop(key)
                self.busy[where] -= 1
            else:
                self.ready = [(t, b) for t, b in self.ready if id(b) != key]


def _orphans(workers: list[WorkerInfo], ctx: Context, waiting: dict[Any, Target],
             orphaned: dict[Any, float]) -> list[Any]:
    """The waiting entries whose target no worker left can serve, for ORPHAN_S: each
    recorded as a lab error and returned for the caller to drop (a worker restarting
    is waited for, not a run that waits forever)."""
    now, dropped = time.monotonic(), []
    for key, target in waiting.items():
        why = _unservable(target, workers)
        if not why:
            orphaned.pop(key, None)
        elif now - orphaned.setdefault(key, now) >= ORPHAN_S:
            orphaned.pop(key)
            _lab_error(ctx, target, f"{why} any more: its workers left")
            dropped.append(key)
    return dropped


def _key(stage: str, t: Target) -> str:
    return f"{stage}-{t.label.replace(' ', '-')}-{uuid.uuid4().hex[:6]}"


def _lab_error(ctx: Context, t: Target, why: str) -> None:
    record(ctx, t, LabError(why), "", None, None)


def _unservable(t: Target, workers: list[WorkerInfo]) -> str:
    for need, what in ((f"build-{t.arch.name}", "build"), (f"boot-{t.arch.name}", "boot")):
        if not any(w.can(need) for w in workers):
            return f"no worker can {what} {t.arch.name} (none declares {need})"
    return ""


def _record(eng: Engine, ctx: Context, target: Target, g: Guested, count: str,
            elapsed: float) -> None:
    names = {w.address: w.name for w in eng.workers()}
    b = g.built
    where = f"built on {names.get(b.worker, b.worker or '?')}" + \
        (" (cached)" if b.result.cached else "")
    if g.run is not None:
        where += f", guests on {names.get(g.worker, g.worker or '?')}"
    print(f"\n== [{count}] {target.label}: {where} ({fmt_secs(elapsed)} elapsed)", flush=True)
    incoming = ctx.store.root / ".incoming" / uuid.uuid4().hex[:8]
    try:
        if g.run is not None:
            unpack(g.files, incoming)
        record(ctx, target, b.result, b.log, g.run, incoming if g.run is not None else None)
    finally:
        shutil.rmtree(incoming, ignore_errors=True)
