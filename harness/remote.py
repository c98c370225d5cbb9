"""Real machines over SSH: the kernel under test goes to a machine the user already
has, which kexecs into it; the suites run over SSH as on a QEMU guest, the kernel log
comes back as `dmesg --follow` (or the machine's console command), and the machine is
rebooted into its own kernel afterwards.

    with boot_remote(remote, name, image, release, settings, run_dir, lab_key) as guest:
        if guest.outcome.ready:
            guest.ssh.run("uname -r")

A machine that does not come back within its boot_timeout is power-cycled when the
lab has a command for it, and is a `hang` either way, in words that say what state
the machine was left in."""

from __future__ import annotations

import shlex
import subprocess
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Iterator

import paramiko

from harness.boot import BootedGuest, BootOutcome
from harness.config import GuestSettings, Remote
from harness.console import State
from harness.errors import LabError
from harness.guest import CONSOLE_LIMIT, Guest
from harness.results import write_json
from harness.ssh import Endpoint, GuestSSH, HostKeyMismatch, SSHError

IMAGE = "/tmp/bpflab-kernel"  # where the kernel under test waits on the machine
CONNECT_S = 20.0
POWER_S = 120.0  # how long a power-cycle command may take
HOME_S = 900.0  # how long a machine may take to boot its own kernel (firmware included)
DROPPED = ("BOOT_IMAGE=", "initrd=")  # the old boot's own, not the new kernel's


class RemoteConsole(Guest):
    """The machine's kernel log as console.log, watched like a QEMU console: the
    lines of `dmesg --follow` over an SSH connection of its own, or of the machine's
    console command. It ends when the stream does: the machine went down."""

    def __init__(self, run_dir: Path, name: str, console_limit: int = CONSOLE_LIMIT) -> None:
        super().__init__([], run_dir, run_dir / "no-qmp", False, console_limit)
        self.name = name
        self._close: Callable[[], object] = lambda: None

    def follow(self, ssh: GuestSSH, command: str = "dmesg --follow") -> None:
        """Start following `command`'s output on the machine (the kernel log)."""
        transport = ssh.client.get_transport() if ssh.client else None
        if transport is None:
            raise LabError(f"machine {self.name}: not connected")
        channel = transport.open_session()
        channel.exec_command(command)
        self._close = channel.close
        self._start(channel.makefile("rb"))

    def run_command(self, argv: list[str]) -> None:
        """Start the machine's console command (its stdout is the console)."""
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        self.proc = proc
        self._close = proc.kill
        assert proc.stdout is not None
        self._start(proc.stdout)

    def _start(self, lines: Iterator[bytes] | object) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.started_mono = time.monotonic()
        self._reader = threading.Thread(target=self._pump, args=(lines, time.time()),
                                        name=f"console-{self.name}", daemon=True)
        self._reader.start()

    def start(self) -> None:
        """Entering only registers it (a call-off closes the stream); following
        starts once the machine is back."""
        self.started_mono = time.monotonic()

    def stop(self, grace: float = 3.0) -> int | None:
        try:
            self._close()
        except (OSError, paramiko.SSHException):
            pass
        if self._reader is not None:
            self._reader.join(grace)
        if self.proc is not None:
            self.proc.wait()
        return None

    def returncode(self) -> int | None:
        return None

    def ended_why(self) -> str:
        return f"machine {self.name}: its kernel log stream ended (the machine went down)"

    def sysrq(self, commands: str = "wl", settle: float = 2.0) -> None:
        """Nothing to send without a console: a wedged machine's stacks are asked for
        over SSH by the caller when it still answers."""

    @property
    def pid(self) -> int:
        raise LabError(f"machine {self.name}: no local process")


class RemoteBooted(BootedGuest):
    """A machine in the lab's kernel: powering it off would leave it off; the boot's
    end reboots it into its own kernel instead."""

    def power_off(self) -> None:
        pass


