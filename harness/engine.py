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
from typing import Any, Callable

from harness.build import Builder
from harness.errors import LabError, UserError
from harness.model import Target
from harness.pipeline import Context, record
from harness.progress import fmt_secs
from harness.guest import call_off
from harness.worker import Guested, Job, build_task, guest_task, local_resources, unpack

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
    """Each (arch, series) walk of adjacent commits to one builder (its build directory
    stays warm, builds stay incremental); a walk is cut into contiguous pieces while
    builders would otherwise sit idle; the biggest pieces go first to the least loaded."""
    walks: dict[tuple[str, str], list[Target]] = {}
    for t in todo:
        walks.setdefault((t.arch.name, series(t)), []).append(t)
    chunks = [(arch, ts) for (arch, _), ts in walks.items()]
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


def guest_preference(arch: str, workers: list[WorkerInfo], builders: set[str]) -> list[str]:
    """Where a guest should go first: a KVM worker that is not building, a KVM worker,
    a worker not building (a TCG guest beside a build boots at half speed), any."""
    able = [w for w in workers if w.can(f"boot-{arch}")]
    kvm = [w for w in able if w.can("kvm")]
    for tier in ([w for w in kvm if w.address not in builders], kvm,
                 [w for w in able if w.address not in builders], able):
        if tier:
            return [w.address for w in tier]
    return []


def run(eng: Engine, ctx: Context, job: Job, builder: Builder, todo: list[Target],
        force: bool) -> None:
    """Submit every target's build and guests; record each as it completes."""
    workers = eng.workers()
    print(eng.describe(), flush=True)
    placed = place_builds(todo, builder.series, workers)
    builders = set(placed.values())
    futures: dict[Any, Target] = {}
    n = len(todo)
    for i, t in enumerate(todo):
        why = _unservable(t, workers)
        if why:
            _lab_error(ctx, t, why)
            continue
        where = placed.get(t)
        built = eng.client.submit(build_task, job, t, force, pure=False,
                                  key=_key("build", t),
                                  resources={"build": 1, f"build-{t.arch.name}": 1},
                                  workers=[where] if where else None,
                                  allow_other_workers=True, priority=n - i)
        guest = eng.client.submit(guest_task, job, built, pure=False,
                                  key=_key("guest", t),
                                  resources={"guest": 1, f"boot-{t.arch.name}": 1},
                                  workers=guest_preference(t.arch.name, workers, builders),
                                  allow_other_workers=True, priority=2 * n - i)
        futures[guest] = t
    _collect(eng, ctx, futures, n, job.run)


def _collect(eng: Engine, ctx: Context, futures: dict[Any, Target], total: int,
             run_token: str) -> None:
    """Record each target as its guests finish; a target no worker left can serve is
    a lab error after ORPHAN_S, not a run that waits forever."""
    from distributed import KilledWorker, wait
    started, done = time.monotonic(), 0
    orphaned: dict[Any, float] = {}
    try:
        while futures:
            try:
                finished = wait(list(futures), timeout=POLL_S, return_when="FIRST_COMPLETED").done
            except TimeoutError:  # nothing finished: look at the workers
                finished = set()
            for future in finished:
                target = futures.pop(future)
                done += 1
                try:
                    result: Guested = future.result()
                except LabError as exc:
                    _lab_error(ctx, target, str(exc))
                    continue
                except KilledWorker as exc:
                    _lab_error(ctx, target, f"its workers died ({exc})")
                    continue
                finally:
                    # let go of it: a worker that dies holding a result still wanted
                    # would make Dask run the target's guests again for nothing
                    future.release()
                _record(eng, ctx, target, result, f"{done}/{total}", time.monotonic() - started)
            del finished
            _orphans(eng, ctx, futures, orphaned)
    except BaseException:
        eng.client.cancel(list(futures), force=True)
        # every worker ends this run's QEMUs and makes and starts it no more (a
        # cancelled task's thread runs on); the runs of other coordinators go on.
        # Best effort: a worker that cannot be told must not hide why the run ends.
        try:
            eng.client.run(call_off, run_token, on_error="ignore")
        except Exception as exc:  # noqa: BLE001 - the scheduler itself is gone
            print(f"   could not call the run off on the workers: {exc}", flush=True)
        raise


def _orphans(eng: Engine, ctx: Context, futures: dict[Any, Target],
             orphaned: dict[Any, float]) -> None:
    workers = eng.workers()
    now = time.monotonic()
    for future, target in list(futures.items()):
        why = _unservable(target, workers)
        if not why:
            orphaned.pop(future, None)
        elif now - orphaned.setdefault(future, now) >= ORPHAN_S:
            future.cancel()
            del futures[future]
            _lab_error(ctx, target, f"{why} any more: its workers left")


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
