#!/usr/bin/env python3
"""The engine's cost and what more workers buy.

    .venv/bin/python benchmarks/bench_cluster.py [--targets N]

1. Overhead per target of running a target's two stages as Dask tasks (the local
   cluster every run uses: scheduling, serialisation of a build's log and a guest's
   files, as_completed) against calling the same two functions in this process, with
   payloads the size of a real target's (a 100 KB build log, 1 MB of guest files);
   as a share of a real target's time (the median build + guest seconds of the
   targets in work/runs, the kernel cache's builds).
2. The modelled wall time of the 28-commit history of kernel/bpf/map_in_map.c on two
   arches on 1, 4 and 16 workers (one build and one guest slot each), from measured
   per-stage times: the engine's own placement (engine.place_builds), each builder's
   walk a cold build then incremental ones, each guest ready when its kernel is."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import engine  # noqa: E402
from harness.config import load_arches, load_lab, shared_cache  # noqa: E402
from harness.config import Variant  # noqa: E402
from harness.model import Commit, Target  # noqa: E402

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=200)
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
          ", ".join(f"{k} {v:.0f}" for k, v in sorted(stages.items())))
    for n in (1, 4, 16):
        print(f"model: 28 commits x 2 arches on {n:2d} worker(s): {hours(model(n, stages))}")


if __name__ == "__main__":
    main()
