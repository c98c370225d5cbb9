"""The run path: boot a kernel on the lab's rootfs, wait for SSH or a verdict, and
always tear the guest down.

    with boot(lab.workdir, arch, image) as guest:
        if guest.outcome.ready:
            guest.ssh.run("uname -r")
"""

from __future__ import annotations

import os
import tempfile
import time
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

from harness.accel import choose_accel
from harness.config import Arch, GuestSettings
from harness.console import State, Verdict, classify, parse
from harness.errors import LabError
from harness.guest import Guest
from harness.ops import Ops
from harness.qemu import Machine, fast_firmware, free_port, init_path, qemu_argv
from harness.results import write_json
from harness.rootfs import Rootfs, ensure_rootfs
from harness.ssh import Endpoint, GuestSSH, HostKeyMismatch, SSHError

PORT_TRIES = 3


@dataclass(frozen=True)
class BootOptions:
    accel: str | None = None  # None: probe (and remember); "tcg" or "kvm" to force
    init: str = "lean"  # "lean" (bpflab-init) or "systemd"
    cmdline_extra: tuple[str, ...] = ()
    boot_timeout: float = 90.0  # s from QEMU start to SSH ready
    silence_timeout: float = 30.0  # s without console output before calling it a hang
    machine: Machine | None = None  # None: 2 CPUs, 2G and the fastest firmware found


@dataclass(frozen=True)
class BootOutcome:
    state: State
    reason: str
    accel: str
    first_output_s: float | None  # QEMU start to the first console line
    ssh_ready_s: float | None  # QEMU start to a logged-in SSH session
    kernel_release: str | None
    kasan: bool
    console_log: Path
    tail: tuple[str, ...]

    @property
    def ready(self) -> bool:
        return self.state is State.READY


class BootedGuest:
    """What boot() yields: the outcome, the QEMU guest and (when ready) SSH."""

    def __init__(self, outcome: BootOutcome, guest: Guest, ssh: GuestSSH | None,
                 rootfs: Rootfs) -> None:
        self.outcome = outcome
        self.guest = guest
        self.rootfs = rootfs
        self._ssh = ssh

    @property
    def ssh(self) -> GuestSSH:
        if self._ssh is None:
            raise SSHError(f"guest not ready ({self.outcome.state.value}: "
                           f"{self.outcome.reason}); see {self.outcome.console_log}")
        return self._ssh

    def console(self) -> Verdict:
        """The console as it stands now: e.g. a KASAN report a test provoked."""
        return classify(parse(self.guest.lines()), now_s=self.guest.elapsed(),
                        exited=self.guest.console_closed(), ssh_ready=self._ssh is not None,
                        silence_limit_s=float("inf"), ready_limit_s=float("inf"),
                        log=self.guest.console_log)


def options_for(settings: GuestSettings, **overrides: object) -> BootOptions:
    """The lab's guest settings as boot options; flags given on the command line win."""
    accel = None if settings.accel == "auto" else settings.accel
    base = BootOptions(accel=accel, init=settings.init, boot_timeout=settings.boot_timeout,
                       silence_timeout=settings.silence_timeout)
    return replace(base, **{k: v for k, v in overrides.items() if v})  # type: ignore[arg-type]


def new_run_dir(workdir: Path, arch: Arch) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    return workdir / "runs" / f"{arch.name}-{stamp}-{os.getpid()}-{time.monotonic_ns() % 10**6}"


@contextmanager
def boot(workdir: Path, arch: Arch, kernel: Path, options: BootOptions = BootOptions(),
         ops: Ops | None = None, run_dir: Path | None = None) -> Iterator[BootedGuest]:
    """Boot `kernel` for `arch` on the cached rootfs (built first if needed) and yield
    once the boot is decided: READY with SSH, or PANIC / HANG / EXITED with the facts.
    QEMU is stopped on the way out, whatever happens inside the block."""
    ops = ops or Ops()
    if not kernel.is_file():
        raise LabError(f"{kernel}: no kernel image")
    rootfs = ensure_rootfs(workdir, arch, ops)
    accel = choose_accel(workdir, arch, kernel, ops, options.accel)
    run_dir = run_dir or new_run_dir(workdir, arch)
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bpflab-")))
        guest, port = _start(stack, arch, kernel, rootfs, accel.accel, options, run_dir, tmp,
                             ops.verbose)
        ssh = GuestSSH(Endpoint("127.0.0.1", port, "root", rootfs.lab_key.private,
                                rootfs.host_key))
        stack.callback(ssh.close)
        verdict, ready_s = _wait(guest, ssh, options)
        if verdict.state is State.HANG:
            guest.sysrq()  # stacks into console.log while the guest still exists
        reason = verdict.reason
        if verdict.state is State.EXITED and guest.qemu_errors():
            reason += ": " + guest.qemu_errors().splitlines()[-1]  # e.g. a bad -kernel
        outcome = BootOutcome(verdict.state, reason, accel.accel,
                              verdict.console.first_output_s, ready_s,
                              verdict.console.kernel_release, verdict.console.kasan,
                              guest.console_log, verdict.console.tail)
        write_json(run_dir / "outcome.json", {**asdict(outcome), "accel_reason": accel.reason,
                                              "argv": guest.argv})
        yield BootedGuest(outcome, guest, ssh if outcome.ready else None, rootfs)


def _start(stack: ExitStack, arch: Arch, kernel: Path, rootfs: Rootfs, accel: str,
           options: BootOptions, run_dir: Path, tmp: Path,
           verbose: bool) -> tuple[Guest, int]:
    """Launch QEMU on a free port; if another process took the port first, QEMU
    fails at once and we try another."""
    for attempt in range(PORT_TRIES):
        port = free_port()
        argv = qemu_argv(arch, kernel, rootfs.image, ssh_port=port, qmp_socket=tmp / "qmp",
                         accel=accel, init=init_path(options.init),
                         cmdline_extra=options.cmdline_extra,
                         machine=options.machine or Machine(firmware=fast_firmware(arch)))
        guest = Guest(argv, run_dir, tmp / "qmp", verbose)
        stack.enter_context(guest)
        time.sleep(0.3)
        if guest.returncode() is None or "hostfwd" not in guest.qemu_errors():
            return guest, port
    raise LabError(f"QEMU could not bind a forwarding port in {PORT_TRIES} tries: "
                   f"{guest.qemu_errors()}")


def _wait(guest: Guest, ssh: GuestSSH, options: BootOptions,
          pause: Callable[[float], None] = time.sleep) -> tuple[Verdict, float | None]:
    """Poll console and SSH until classify() decides. SSH is tried once the kernel
    has started init; until the console says sshd listens, with a short timeout,
    because slirp holds a connection to a guest without network until it times out."""
    while True:
        exited = guest.console_closed()  # first: once closed, lines() is complete
        report = parse(guest.lines())
        ready_s = None
        if report.init and not exited and report.bug is None:
            remaining = options.boot_timeout - guest.elapsed()
            patience = 5.0 if report.sshd_started else 1.0
            try:
                ssh.connect(timeout=max(0.5, min(patience, remaining)))
                ready_s = guest.elapsed()
            except HostKeyMismatch:
                raise  # not the guest we built: waiting longer will not help
            except SSHError:
                pass
        verdict = classify(report, now_s=guest.elapsed(), exited=exited,
                           ssh_ready=ready_s is not None,
                           silence_limit_s=options.silence_timeout,
                           ready_limit_s=options.boot_timeout, log=guest.console_log)
        if verdict.state is not State.BOOTING:
            return verdict, ready_s
        pause(0.1)
