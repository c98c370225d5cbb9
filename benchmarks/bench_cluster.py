#!/usr/bin/env python3
"""The engine's cost and what more workers buy.

    .venv/bin/python benchmarks/bench_cluster.py [--targets N] [--throughput K]

1. Overhead per target of running a target's two stages as Dask tasks (the local
   cluster every run uses: scheduling, serialisation of a build's log and a guest's
   files, as_completed) against calling the same two functions in this process, with
   payloads the size of a real target's (a 100 KB build log, 1 MB of guest files);
   as a share of a real target's time (the median build + guest seconds of the
   targets in work/runs, the kernel cache's builds).
2. The modelled wall time of the 28-commit history of kernel/bpf/map_in_map.c on two
   arches on 1, 4 and 16 workers (one build and one guest slot each), from measured
   per-stage times: the engine's own placement (engine.place_builds), each builder's
   walk a cold build then incremental ones, each guest ready when its kernel is.
3. With --throughput K: real targets per hour through a real scheduler with one worker
   and then two (each its own workdir; the second boots only), for K cached-kernel
   targets of 6.1.192 x86_64 (variants running two quick tests each, one kernel for
   all): a warm-up run first, so what is timed is guests, not rootfs or kernel builds."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import engine  # noqa: E402
from harness.config import load_arches, load_lab, shared_cache  # noqa: E402
from harness.config import Variant  # noqa: E402
from harness.model import Commit, Target  # noqa: E402
# the processes a real cluster needs, started and ended as its end-to-end test does
from tests.e2e.test_cluster_real import Procs, free_port, wait_for  # noqa: E402

LOG = b"x" * 100_000
FILES = os.urandom(1_000_000)


def fake_build(i: int) -> tuple[int, bytes]:
    return i, LOG


def fake_guest(built: tuple[int, bytes]) -> tuple[int, bytes, bytes]:
    return built[0], built[1], FILES


def overhead(n: int) -> tuple[float, float]:
    """Seconds per target: through the engine's local cluster, and direct."""
    eng = engine.engine()
    t0 = time.perf_counter()
    direct = [fake_guest(fake_build(i)) for i in range(n)]
    direct_s = (time.perf_counter() - t0) / n
    from distributed import as_completed
    t0 = time.perf_counter()
    futures = []
    for i in range(n):
        built = eng.client.submit(fake_build, i, pure=False, resources={"build": 1})
        futures.append(eng.client.submit(fake_guest, built, pure=False,
                                         resources={"guest": 1}))
    done = [f.result() for f in as_completed(futures)]
    engine_s = (time.perf_counter() - t0) / n
    assert sorted(d[0] for d in done) == [d[0] for d in direct]
    return engine_s, direct_s


def measured() -> dict[str, float]:
    """Per-stage seconds from this host's kernel cache and run stores."""
    cold, incremental = [], []
    for meta_file in (shared_cache() / "kernels").glob("*/meta.json"):
        meta = json.loads(meta_file.read_text())
        total = float(meta.get("durations", {}).get("total", 0.0))
        objects = int(meta.get("objects_compiled", 0) or 0)
        (cold if objects > 1000 else incremental if objects < 200 else []).append(total)
    guest: dict[str, list[float]] = {}
    for meta_file in (load_lab().workdir / "runs").glob("*/targets/*/metadata.json"):
        meta = json.loads(meta_file.read_text())
        took = meta.get("durations", {})
        if meta.get("variant") == "base" and took.get("total_guest"):
            guest.setdefault(meta["arch"], []).append(float(took["total_guest"]))
    return {"cold": statistics.median(cold) if cold else 1543.0,
            "incremental": statistics.median(incremental) if incremental else 78.0,
            **{f"guest-{a}": statistics.median(v) for a, v in guest.items()}}


def model(workers: int, stages: dict[str, float], commits: int = 28) -> float:
    """Wall seconds of commits x 2 arches on `workers` workers of one build and one
    guest slot each, placed as the engine places them."""
    arches = [a for a in load_arches() if a.name in ("x86_64", "arm64")]
    todo = [Target(Commit(f"{a.name[0]}{i:039d}", f"t{i}", f"c{i}", "", series="6.1"), a,
                   Variant("base", (), ())) for a in arches for i in range(commits)]
    ws = [engine.WorkerInfo(f"w{k}", f"w{k}", {f"build-{a.name}": 1 for a in arches})
          for k in range(workers)]
    placed = engine.place_builds(todo, lambda t: "6.1", ws)
    built: dict[Target, float] = {}
    for w in ws:
        clock, last = 0.0, ""
        for t in [t for t in todo if placed[t] == w.address]:
            warm = last == t.arch.name
            clock += stages["incremental"] if warm else stages["cold"]
            built[t], last = clock, t.arch.name
    slots = [0.0] * workers
    for t in sorted(todo, key=lambda t: built[t]):
        k = min(range(workers), key=lambda i: slots[i])
        guest = stages.get(f"guest-{t.arch.name}", stages.get("guest-x86_64", 160.0))
        slots[k] = max(slots[k], built[t]) + guest
    return max(slots)


