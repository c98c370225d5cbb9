"""KVM or TCG: probed once per host with a short, time-bounded boot, then remembered.

/dev/kvm existing proves little: on some hosts it opens and every KVM guest hangs
right after the firmware. So the probe boots the kernel under KVM and wants to see
the kernel's first console line within a few seconds; otherwise the verdict is TCG.
The verdict is keyed by hostname, QEMU version and host kernel release, so an
upgrade of either is probed afresh."""

from __future__ import annotations

import json
import os
import platform
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from harness.config import Arch
from harness.errors import UserError
from harness.guest import Guest
from harness.ops import Ops
from harness.config import ACCEL_ARGS
from harness.qemu import free_port, qemu_argv
from harness.results import write_json

PROBE_SECONDS = 12.0


@dataclass(frozen=True)
class AccelVerdict:
    accel: str  # "kvm" or "tcg"
    reason: str
    cached: bool = False


def host_key(ops: Ops, arch: Arch) -> str:
    """hostname | QEMU version | host kernel release."""
    out = ops.run([arch.qemu_binary, "--version"], quiet=True).stdout
    version = out.splitlines()[0].strip() if out else "unknown"
    return f"{socket.gethostname()}|{version}|{platform.release()}"


def kvm_usable(dev: Path = Path("/dev/kvm")) -> str | None:
    """None when /dev/kvm opens read-write, else why not."""
    try:
        fd = os.open(dev, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return f"{dev}: {exc.strerror}"
    os.close(fd)
    return None


def probe_kvm(arch: Arch, kernel: Path, run_dir: Path,
              seconds: float = PROBE_SECONDS) -> AccelVerdict:
    """Boot the kernel under KVM without a disk; a kernel console line in time
    means KVM works (the kernel then panics for want of a root and QEMU exits)."""
    with tempfile.TemporaryDirectory(prefix="bpflab-accel-") as tmp:
        argv = qemu_argv(arch, kernel, None, ssh_port=free_port(),
                         qmp_socket=Path(tmp) / "qmp", accel="kvm", init=None)
        with Guest(argv, run_dir, Path(tmp) / "qmp", verbose=False) as guest:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                if guest.report().kernel_release:
                    return AccelVerdict("kvm", f"kernel printed after {guest.elapsed():.1f} s")
                if guest.returncode() is not None:
                    err = guest.qemu_errors().splitlines()
                    return AccelVerdict("tcg", f"KVM QEMU exited: {err[-1] if err else '?'}")
                time.sleep(0.2)
    return AccelVerdict("tcg", f"KVM guest printed nothing in {seconds:.0f} s (hangs)")


Prober = Callable[[Arch, Path, Path], AccelVerdict]


def choose_accel(workdir: Path, arch: Arch, kernel: Path, ops: Ops,
                 force: str | None = None, probe: Prober = probe_kvm) -> AccelVerdict:
    """The accelerator to boot `arch` with on this host: forced, remembered or probed."""
    if force:
        if force not in ACCEL_ARGS:
            raise UserError(f"accel {force!r}: expected one of {', '.join(ACCEL_ARGS)}")
        return AccelVerdict(force, "forced")
    if not arch.is_native:
        return AccelVerdict("tcg", f"{arch.name} guest on a {platform.machine()} host")
    why_not = kvm_usable()
    if why_not:
        return AccelVerdict("tcg", why_not)
    path = workdir / "accel.json"
    key = f"{host_key(ops, arch)}|{arch.name}"
    known = _load(path)
    if key in known:
        return AccelVerdict(known[key]["accel"], known[key]["reason"], cached=True)
    verdict = probe(arch, kernel, workdir / "runs" / "accel-probe")
    known[key] = {"accel": verdict.accel, "reason": verdict.reason,
                  "probed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_json(path, known)
    return verdict


def _load(path: Path) -> dict[str, dict[str, str]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # missing or damaged: probe again rather than fail
    return data if isinstance(data, dict) else {}
