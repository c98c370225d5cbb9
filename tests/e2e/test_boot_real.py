"""End to end: real kernels on the real rootfs under QEMU, reached over SSH."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import pytest

from harness.accel import probe_kvm
from harness.boot import BootedGuest
from harness.config import GuestSettings
from harness.console import State
from harness.ssh import CommandTimeout, GuestDropped, GuestSSH, HostKeyMismatch

from .conftest import ARCHES, BuiltKernel, boot_kernel, lab_kernel

pytestmark = pytest.mark.e2e
ARCH_NAMES = ["x86_64", "arm64"]


@pytest.fixture(scope="module", params=ARCH_NAMES)
def kernel(request: pytest.FixtureRequest) -> BuiltKernel:
    return lab_kernel(request.param)


@pytest.fixture(scope="module")
def guest(kernel: BuiltKernel, lab_workdir: Path) -> Iterator[BootedGuest]:
    with boot_kernel(kernel) as booted:
        yield booted


def test_the_guest_boots_to_ssh(guest: BootedGuest) -> None:
    o = guest.outcome
    assert o.state is State.READY, f"{o.reason}\n" + "\n".join(o.tail)
    assert o.first_output_s is not None and o.ssh_ready_s is not None
    assert o.first_output_s < o.ssh_ready_s


def test_the_guest_runs_the_kernel_that_was_built(guest: BootedGuest,
                                                  kernel: BuiltKernel) -> None:
    assert guest.ssh.run("uname -r", check=True).stdout.strip() == kernel.release
    assert guest.outcome.kernel_release == kernel.release


def test_the_kernel_exposes_its_btf(guest: BootedGuest) -> None:
    assert guest.ssh.run("test -s /sys/kernel/btf/vmlinux").ok


def test_the_console_shows_kasan_enabled(guest: BootedGuest) -> None:
    assert guest.outcome.kasan
    assert "KernelAddressSanitizer initialized" in guest.outcome.console_log.read_text()


def test_large_stdout_and_stderr_together_do_not_stall(guest: BootedGuest) -> None:
    # 4 MiB on each stream at once: far past any channel window
    r = guest.ssh.run("head -c 4194304 /dev/zero | tr '\\0' o & "
                      "head -c 4194304 /dev/zero | tr '\\0' e >&2; wait", timeout=120)
    assert r.ok and len(r.stdout) == 4194304 and len(r.stderr) == 4194304


def test_a_failing_command_reports_its_exit_status_and_stderr(guest: BootedGuest) -> None:
    r = guest.ssh.run(["sh", "-c", "echo oops >&2; exit 3"])
    assert (r.exit_status, r.stderr) == (3, "oops\n")


def test_a_command_past_its_timeout_raises_and_the_session_survives(
        guest: BootedGuest) -> None:
    started = time.monotonic()
    with pytest.raises(CommandTimeout):
        guest.ssh.run("sleep 30", timeout=2)
    assert time.monotonic() - started < 10
    assert guest.ssh.run("echo still here").stdout == "still here\n"


def test_files_go_both_ways_over_sftp(guest: BootedGuest, tmp_path: Path) -> None:
    (tmp_path / "up").write_bytes(bytes(range(256)) * 1000)
    guest.ssh.put(tmp_path / "up", "/tmp/up")
    guest.ssh.get("/tmp/up", tmp_path / "down")
    assert (tmp_path / "down").read_bytes() == (tmp_path / "up").read_bytes()


def test_a_guest_presenting_another_host_key_is_refused(guest: BootedGuest) -> None:
    # the lab's client key stands in for an impostor's host key: valid, but not pinned
    impostor = replace(guest.ssh.endpoint, host_key_file=guest.rootfs.lab_key.public)
    with pytest.raises(HostKeyMismatch):
        GuestSSH(impostor).connect(timeout=10)


def test_the_root_disk_image_is_left_unchanged(guest: BootedGuest) -> None:
    before = guest.rootfs.image.stat().st_mtime
    guest.ssh.run("echo scribble > /root/scribble && sync", check=True)
    assert guest.rootfs.image.stat().st_mtime == before


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_a_kernel_that_cannot_start_init_is_a_panic_within_seconds(
        arch: str, lab_workdir: Path) -> None:
    kernel = lab_kernel(arch)
    options = GuestSettings(cmdline_extra=("init=/nonexistent",), boot_timeout=120)
    started = time.monotonic()
    with boot_kernel(kernel, options) as booted:
        o = booted.outcome
    assert o.state is State.PANIC, o.reason
    assert "/nonexistent" in o.reason or "No working init" in o.reason
    assert time.monotonic() - started < 45


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_a_guest_that_crashes_mid_command_raises_guest_dropped(
        arch: str, lab_workdir: Path) -> None:
    kernel = lab_kernel(arch)
    with boot_kernel(kernel) as booted:
        assert booted.outcome.ready, booted.outcome.reason
        with pytest.raises(GuestDropped):
            booted.ssh.run("echo c > /proc/sysrq-trigger; sleep 30", timeout=60)
        assert booted.console().state is State.PANIC


def test_the_kvm_probe_reaches_a_verdict_within_fifteen_seconds(
        lab_workdir: Path, tmp_path: Path) -> None:
    native = [a for a in ARCHES.values() if a.is_native]
    if not native:
        pytest.skip("no arch in kernels/arches.yaml runs natively here")
    kernel = lab_kernel(native[0].name)
    started = time.monotonic()
    verdict = probe_kvm(kernel.arch, kernel.image, tmp_path)
    assert time.monotonic() - started < 15
    assert verdict.accel in ("kvm", "tcg") and verdict.reason


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_a_kernel_waiting_forever_for_its_root_is_a_hang_after_the_silence(
        arch: str, lab_workdir: Path) -> None:
    kernel = lab_kernel(arch)
    options = GuestSettings(cmdline_extra=("root=/dev/nonexistent", "rootwait"),
                          silence_timeout=10)
    with boot_kernel(kernel, options) as booted:
        o = booted.outcome
    assert o.state is State.HANG, o.reason
    assert "silent" in o.reason
    if kernel.arch.machine == "q35":  # a PS/2 keyboard to send Alt+SysRq through
        assert "Show Blocked State" in o.console_log.read_text()


@pytest.mark.full  # a systemd boot takes minutes under TCG
@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_the_stock_systemd_boot_reaches_ssh_too(arch: str, lab_workdir: Path) -> None:
    kernel = lab_kernel(arch)
    options = GuestSettings(init="systemd", boot_timeout=180, silence_timeout=60)
    with boot_kernel(kernel, options) as booted:
        assert booted.outcome.ready, booted.outcome.reason
        assert booted.ssh.run("systemctl is-system-running --wait; true").stdout.strip() \
            in ("running", "degraded")
