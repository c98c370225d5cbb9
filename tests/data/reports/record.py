"""Record the real console logs the report parser is tested on: boot the default
lab's kernel for each arch and provoke reports with LKDTM between bpflab markers.

    .venv/bin/python tests/data/reports/record.py [--arch x86_64|arm64] [--commit C]

Writes tests/data/console/<arch>_lkdtm_reports.log (KASAN use-after-free and
slab-out-of-bounds, WARNING, BUG/Oops inside markers, a WARNING outside any) and
<arch>_lkdtm_panic_mid_test.log (a panic between a begin marker and its end)."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from harness.boot import boot, prepare_kit  # noqa: E402
from harness.config import GuestSettings  # noqa: E402
from harness.model import Selection  # noqa: E402
from harness.config import load_lab  # noqa: E402
from harness.main import Session  # noqa: E402
from harness.ops import Ops  # noqa: E402
from harness.ssh import SSHError  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "console"
DIRECT = "/sys/kernel/debug/provoke-crash/DIRECT"
IN_TESTS = ("READ_AFTER_FREE", "SLAB_LINEAR_OVERFLOW", "WARNING", "BUG")


def marker(event: str, name: str, outcome: str = "") -> str:
    tail = f" {outcome}" if outcome else ""
    return f"echo '<5>bpflab: {event} lkdtm::{name}{tail}' > /dev/kmsg"


def provoke(name: str) -> str:
    return f"echo {name} > {DIRECT}"


def record(session: Session, arch: str, commit: str | None) -> None:
    target = session.targets(Selection(arch, "base", commit))[-1]
    result = session.builder().build(target)
    assert result.image is not None, result.errors
    workdir = session.lab.workdir
    run = workdir / "runs" / f"record-{arch}"
    # KASAN reports once per boot unless told otherwise: here every report is wanted.
    multi = GuestSettings(cmdline_extra=("kasan_multi_shot",))
    kit = prepare_kit(workdir, target.arch, result.image, multi, session.ops)
    with boot(kit, result.image, multi, run / "a") as g:
        assert g.outcome.ready, g.outcome.reason
        for name in IN_TESTS:
            # BUG kills the shell that wrote it (an Oops in process context): that
            # is fine, the kernel goes on; the end marker comes from a new command.
            g.ssh.run(f"{marker('begin', name)}; {provoke(name)}", timeout=120)
            g.ssh.run(f"sleep 1; {marker('end', name, 'passed')}", timeout=60)
        g.ssh.run(f"sleep 1; {provoke('WARNING')}; sleep 1", timeout=60)  # outside markers
        g.ssh.run("sync; poweroff -f >/dev/null 2>&1 &", timeout=10)
    shutil.copy(run / "a" / "console.log", OUT / f"{arch}_lkdtm_reports.log")
    with boot(kit, result.image, GuestSettings(), run / "b") as g:
        assert g.outcome.ready, g.outcome.reason
        try:
            g.ssh.run(f"{marker('begin', 'PANIC')}; {provoke('PANIC')}", timeout=60)
        except SSHError:
            pass  # the guest is gone: that is the point
        g.guest.proc.wait(timeout=60)
    shutil.copy(run / "b" / "console.log", OUT / f"{arch}_lkdtm_panic_mid_test.log")
    print(f"recorded {arch} from {target.label} ({result.meta.get('kernel_release')})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", action="append", choices=["x86_64", "arm64"])
    parser.add_argument("--commit", help="a commit of the default lab (default: newest)")
    args = parser.parse_args()
    session = Session(load_lab(), Ops(verbose=False))
    for arch in args.arch or ["x86_64", "arm64"]:
        record(session, arch, args.commit)


if __name__ == "__main__":
    main()
