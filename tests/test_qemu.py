"""qemu_argv is pure: its output is pinned by golden files (BPFLAB_REGEN=1 rewrites them)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from harness.config import load_arches
from harness.errors import UserError
from harness.qemu import Machine, free_port, kernel_cmdline, qemu_argv

GOLDEN = Path(__file__).parent / "golden"
ARCHES = {a.name: a for a in load_arches()}


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("BPFLAB_REGEN"):
        path.write_text(text)
    assert path.read_text() == text, f"{path} differs; BPFLAB_REGEN=1 to accept"


def placeholders(argv: list[str], tmp: Path) -> str:
    """One argument per line, the test's temporary directory shown as <TMP>."""
    return "".join(arg.replace(str(tmp), "<TMP>") + "\n" for arg in argv)


@pytest.mark.parametrize("arch", sorted(ARCHES))
def test_the_qemu_command_line_matches_the_golden_file(arch: str, tmp_path: Path) -> None:
    argv = qemu_argv(ARCHES[arch], tmp_path / "image", tmp_path / "rootfs.ext4",
                     ssh_port=10022, qmp_socket=tmp_path / "qmp",
                     cmdline_extra=("quiet",))
    check_golden(f"qemu_argv_{arch}.txt", placeholders(argv, tmp_path))


def test_the_root_disk_is_always_a_throwaway_snapshot(tmp_path: Path) -> None:
    argv = qemu_argv(ARCHES["x86_64"], tmp_path / "k", tmp_path / "r", ssh_port=1,
                     qmp_socket=tmp_path / "q")
    drive = argv[argv.index("-drive") + 1]
    assert "snapshot=on" in drive.split(",")


def test_ssh_is_forwarded_from_loopback_only(tmp_path: Path) -> None:
    argv = qemu_argv(ARCHES["arm64"], tmp_path / "k", tmp_path / "r", ssh_port=4567,
                     qmp_socket=tmp_path / "q")
    assert "hostfwd=tcp:127.0.0.1:4567-:22" in argv[argv.index("-netdev") + 1]


def test_a_guest_without_a_disk_has_no_drive(tmp_path: Path) -> None:
    argv = qemu_argv(ARCHES["x86_64"], tmp_path / "k", None, ssh_port=1,
                     qmp_socket=tmp_path / "q", accel="kvm", init=None)
    assert "-drive" not in argv
    assert argv[argv.index("-accel") + 1] == "kvm"
    assert "init=" not in argv[argv.index("-append") + 1]


def test_the_machine_profile_comes_from_the_arch_record(tmp_path: Path) -> None:
    argv = qemu_argv(ARCHES["arm64"], tmp_path / "k", None, ssh_port=1,
                     qmp_socket=tmp_path / "q", machine=Machine(smp=4, memory="1G"))
    assert argv[0] == "qemu-system-aarch64"
    assert argv[argv.index("-machine") + 1] == "virt"
    assert argv[argv.index("-smp") + 1] == "4"
    assert argv[argv.index("-m") + 1] == "1G"


def test_the_kernel_command_line_panics_fast_and_appends_extras_last() -> None:
    line = kernel_cmdline(ARCHES["x86_64"], "/init", ("init=/nonexistent",))
    assert line.split()[0] == "console=ttyS0"
    assert "panic=-1" in line.split()
    # the kernel honours the last init=, so an extra one overrides the default
    assert line.split()[-1] == "init=/nonexistent"


def test_an_unknown_accelerator_is_the_users_mistake(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="hvf"):
        qemu_argv(ARCHES["x86_64"], tmp_path / "k", None, ssh_port=1,
                  qmp_socket=tmp_path / "q", accel="hvf")


def test_a_free_port_can_be_bound_on_loopback() -> None:
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
    assert 1024 <= port <= 65535


def test_free_ports_picked_in_a_row_differ_while_the_first_is_held() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", free_port()))
        held.listen()
        assert free_port() != held.getsockname()[1]
