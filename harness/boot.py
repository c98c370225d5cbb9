"""The run path: boot a kernel on the lab's rootfs, wait for SSH or a verdict, and
always tear the guest down. What every boot of one arch shares (rootfs, keys, the
accelerator verdict) is prepared once, as a GuestKit:

    kit = prepare_kit(lab.workdir, arch, image, lab.guest)
    with boot(kit, image, lab.guest, run_dir) as guest:
        if guest.outcome.ready:
            guest.ssh.run("uname -r")
"""

from __future__ import annotations

import os
import tempfile
import time
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, ContextManager, Iterator, Protocol

from harness.accel import AccelVerdict, choose_accel
from harness.config import Arch, GuestSettings
from harness.console import ConsoleReport, State, Verdict, classify
from harness.errors import LabError
from harness.guest import CONSOLE_LIMIT, Guest
from harness.ops import Ops
from harness.qemu import Machine, fast_firmware, free_port, init_path, qemu_argv
from harness.results import write_json
from harness.rootfs import Rootfs, ensure_rootfs
from harness.ssh import Endpoint, GuestSSH, HostKeyMismatch, SSHError, Watch

PORT_TRIES = 3


@dataclass(frozen=True)
class GuestKit:
    """Prepared once per arch per run: the rootfs (with the pinned host key and the
    lab's key) and the accelerator this host gives that arch."""

    workdir: Path
    arch: Arch
    rootfs: Rootfs
    accel: AccelVerdict


def prepare_kit(workdir: Path, arch: Arch, kernel: Path, settings: GuestSettings,
                ops: Ops | None = None) -> GuestKit:
    """Rootfs (built first when missing) and accelerator (probed once per host with
    `kernel` when settings say auto)."""
    ops = ops or Ops()
    if not kernel.is_file():
        raise LabError(f"{kernel}: no kernel image")
    rootfs = ensure_rootfs(workdir, arch, ops)
    force = None if settings.accel == "auto" else settings.accel
    return GuestKit(workdir, arch, rootfs, choose_accel(workdir, arch, kernel, ops, force))


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
                 rootfs: Rootfs | None) -> None:
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

    def power_off(self) -> None:
        """The guest's end after a clean run: QEMU quits on its own (boot() kills it
        behind anyway)."""
        try:
            self.ssh.run("sync; poweroff -f >/dev/null 2>&1 &", timeout=10)
        except SSHError:
            pass

    def watch(self, test_timeout: float) -> Watch:
        """For a running command: why the guest counts as dead or wedged, or None. A
        panic on the console, QEMU gone, or one test past `test_timeout` seconds."""
        def why() -> str | None:
            report = self.guest.report()
            if report.panic:
                return f"the kernel panicked: {report.panic_line or 'Kernel panic'}"
            if self.guest.console_closed():
                return self.guest.ended_why()
            running = self.guest.running_test()
            if running and running[1] is not None and \
                    self.guest.elapsed() - running[1] > test_timeout:
                return (f"{running[0]} ran past guest.test_timeout ({test_timeout:.0f} s): "
                        "the guest is wedged")
            return None
        return why

    def running_test(self, settle: float = 2.0) -> str | None:
        """The test the console says was running (begin marker, no end). Called after
        a command was cut short: gives a dying QEMU `settle` s to flush its console."""
        deadline = time.monotonic() + settle
        while not self.guest.console_closed() and time.monotonic() < deadline:
            time.sleep(0.05)
        running = self.guest.running_test()
        return running[0] if running else None

    def console(self) -> Verdict:
        """The console as it stands now: e.g. a panic a test provoked."""
        return classify(self.guest.report(), now_s=self.guest.elapsed(),
                        exited=self.guest.console_closed(), ssh_ready=self._ssh is not None,
                        silence_limit_s=float("inf"), ready_limit_s=float("inf"),
                        log=self.guest.console_log)


class BootFn(Protocol):
    """The seam to QEMU and SSH (tests put a recorded guest here)."""

    def __call__(self, kit: GuestKit, kernel: Path, settings: GuestSettings,
                 run_dir: Path, *,
                 machine: Machine | None = None) -> ContextManager[BootedGuest]: ...


