"""Foreign-arch rootfs builds run guest binaries through qemu-user: make sure the
kernel's binfmt_misc knows the interpreter (the registration is lost at reboot)."""

from __future__ import annotations

import platform
from pathlib import Path

from harness.config import Arch
from harness.errors import LabError
from harness.ops import Ops

PROC = Path("/proc/sys/fs/binfmt_misc")
BINFMTS = Path("/usr/share/binfmts")


def qemu_user_name(arch: Arch) -> str:
    """qemu-system-aarch64 -> qemu-aarch64: the name qemu-user-static registers."""
    return "qemu-" + arch.qemu_binary.removeprefix("qemu-system-")


def parse_binfmts(text: str) -> dict[str, str]:
    """/usr/share/binfmts/<name> (binfmt-support's format): 'key value' lines."""
    fields = {}
    for line in text.splitlines():
        key, _, value = line.strip().partition(" ")
        if key:
            fields[key] = value.strip()
    return fields


def register_line(name: str, fields: dict[str, str]) -> str:
    """The line to write to binfmt_misc/register. F: the interpreter is opened now,
    so it works inside the chroot; P: argv[0] is preserved, as the -P wrapper wants."""
    if fields.get("offset", "0") != "0" or "magic" not in fields:
        raise LabError(f"binfmts entry {name}: only magic at offset 0 is supported")
    flags = "F" + ("P" if fields.get("preserve") == "yes" else "")
    return (f":{name}:M:0:{fields['magic']}:{fields.get('mask', '')}:"
            f"{fields['interpreter']}:{flags}")


def ensure_binfmt(arch: Arch, ops: Ops, proc: Path = PROC,
                  binfmts: Path = BINFMTS) -> bool:
    """Register arch's qemu-user interpreter when the host cannot run it natively.
    Returns True when something was registered; idempotent."""
    if arch.is_native or platform.machine() == arch.debian_arch:
        return False
    name = qemu_user_name(arch)
    if not (proc / "register").exists():
        ops.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(proc)])
    entry = proc / name
    if entry.exists() and entry.read_text().startswith("enabled"):
        return False
    source = binfmts / name
    if not source.exists():
        raise LabError(f"{source} missing: install qemu-user-static to build {arch.name}")
    fields = parse_binfmts(source.read_text())
    if entry.exists():  # registered but disabled: drop it and register ours
        entry.write_text("-1")
    (proc / "register").write_text(register_line(name, fields))
    return True