def kexec_cmdline(own: str, remote: Remote, extra: tuple[str, ...]) -> str:
    """The lab kernel's command line: the lab file's, or the machine's own boot's
    (less what only its boot loader means), then the lab's additions."""
    words = list(remote.cmdline) or [w for w in own.split() if not w.startswith(DROPPED)]
    return " ".join([*words, *extra])


@contextmanager
def boot_remote(remote: Remote, name: str, kernel: Path, release: str,
                settings: GuestSettings, run_dir: Path, lab_key: Path) -> Iterator[BootedGuest]:
    """kexec machine `name` into `kernel` (whose `uname -r` is release) and yield once
    it is back on it (READY, with SSH) or is not (HANG, with what the lab did about
    it). On the way out the machine goes back to its own kernel."""
    run_dir.mkdir(parents=True, exist_ok=True)
    pinned = run_dir / "host_key.pub"
    pinned.write_text(remote.host_key + "\n")
    endpoint = Endpoint(remote.host, remote.port, remote.user, remote.key or lab_key, pinned)
    timeout = remote.boot_timeout  # a real machine's firmware and boot take their time
    own_release, old_boot, cmdline = _kexec(endpoint, name, remote, kernel, settings)
    started = time.monotonic()
    ssh = GuestSSH(endpoint)
    console = RemoteConsole(run_dir, name)
    try:
        with console:
            back = _back(ssh, started + timeout, old_boot)
            ready_s = time.monotonic() - started if back else None
            state, reason = State.READY, "SSH answered"
            if back is None:
                ready_s = None
                state, reason = State.HANG, _not_back(remote, name, timeout, endpoint, old_boot)
            elif back != release:
                state = State.HANG
                reason = (f"machine {name} came back on {back}, not on the lab's {release}: "
                          "the lab kernel did not boot there (reset or fell back)")
            if state is State.READY:
                if remote.console:
                    console.run_command(shlex.split(remote.console))
                else:
                    console.follow(ssh)
                time.sleep(1.0)  # the log so far (the boot) in before the suites
            report = console.report()
            outcome = BootOutcome(state, reason, "remote", None, ready_s, back, report.kasan,
                                  console.console_log, tuple(report.tail))
            write_json(run_dir / "outcome.json", {
                **asdict(outcome), "machine": name, "address": f"{remote.host}:{remote.port}",
                "own_release": own_release, "cmdline": cmdline})
            yield RemoteBooted(outcome, console, ssh if state is State.READY else None, None)
    finally:
        ssh.close()
        _home(endpoint, name, remote, own_release)


def _kexec(endpoint: Endpoint, name: str, remote: Remote, kernel: Path,
           settings: GuestSettings) -> tuple[str, str, str]:
    """Load kernel on the machine and jump into it; the machine's own release, its
    boot id before the jump and the command line given."""
    if not kernel.is_file():
        raise LabError(f"{kernel}: no kernel image")
    ssh = GuestSSH(endpoint)
    try:
        ssh.connect(CONNECT_S)
    except HostKeyMismatch as exc:
        raise LabError(f"machine {name}: {exc}") from None
    except SSHError as exc:
        raise LabError(f"machine {name}: not reachable before the boot ({exc})") from None
    try:
        own = ssh.run("uname -r; cat /proc/sys/kernel/random/boot_id; cat /proc/cmdline; "
                      "command -v kexec", timeout=30)
        lines = own.stdout.splitlines()
        if len(lines) < 4 or not lines[3].strip():
            raise LabError(f"machine {name}: no kexec on it (install kexec-tools)")
        release, boot_id = lines[0].strip(), lines[1].strip()
        cmdline = kexec_cmdline(lines[2], remote, settings.cmdline_extra)
        ssh.put(kernel, IMAGE)
        load = ssh.run(["kexec", "-l", IMAGE, f"--command-line={cmdline}"], timeout=120)
        if not load.ok:
            raise LabError(f"machine {name}: kexec -l refused the kernel: "
                           f"{(load.stderr or load.stdout).strip()[-300:]}")
        print(f"   machine {name}: on {release}, kexec into the lab kernel", flush=True)
        ssh.run("sync; nohup sh -c 'sleep 1; kexec -e' >/dev/null 2>&1 &", timeout=20)
    finally:
        ssh.close()
    return release, boot_id, cmdline


