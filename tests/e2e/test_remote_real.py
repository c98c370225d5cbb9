"""End to end for real machines over SSH (lab `machines:`), with a QEMU guest playing
the machine: Debian's stock kernel and initramfs, kexec-tools, sshd with a key of its
own (tests/e2e/machine). The lab kexecs it into the default lab's 6.1.192 x86_64
kernel, runs both suites over SSH, reads the kernel log with `dmesg --follow`, and
reboots it back into its own kernel. Then a kernel that never comes back: once with a
power-cycle command (QMP system_reset, as a PDU would), once without one."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from harness import matrix
from harness.config import load_arches, load_lab
from harness.guest import Guest
from harness.main import Session
from harness.model import Selection, Verdict
from harness.ops import Ops
from harness.qemu import free_port, qemu_argv
from harness.rootfs import ensure_rootfs
from harness.ssh import Endpoint, GuestSSH

pytestmark = [pytest.mark.e2e, pytest.mark.full]
PROJECT = Path(__file__).resolve().parents[2]
X86 = {a.name: a for a in load_arches()}["x86_64"]
RESET = ("import json, socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); "
         "f = s.makefile('rw'); f.readline(); "
         "[(f.write(json.dumps({'execute': c}) + '\\n'), f.flush(), f.readline()) "
         "for c in ('qmp_capabilities', 'system_reset')]")


class Machine:
    """The QEMU guest playing a machine the user already has."""

    def __init__(self, tmp: Path) -> None:
        workdir = load_lab().workdir / "e2e-machine"  # its own key, its own image
        self.rootfs = ensure_rootfs(workdir, X86, Ops(), PROJECT / "tests/e2e/machine")
        self.key = self.rootfs.lab_key.private
        boot = tmp / "boot"
        boot.mkdir()
        listed = subprocess.run(["debugfs", "-R", "ls /boot", str(self.rootfs.image)],
                                check=True, capture_output=True, text=True).stdout.split()
        for name in ("vmlinuz", "initrd.img"):  # the stock kernel, from the image
            [found] = [f for f in listed if f.startswith(f"{name}-")]
            subprocess.run(["debugfs", "-R", f"dump /boot/{found} {boot / name}",
                            str(self.rootfs.image)], check=True, capture_output=True)
        self.port, self.qmp = free_port(), tmp / "machine.qmp"
        argv = qemu_argv(X86, boot / "vmlinuz", self.rootfs.image, ssh_port=self.port,
                         qmp_socket=self.qmp, init=None, cmdline_extra=("net.ifnames=0",))
        argv.remove("-no-reboot")  # a machine's reset boots its own kernel again
        at = argv.index("-kernel") + 2
        self.argv = argv[:at] + ["-initrd", str(boot / "initrd.img")] + argv[at:]
        self.guest = Guest(self.argv, tmp / "machine", self.qmp, verbose=False)

    def endpoint(self) -> Endpoint:
        return Endpoint("127.0.0.1", self.port, "root", self.key, self.rootfs.host_key)

    def release(self, within: float = 300) -> str:
        ssh = GuestSSH(self.endpoint())
        ssh.connect_until(time.monotonic() + within, lambda: not self.guest.console_closed())
        try:
            return ssh.run("uname -r", check=True).stdout.strip()
        finally:
            ssh.close()

    def entry(self, name: str, **more: object) -> dict[str, object]:
        return {"name": name, "arch": "x86_64", "address": f"127.0.0.1:{self.port}",
                "host_key": self.rootfs.host_key.read_text().strip(), "key": str(self.key),
                **more}


@pytest.fixture(scope="module")
def machine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Machine]:
    m = Machine(tmp_path_factory.mktemp("machine"))
    with m.guest:
        m.own = m.release()  # type: ignore[attr-defined]
        yield m


def lab_for(tmp: Path, machines: list[dict[str, object]], name: str) -> Path:
    lab = yaml.safe_load((PROJECT / "lab.yaml").read_text())
    lab.update(workdir=str(load_lab().workdir), arches=[], machines=machines,
               variants=[{"name": "base"}])
    lab["source"]["debian"]["versions"] = ["6.1.192"]
    lab["build"]["fragments"] = [str(PROJECT / f) for f in lab["build"]["fragments"]]
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(lab, sort_keys=False))
    return path


def run(path: Path, run_dir: Path) -> tuple[Verdict, dict[str, Any]]:
    result = matrix.matrix(Session(load_lab(path), Ops()), run_dir, False, Selection())
    [target] = list((run_dir / "targets").iterdir())
    return result.verdict, json.loads((target / "metadata.json").read_text())


def test_the_lab_kexecs_a_machine_runs_both_suites_and_brings_it_home(
        machine: Machine, tmp_path: Path) -> None:
    own = machine.own  # type: ignore[attr-defined]
    assert own.endswith("-amd64")  # Debian's stock kernel
    verdict, meta = run(lab_for(tmp_path, [machine.entry("kexec-box")], "box"), tmp_path / "run")
    assert verdict is Verdict.OK, meta
    assert meta["profile"] == "kexec-box" and meta["kernel_release"] == "6.1.192", meta
    assert meta["counts"]["pass"] == meta["counts"]["total"] > 30, meta["counts"]
    target = tmp_path / "run/targets/v6.1.192__kexec-box__base"
    outcome = json.loads((target / "guest/outcome.json").read_text())
    assert outcome["state"] == "ready" and outcome["accel"] == "remote"
    assert outcome["own_release"] == own
    junit = (target / "junit.xml").read_text()
    assert 'classname="c.map_in_map"' in junit and "test_map_in_map_basic" in junit
    # the kernel log came back over SSH: the boot, and the suites' kmsg markers
    console = (target / "console.log").read_text(errors="replace")
    assert "Linux version 6.1.192" in console and "bpflab: begin " in console
    assert machine.release() == own  # rebooted into its own kernel


def test_a_machine_that_never_comes_back_is_a_hang_and_the_run_goes_on(
        machine: Machine, tmp_path: Path) -> None:
    own = machine.own  # type: ignore[attr-defined]
    # the lab kernel panics for want of an init and, with panic=0, stays there
    dead = ["root=/dev/vda", "rw", "console=ttyS0", "init=/nonexistent", "panic=0"]
    reset = f"{sys.executable} -c \"{RESET}\" {machine.qmp}"
    started = time.monotonic()
    verdict, meta = run(lab_for(tmp_path, [machine.entry(
        "cycled-box", cmdline=dead, boot_timeout=60, power_cycle=reset)], "cycled"),
        tmp_path / "cycled")
    assert verdict is Verdict.FAILED, meta
    assert "did not answer SSH on the lab kernel within 60 s; power-cycled: back on " \
        f"{own}" in meta["reason"], meta["reason"]
    assert machine.release() == own
    # no power command: the lab says so and what state the machine may be in
    verdict, meta = run(lab_for(tmp_path, [machine.entry(
        "lost-box", cmdline=dead, boot_timeout=60)], "lost"), tmp_path / "lost")
    assert verdict is Verdict.FAILED
    assert "no power_cycle command for it: it may still be running the lab's kernel" in \
        meta["reason"], meta["reason"]
    assert time.monotonic() - started < 900  # classified, never a run that hangs
