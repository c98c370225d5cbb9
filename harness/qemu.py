"""QEMU command lines as pure functions of the Arch record, plus free-port picking.

The machine (type, cpu, vCPUs, memory) is data: the arch's in kernels/arches.yaml,
a profile's in kernels/profiles.yaml; every
device here is virtio-pci, which both q35 and virt provide, so adding an arch
means adding a record, not code."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from harness.config import ACCEL_ARGS, INIT_PATHS, Arch, Profile
from harness.errors import UserError

if TYPE_CHECKING:
    from harness.emulator import Qemu

LEAN_INIT = INIT_PATHS["lean"]


# Firmware per machine type when QEMU's default is slow to get out of the way:
# SeaBIOS takes ~0.9 s under TCG before the kernel starts, qboot ~0.1 s.
# (Belongs in kernels/arches.yaml as a `firmware:` field; kept here until it is.)
FAST_FIRMWARE = {"q35": Path("/usr/share/qemu/qboot.rom")}


@dataclass(frozen=True)
class Machine:
    """Resources of one guest; the defaults are what the lab boots everywhere."""

    smp: int = 2
    memory: str = "2G"
    firmware: Path | None = None  # None: QEMU's default for the machine type
    type: str = ""  # QEMU -machine with its options; "" the arch's (arches.yaml)
    cpu: str = ""  # "" the arch's
    qemu: str = ""  # the QEMU binary; "" the arch's (arches.yaml)
    datadir: Path | None = None  # that QEMU's firmware and ROMs (-L); None its own


def machine_of(profile: Profile, qemu: Qemu | None = None) -> Machine:
    """The guest a machine profile describes, with this host's fast firmware, on the
    QEMU chosen for it (harness.emulator; None: the arch's)."""
    path = FAST_FIRMWARE.get(profile.machine.split(",")[0])
    return Machine(profile.smp, profile.memory, path if path and path.is_file() else None,
                   profile.machine, profile.cpu,
                   qemu.binary if qemu else "", qemu.datadir if qemu else None)


def fast_firmware(arch: Arch) -> Path | None:
    """The fast firmware for arch's machine type, when this host has it installed."""
    path = FAST_FIRMWARE.get(arch.machine)
    return path if path is not None and path.is_file() else None


def kernel_cmdline(arch: Arch, init: str | None = LEAN_INIT,
                   extra: Sequence[str] = ()) -> str:
    """root=/dev/vda with no initrd; panic=-1 reboots at once on a panic, and with
    -no-reboot that ends QEMU, so a dead kernel is seen in seconds, not at a timeout."""
    args = [f"console={arch.console}", "root=/dev/vda", "rw", "rootfstype=ext4",
            "panic=-1"]
    if init:
        args.append(f"init={init}")
    return " ".join([*args, *extra])


def init_path(name: str) -> str:
    if name not in INIT_PATHS:
        raise UserError(f"init {name!r}: expected one of {', '.join(INIT_PATHS)}")
    return INIT_PATHS[name]


def accel_arg(accel: str) -> str:
    if accel not in ACCEL_ARGS:
        raise UserError(f"accel {accel!r}: expected one of {', '.join(ACCEL_ARGS)}")
    return ACCEL_ARGS[accel]


def qemu_argv(arch: Arch, kernel: Path, rootfs: Path | None, *, ssh_port: int,
              qmp_socket: Path, accel: str = "tcg", init: str | None = LEAN_INIT,
              cmdline_extra: Sequence[str] = (), machine: Machine = Machine()) -> list[str]:
    """The full QEMU command line. Pure: same inputs, same argv (golden-tested).

    The console is QEMU's stdout (the Guest timestamps it); QEMU's own monitor and
    display are off, QMP listens on a unix socket for a clean 'quit'."""
    argv = [machine.qemu or arch.qemu_binary, "-nodefaults", "-no-reboot",
            *(["-L", str(machine.datadir)] if machine.datadir else []),
            "-display", "none", "-monitor", "none",
            "-machine", machine.type or arch.machine, "-cpu", machine.cpu or arch.cpu,
            "-accel", accel_arg(accel),
            "-smp", str(machine.smp), "-m", machine.memory,
            *(["-bios", str(machine.firmware)] if machine.firmware else []),
            "-kernel", str(kernel),
            "-append", kernel_cmdline(arch, init, cmdline_extra),
            "-chardev", "stdio,id=console,signal=off", "-serial", "chardev:console",
            "-qmp", f"unix:{qmp_socket},server=on,wait=off"]
    if rootfs is not None:
        # snapshot=on: guest writes go to a throwaway overlay, the image never changes
        argv += ["-drive", f"file={rootfs},if=none,id=root,format=raw,snapshot=on",
                 "-device", "virtio-blk-pci,drive=root"]
    argv += ["-netdev", f"user,id=net0,hostfwd=tcp:127.0.0.1:{ssh_port}-:22",
             "-device", "virtio-net-pci,netdev=net0",
             "-device", "virtio-rng-pci"]
    return argv


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now. QEMU binds it a moment later; if someone
    else wins the race, QEMU fails to start and the Guest retries with a new port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
