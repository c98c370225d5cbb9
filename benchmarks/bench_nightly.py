#!/usr/bin/env python3
"""Seconds of ./lab nightly: a first night, then a night with nothing new (goal: a few
seconds, no build, no boot).

    .venv/bin/python benchmarks/bench_nightly.py [--lab FILE]

Without --lab: a local bare repository plays bpf-next, its master at the default
lab's 7.3-rc7 (imported if missing), x86_64 and the base variant only, in
work/bench-nightly/ (the kernel cache makes its kernel a hit when the default lab
built it). The first night costs a boot of the suites unless an earlier run of this
benchmark left its store; the second must reuse everything."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.config import load_lab  # noqa: E402
from harness.main import Session  # noqa: E402
from harness.model import Selection  # noqa: E402
from harness.nightly import nightly  # noqa: E402
from harness.ops import Ops  # noqa: E402

PROJECT = Path(__file__).resolve().parent.parent


def default_lab() -> Path:
    lab = load_lab()
    Session(lab, Ops(verbose=False)).targets(Selection(commit="v7.3-rc7"))  # imported
    where = lab.workdir / "bench-nightly"
    remote = where / "bpf-next.git"
    if not (remote / "HEAD").exists():
        where.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "clone", "-q", "--bare", "--shared",
                        str(lab.workdir / "src" / "debian.git"), str(remote)], check=True)
    subprocess.run(["git", "-C", str(remote), "update-ref", "refs/heads/master",
                    "v7.3-rc7^{commit}"], check=True)
    base = (PROJECT / "lab.yaml").read_text()
    path = where / "bpf-next.yaml"
    path.write_text(f"workdir: {lab.workdir}\nsource:\n  git: {where / 'fetched.git'}\n"
                    f"  remote: {remote}\n  branch: master\n"
                    "  paths: [kernel/bpf/map_in_map.c]\n"
                    f"arches: [x86_64]\n{base[base.index('build:'):base.index('variants:')]}")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lab", type=Path, help="a lab that names a branch to follow")
    args = ap.parse_args()
    session = Session(load_lab(args.lab or default_lab()), Ops(verbose=False))
    for night in ("first night", "nothing new"):
        t0 = time.monotonic()
        result = nightly(session)
        print(f"{night:<12} {time.monotonic() - t0:7.1f} s  {result.ran} target(s) built and "
              f"booted, {len(result.plan.commits)} commit(s), verdict "
              f"{result.verdict.value}", flush=True)


if __name__ == "__main__":
    main()