def new_run_dir(workdir: Path, arch: Arch) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    return workdir / "runs" / f"{arch.name}-{stamp}-{os.getpid()}-{time.monotonic_ns() % 10**6}"


@contextmanager
def boot(kit: GuestKit, kernel: Path, settings: GuestSettings,
         run_dir: Path | None = None, ops: Ops | None = None,
         machine: Machine | None = None,
         console_limit: int = CONSOLE_LIMIT) -> Iterator[BootedGuest]:
    """Boot `kernel` for the kit's arch and yield once the boot is decided: READY with
    SSH, or PANIC / HANG / EXITED with the facts. QEMU is stopped on the way out,
    whatever happens inside the block."""
    verbose = (ops or Ops()).verbose
    if not kernel.is_file():
        raise LabError(f"{kernel}: no kernel image")
    run_dir = run_dir or new_run_dir(kit.workdir, kit.arch)
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bpflab-")))
        guest, port = _start(stack, kit, kernel, settings, run_dir, tmp, verbose,
                             machine or Machine(firmware=fast_firmware(kit.arch)),
                             console_limit)
        ssh = GuestSSH(Endpoint("127.0.0.1", port, "root", kit.rootfs.lab_key.private,
                                kit.rootfs.host_key))
        stack.callback(ssh.close)
        verdict, ready_s = _wait(guest, ssh, settings)
        if verdict.state is State.HANG:
            guest.sysrq()  # stacks into console.log while the guest still exists
        reason = verdict.reason
        if verdict.state is State.EXITED and guest.qemu_errors():
            reason += ": " + guest.qemu_errors().splitlines()[-1]  # e.g. a bad -kernel
        outcome = BootOutcome(verdict.state, reason, kit.accel.accel,
                              verdict.console.first_output_s, ready_s,
                              verdict.console.kernel_release, verdict.console.kasan,
                              guest.console_log, verdict.console.tail)
        write_json(run_dir / "outcome.json", {**asdict(outcome),
                                              "accel_reason": kit.accel.reason,
                                              "argv": guest.argv})
        yield BootedGuest(outcome, guest, ssh if outcome.ready else None, kit.rootfs)


def _start(stack: ExitStack, kit: GuestKit, kernel: Path, settings: GuestSettings,
           run_dir: Path, tmp: Path, verbose: bool, machine: Machine,
           console_limit: int) -> tuple[Guest, int]:
    """Launch QEMU on a free port; if another process took the port first, QEMU
    fails at once and we try another."""
    for attempt in range(PORT_TRIES):
        port = free_port()
        argv = qemu_argv(kit.arch, kernel, kit.rootfs.image, ssh_port=port,
                         qmp_socket=tmp / "qmp", accel=kit.accel.accel,
                         init=init_path(settings.init),
                         cmdline_extra=settings.cmdline_extra, machine=machine)
        guest = Guest(argv, run_dir, tmp / "qmp", verbose, console_limit)
        stack.enter_context(guest)
        time.sleep(0.3)
        if guest.returncode() is None or "hostfwd" not in guest.qemu_errors():
            return guest, port
    raise LabError(f"QEMU could not bind a forwarding port in {PORT_TRIES} tries: "
                   f"{guest.qemu_errors()}")


class _Watched(Protocol):
    console_log: Path

    def report(self) -> ConsoleReport: ...

    def elapsed(self) -> float: ...

    def console_closed(self) -> bool: ...


class _Connects(Protocol):
    def connect(self, timeout: float = 5.0) -> None: ...


def _wait(guest: _Watched, ssh: _Connects, settings: GuestSettings,
          pause: Callable[[float], None] = time.sleep) -> tuple[Verdict, float | None]:
    """Poll console and SSH until classify() decides. SSH is tried once the kernel
    has started init; until the console says sshd listens, with a short timeout,
    because slirp holds a connection to a guest without network until it times out."""
    while True:
        exited = guest.console_closed()  # first: once closed, the report is complete
        report = guest.report()
        ready_s = None
        if report.init and not exited and not report.panic:
            remaining = settings.boot_timeout - guest.elapsed()
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
                           silence_limit_s=settings.silence_timeout,
                           ready_limit_s=settings.boot_timeout, log=guest.console_log)
        if verdict.state is not State.BOOTING:
            return verdict, ready_s
        pause(0.1)
