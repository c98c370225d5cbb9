"""invoke boot / invoke ssh: a guest for a person. boot builds (cached) and boots one
target, records where its SSH answers in <workdir>/guests/<arch>.json, then opens a
shell, runs one command, or waits; ssh reaches a guest that boot left running."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from dataclasses import dataclass, replace
from pathlib import Path

from harness.boot import BootedGuest, boot, prepare_kit
from harness.config import GuestSettings, shared_cache
from harness.errors import LabError, UserError
from harness.main import Session
from harness.model import Selection, Target, TaskResult, Verdict
from harness.ssh import Endpoint, GuestSSH
from harness.model import Status
from harness.qemu import machine_of
from harness.emulator import qemu_for
from harness.results import write_json


@dataclass(frozen=True)
class Reach:
    """Everything a client needs to log into a running guest, as written to disk."""

    arch: str
    target: str
    port: int
    key: Path
    host_key: Path
    known_hosts: Path
    qemu_pid: int
    console: Path

    def endpoint(self) -> Endpoint:
        return Endpoint("127.0.0.1", self.port, "root", self.key, self.host_key)


def ssh_argv(reach: Reach, command: str = "") -> list[str]:
    """OpenSSH for an interactive session: the lab key, the pinned host key, nothing
    else trusted (no agent, no user known_hosts, no password prompt)."""
    argv = ["ssh", "-p", str(reach.port), "-i", str(reach.key), "-o", "IdentitiesOnly=yes",
            "-o", f"UserKnownHostsFile={reach.known_hosts}", "-o", "StrictHostKeyChecking=yes",
            "-o", "GlobalKnownHostsFile=/dev/null", "-o", "PasswordAuthentication=no",
            "-o", "LogLevel=ERROR", "root@127.0.0.1"]
    return argv + ([command] if command else [])


def known_hosts_line(port: int, host_key: Path) -> str:
    kind, data = host_key.read_text().split()[:2]
    return f"[127.0.0.1]:{port} {kind} {data}\n"


def guests_dir(session: Session) -> Path:
    return session.lab.workdir / "guests"


def pick_target(session: Session, arch: str, commit: str | None, variant: str) -> Target:
    """The newest commit of the history unless one is named; one arch, one variant."""
    return session.targets(Selection(arch, variant, commit))[-1]


def boot_task(session: Session, arch: str, commit: str | None, variant: str,
              settings: GuestSettings, command: str, wait: bool) -> TaskResult:
    target = pick_target(session, arch, commit, variant)
    if target.machine.remote is not None:
        raise UserError(f"--arch {target.column}: a real machine (lab machines:), not a "
                        "guest to boot here; ./lab matrix --arch it runs the suites there")
    result = session.builder().build(target)
    if result.status is not Status.PASS or result.image is None:
        print("\n".join((f"build failed: {result.log}", *result.errors)))
        return TaskResult(Verdict.FAILED)
    kit = prepare_kit(session.lab.workdir, target.arch, result.image, settings, session.ops)
    settings = replace(settings, cmdline_extra=settings.cmdline_extra + target.machine.cmdline)
    with boot(kit, result.image, settings, ops=session.ops,
              machine=machine_of(target.machine, qemu_for(session.ops, target.machine,
                                                            shared_cache()))) as guest:
        o = guest.outcome
        print(f"boot: {o.state.value} ({o.reason}); accel {o.accel}, first output "
              f"{_secs(o.first_output_s)}, ssh {_secs(o.ssh_ready_s)}, kernel "
              f"{o.kernel_release}, KASAN {'on' if o.kasan else 'off'}\n"
              f"console: {o.console_log}", flush=True)
        if not o.ready:
            print("\n".join(o.tail))
            return TaskResult(Verdict.FAILED)
        reach = _publish(session, target, guest)
        try:
            return _use(guest, reach, command, wait)
        finally:
            (guests_dir(session) / f"{target.column}.json").unlink(missing_ok=True)


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def _publish(session: Session, target: Target, guest: BootedGuest) -> Reach:
    assert guest.rootfs is not None  # a QEMU guest of the lab's own image
    where = guests_dir(session)
    where.mkdir(parents=True, exist_ok=True)
    port = guest.ssh.endpoint.port
    known = where / f"{target.column}.known_hosts"
    known.write_text(known_hosts_line(port, guest.rootfs.host_key))
    reach = Reach(target.column, target.label, port, guest.rootfs.lab_key.private,
                  guest.rootfs.host_key, known, guest.guest.pid, guest.outcome.console_log)
    write_json(where / f"{target.column}.json",
               {k: str(v) if isinstance(v, Path) else v for k, v in reach.__dict__.items()})
    print(f"guest {target.label} on 127.0.0.1:{port}; from another terminal: "
          f"./lab ssh --arch {target.column}", flush=True)
    return reach


def _use(guest: BootedGuest, reach: Reach, command: str, wait: bool) -> TaskResult:
    if command:
        done = guest.ssh.run(command, timeout=3600)
        sys.stdout.write(done.stdout)
        sys.stderr.write(done.stderr)
        return TaskResult(Verdict.OK, done.exit_status)
    if wait or not sys.stdin.isatty():
        print("guest running; Ctrl-C (or SIGTERM) powers it off", flush=True)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            while not stop.wait(1.0) and guest.guest.returncode() is None:
                pass
        except KeyboardInterrupt:
            pass
        return TaskResult(Verdict.OK)
    import subprocess  # an interactive shell: OpenSSH handles the terminal best
    return TaskResult(Verdict.OK, subprocess.call(ssh_argv(reach)))


def load_reach(session: Session, arch: str | None) -> Reach:
    where = guests_dir(session)
    files = sorted(where.glob(f"{arch}.json" if arch else "*.json"))
    if not files:
        raise UserError(f"no running guest{' for ' + arch if arch else ''} "
                        f"(none recorded in {where}); start one with ./lab boot --arch ARCH")
    if len(files) > 1:
        names = ", ".join(f.stem for f in files)
        raise UserError(f"several guests are running ({names}): choose one with --arch")
    raw = json.loads(files[0].read_text())
    reach = Reach(raw["arch"], raw["target"], int(raw["port"]), Path(raw["key"]),
                  Path(raw["host_key"]), Path(raw["known_hosts"]), int(raw["qemu_pid"]),
                  Path(raw["console"]))
    if not _alive(reach.qemu_pid):
        files[0].unlink(missing_ok=True)
        raise UserError(f"the {reach.arch} guest ({reach.target}) is gone: QEMU pid "
                        f"{reach.qemu_pid} no longer runs")
    return reach


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def ssh_task(session: Session, arch: str | None, command: str) -> TaskResult:
    reach = load_reach(session, arch)
    if not command:
        os.execvp("ssh", ssh_argv(reach))
    client = GuestSSH(reach.endpoint())
    try:
        client.connect(timeout=10)
        done = client.run(command, timeout=3600)
    except LabError as exc:
        print(f"ssh to {reach.target}: {exc}", file=sys.stderr)
        return TaskResult(Verdict.LAB)
    finally:
        client.close()
    sys.stdout.write(done.stdout)
    sys.stderr.write(done.stderr)
    return TaskResult(Verdict.OK, done.exit_status)
