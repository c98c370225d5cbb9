"""Console following cost: how long the boot wait loop's look at a chatty console takes
as the log grows. The lab feeds each line once to harness.console.ConsoleWatch; the
old way re-parsed every line on every 0.1 s poll. Prints both for a log of N lines.

    .venv/bin/python benchmarks/bench_console.py [--lines 200000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.console import ConsoleWatch, parse  # noqa: E402

LOG = Path(__file__).resolve().parents[1] / "tests/data/console/x86_64_lean_init_clean_boot.log"


def lines(n: int) -> list[str]:
    base = LOG.read_text().splitlines()
    return [base[i % len(base)] for i in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=200_000)
    n = ap.parse_args().lines
    log = lines(n)
    watch = ConsoleWatch()
    t0 = time.perf_counter()
    for line in log:
        watch.feed(line)
    fed = time.perf_counter() - t0
    t0 = time.perf_counter()
    watch.report()
    look = time.perf_counter() - t0
    t0 = time.perf_counter()
    parse(log)
    reparse = time.perf_counter() - t0
    print(f"{n} console lines: fed once {fed:.2f} s in all ({fed / n * 1e6:.1f} us a line); "
          f"one poll's look now {look * 1e3:.3f} ms; re-parsing the whole log on a poll, "
          f"as before, {reparse:.2f} s")


if __name__ == "__main__":
    main()