def hours(secs: float) -> str:
    return f"{secs / 3600:.1f} h" if secs >= 3600 else f"{secs / 60:.0f} min"


PROJECT = Path(__file__).resolve().parent.parent
QUICK = ["test_map_in_map_basic.py::test_syscall_lookup_on_an_outer_map_returns_the_inner_map_id",
         "test_map_in_map_basic.py::test_hash_inner_maps_may_differ_in_max_entries"]


def throughput_lab(path: Path, k: int) -> Path:
    lab = yaml.safe_load((PROJECT / "lab.yaml").read_text())
    lab.update(workdir=str(load_lab().workdir), arches=["x86_64"],
               variants=[{"name": f"q{i}", "tests": QUICK} for i in range(k)])
    lab["source"]["debian"]["versions"] = ["6.1.192"]
    path.write_text(yaml.safe_dump(lab, sort_keys=False))
    return path


def matrix_seconds(lab: Path, address: str, run_dir: Path) -> float:
    t0 = time.monotonic()
    done = subprocess.run([str(PROJECT / "lab"), "matrix", "--lab", str(lab), "--scheduler",
                           address, "--run-dir", str(run_dir)], capture_output=True, text=True)
    took = time.monotonic() - t0
    if done.returncode != 0:
        raise SystemExit(f"./lab matrix exit {done.returncode}:\n{done.stdout[-3000:]}")
    return took


def throughput(k: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        where = Path(tmp)
        procs = Procs(where)
        lab_cmd = str(PROJECT / "lab")
        try:
            log = procs.start("scheduler", [lab_cmd, "scheduler", "--port", str(free_port())],
                              {})
            address = wait_for(log, r"tcp://127\.0\.0\.1:\d+", 120, procs, "scheduler")
            a = procs.start("A", [lab_cmd, "worker", "--scheduler", address, "--name", "A"], {})
            wait_for(a, "worker A: tcp://", 120, procs, "A")
            lab = throughput_lab(where / "lab.yaml", k)
            matrix_seconds(lab, address, where / "warm")  # kernel, rootfs, C suite
            one = matrix_seconds(lab, address, where / "one")
            b = procs.start("B", [lab_cmd, "worker", "--scheduler", address, "--name", "B",
                                  "--build-slots", "0", "--workdir", str(where / "B")], {})
            wait_for(b, "worker B: tcp://", 120, procs, "B")
            matrix_seconds(throughput_lab(where / "warm-b.yaml", 2), address,
                           where / "warm-b")  # B's rootfs and kernel bundle
            two = matrix_seconds(lab, address, where / "two")
        finally:
            procs.stop_all()
    print(f"throughput, {k} cached-kernel targets (x86_64, 2 tests each), this host "
          f"({os.cpu_count()} cores): 1 worker {one:.0f} s = {3600 * k / one:.0f} targets/h; "
          f"2 workers {two:.0f} s = {3600 * k / two:.0f} targets/h ({one / two:.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=200)
    parser.add_argument("--throughput", type=int, default=0, metavar="K",
                        help="also time K real cached-kernel targets on 1 and 2 workers")
    args = parser.parse_args()
    stages = measured()
    engine_s, direct_s = overhead(args.targets)
    target_s = stages["incremental"] + stages.get("guest-x86_64", 160.0)
    cost = engine_s - direct_s
    print(f"engine overhead per target: {cost * 1000:.1f} ms ({engine_s * 1000:.1f} ms through "
          f"the local cluster, {direct_s * 1000:.2f} ms direct, {args.targets} targets)")
    print(f"  = {100 * cost / target_s:.3f}% of a target of {target_s:.0f} s "
          f"(an incremental build + a base guest, measured here)")
    print("per-stage seconds measured here: " +
          ", ".join(f"{k} {v:.0f}" for k, v in sorted(stages.items()))
          + ("" if any(k.startswith("guest-") for k in stages) else
             "; no base target in work/runs: the model takes a guest as 160 s"))
    for n in (1, 4, 16):
        print(f"model: 28 commits x 2 arches on {n:2d} worker(s): {hours(model(n, stages))}")
    if args.throughput:
        throughput(args.throughput)


if __name__ == "__main__":
    main()
