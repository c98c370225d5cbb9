#!/usr/bin/env python3
"""Rootfs build time and boot-to-SSH seconds per arch (median of N boots).

    .venv/bin/python benchmarks/bench_boot.py [--arch x86_64] [--boots 3]
        [--init lean|systemd] [--fresh-rootfs]

The rootfs time is the cached image's recorded build time, or, with --fresh-rootfs,
a new build in a scratch workdir (the lab's cache is left alone). The kernel is the
default lab's newest commit (base variant), built first if it is not cached."""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.boot import boot, prepare_kit  # noqa: E402
from harness.config import GuestSettings  # noqa: E402
from harness.model import Selection  # noqa: E402
from harness.config import Arch, load_lab  # noqa: E402
from harness.main import Session  # noqa: E402
from harness.ops import Ops  # noqa: E402
from harness.rootfs import ensure_rootfs  # noqa: E402


def lab_kernel(session: Session, arch: Arch) -> Path | None:
    """The default lab's newest commit, base variant: built if not cached."""
    target = session.targets(Selection(arch.name, "base"))[-1]
    return session.builder().build(target).image


def rootfs_seconds(workdir: Path, arch: Arch, fresh: bool, ops: Ops) -> float:
    if not fresh:
        return ensure_rootfs(workdir, arch, ops).build_seconds
    with tempfile.TemporaryDirectory(prefix="bpflab-bench-", dir=workdir) as scratch:
        return ensure_rootfs(Path(scratch), arch, ops).build_seconds


def boot_seconds(workdir: Path, arch: Arch, kernel: Path, options: GuestSettings,
                 ops: Ops) -> tuple[float | None, str]:
    kit = prepare_kit(workdir, arch, kernel, options, ops)
    with boot(kit, kernel, options, ops=ops) as guest:
        o = guest.outcome
        if not o.ready:
            return None, f"{o.state.value}: {o.reason}"
        release = guest.ssh.run("uname -r").stdout.strip()
        return o.ssh_ready_s, f"first console {o.first_output_s:.1f} s, {release}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", action="append", help="default: the lab's arches")
    parser.add_argument("--boots", type=int, default=3)
    parser.add_argument("--init", default="lean", choices=("lean", "systemd"))
    parser.add_argument("--fresh-rootfs", action="store_true")
    args = parser.parse_args()
    lab = load_lab()
    ops = Ops(verbose=False)
    arches = [lab.arch(a) for a in args.arch] if args.arch else list(lab.arches)
    options = GuestSettings(init=args.init, boot_timeout=180)
    for arch in arches:
        built = rootfs_seconds(lab.workdir, arch, args.fresh_rootfs, ops)
        print(f"{arch.name}: rootfs build {built:.1f} s", flush=True)
        kernel = lab_kernel(Session(lab, ops), arch)
        if kernel is None:
            print(f"{arch.name}: the kernel did not build, boots skipped")
            continue
        times = []
        for i in range(args.boots):
            started = time.monotonic()
            seconds, note = boot_seconds(lab.workdir, arch, kernel, options, ops)
            wall = time.monotonic() - started
            shown = f"{seconds:.1f} s" if seconds is not None else "not ready"
            print(f"{arch.name}: boot {i + 1} ({args.init}): SSH after {shown} "
                  f"({note}; {wall:.1f} s with teardown)", flush=True)
            if seconds is not None:
                times.append(seconds)
        if times:
            print(f"{arch.name}: boot-to-SSH median {statistics.median(times):.1f} s "
                  f"over {len(times)} boots ({args.init} init)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
