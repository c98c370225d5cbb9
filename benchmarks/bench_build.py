"""Build benchmark: prints cold, no-op, incremental (touch kernel/bpf/map_in_map.c),
warm-ccache-from-scratch and cache-hit times per arch, with ccache hit rates.

A script, not a test: run it with ./lab bench-build [--arch A] [--cold]. --cold wipes
the arch's build directory and the lab's ccache first (about 13 min per arch here)."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.build import Builder, BuildResult, Target  # noqa: E402
from harness.config import CACHE_ENV, DEFAULT_LAB, load_lab  # noqa: E402
from harness.main import Session  # noqa: E402
from harness.model import Selection  # noqa: E402
from harness.ops import Ops  # noqa: E402


def timed(step: str, builder: Builder, target: Target, force: bool = True) -> dict[str, object]:
    started = time.monotonic()
    result: BuildResult = builder.build(target, force=force)
    wall = time.monotonic() - started
    stats = result.meta.get("ccache", {}) if not result.cached else {}
    hits, misses = (stats.get("hits", 0), stats.get("misses", 0)) if isinstance(stats, dict) \
        else (0, 0)
    rate = f"{100 * hits / (hits + misses):.0f}%" if hits + misses else "-"
    return {"step": step, "wall": wall, "status": result.status.value,
            "objects": result.meta.get("objects_compiled", 0) if not result.cached else 0,
            "ccache": f"{hits}/{hits + misses} ({rate})"}


def bench_arch(session: Session, arch: str, cold: bool) -> list[dict[str, object]]:
    target = session.targets(Selection(arch, session.lab.variants[0].name))[-1]
    builder = session.builder()
    rows = []
    if cold:
        # a fresh shared cache for this process only: other clones' caches stay whole
        os.environ[CACHE_ENV] = tempfile.mkdtemp(prefix="bpflab-bench-cache-")
        shutil.rmtree(builder.build_dir(target.arch, builder.series(target)), ignore_errors=True)
        rows.append(timed("cold (empty build dir and ccache)", builder, target))
    else:
        # not a cache lookup: the build dir may hold another commit or variant
        builder.build(target, force=True)
    rows.append(timed("no-op make", builder, target))
    touched = builder.checkout.path / "kernel/bpf/map_in_map.c"
    os.utime(touched)
    rows.append(timed("touch kernel/bpf/map_in_map.c", builder, target))
    shutil.rmtree(builder.build_dir(target.arch, builder.series(target)), ignore_errors=True)
    rows.append(timed("build dir wiped, ccache warm", builder, target))
    rows.append(timed("cache hit (same key)", builder, target, force=False))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lab", default=str(DEFAULT_LAB))
    parser.add_argument("--arch", action="append", help="default: every arch of the lab")
    parser.add_argument("--cold", action="store_true", help="also time a cold build")
    args = parser.parse_args()
    session = Session(load_lab(Path(args.lab)), Ops(verbose=False))
    arches = args.arch or [a.name for a in session.lab.arches]
    report = {arch: bench_arch(session, arch, args.cold) for arch in arches}
    print(f"\n{'arch':<8} {'step':<36} {'wall':>9} {'objects':>8}  ccache hits")
    for arch, rows in report.items():
        for row in rows:
            print(f"{arch:<8} {row['step']:<36} {row['wall']:>8.1f}s {row['objects']:>8}  "
                  f"{row['ccache']}")


if __name__ == "__main__":
    main()