def _back(ssh: GuestSSH, deadline: float, old_boot: str) -> str | None:
    """The release the machine runs once it answers from a boot other than old_boot;
    None if it has not by the deadline. Leaves ssh connected when it is back."""
    while time.monotonic() < deadline:
        try:
            ssh.connect(min(5.0, max(0.5, deadline - time.monotonic())))
            now = ssh.run("uname -r; cat /proc/sys/kernel/random/boot_id", timeout=15)
            release, boot = (now.stdout.split() + ["", ""])[:2]
            if boot and boot != old_boot:
                return release
            ssh.close()  # still the old boot, on its way down
        except HostKeyMismatch:
            raise
        except SSHError:
            ssh.close()
        time.sleep(1.0)
    return None


def _not_back(remote: Remote, name: str, timeout: float, endpoint: Endpoint,
              old_boot: str) -> str:
    why = f"machine {name} did not answer SSH on the lab kernel within {timeout:.0f} s"
    if not remote.power_cycle:
        return (f"{why}, and the lab has no power_cycle command for it: it may still be "
                "running the lab's kernel, or be down; bring it back by hand")
    back = _power_cycle(remote, endpoint, old_boot)
    return f"{why}; power-cycled: {back}"


def _power_cycle(remote: Remote, endpoint: Endpoint, old_boot: str) -> str:
    """Run the machine's power-cycle command and wait (HOME_S) for it to answer again:
    from its own kernel, after its firmware."""
    try:
        done = subprocess.run(remote.power_cycle, shell=True, capture_output=True, text=True,
                              timeout=POWER_S)
    except subprocess.TimeoutExpired:
        return f"the power_cycle command ran past {POWER_S:.0f} s; the machine's state is unknown"
    if done.returncode != 0:
        return (f"the power_cycle command failed ({done.returncode}: "
                f"{(done.stderr or done.stdout).strip()[-200:]}); the machine's state is unknown")
    ssh = GuestSSH(endpoint)
    try:
        back = _back(ssh, time.monotonic() + HOME_S, old_boot)
    finally:
        ssh.close()
    return f"back on {back}" if back else f"not back within {HOME_S:.0f} s either"


def _home(endpoint: Endpoint, name: str, remote: Remote, own_release: str) -> None:
    """Back into the machine's own kernel: a reboot over SSH, the power-cycle command
    when that does not bring it back or the machine does not answer; said loudly when
    neither does. A machine that does not answer and has no power command is not
    waited for: only a person can bring it back."""
    ssh = GuestSSH(endpoint)
    boot, rebooted = "", False
    try:
        ssh.connect(10.0)
        now = ssh.run("uname -r; cat /proc/sys/kernel/random/boot_id", timeout=15)
        release, boot = (now.stdout.split() + ["", ""])[:2]
        if release == own_release:
            return  # it never left its own kernel (a failed kexec, a fallback)
        ssh.run("sync; nohup sh -c 'sleep 1; reboot -f' >/dev/null 2>&1 &", timeout=15)
        rebooted = True
    except SSHError:
        pass  # not answering: a power cycle is the only way
    finally:
        ssh.close()
    back = ""
    if rebooted:
        ssh = GuestSSH(endpoint)
        try:
            back = _back(ssh, time.monotonic() + HOME_S, boot) or ""
        finally:
            ssh.close()
        if back == own_release:
            print(f"   machine {name}: back on its own kernel {own_release}", flush=True)
            return
    how = _power_cycle(remote, endpoint, boot) if remote.power_cycle else \
        "no power_cycle command"
    if how == f"back on {own_release}":
        print(f"   machine {name}: power-cycled, back on its own kernel {own_release}",
              flush=True)
        return
    print(f"   WARNING: machine {name} is not back on its own kernel {own_release} "
          f"({'on ' + back if back else 'not answering'}; {how}): it may still run the "
          "lab's kernel", flush=True)
