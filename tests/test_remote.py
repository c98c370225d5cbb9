"""The remote kind's decisions against a fake machine at the SSH seam: what it runs
there, when it counts as back, and the words for a machine that is not."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from harness import remote
from harness.config import GuestSettings, Remote
from harness.console import State
from harness.errors import LabError
from harness.ssh import CommandResult, SSHError

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH0lJ3v7ZK2bD5a1r7Q2c1J8cQp7V2o0Tt1Y7m3x0e1f"


class Box:
    """A machine: its kernel, its boot, and what a kexec -e or a reboot makes of it."""

    def __init__(self, kexec: bool = True, lab_boots: bool = True) -> None:
        self.release, self.boot, self.kexec, self.lab_boots = "6.1.0-57-amd64", "b0", kexec, lab_boots
        self.up, self.loaded, self.commands = True, "", []  # type: tuple[bool, str, list[str]]
        self.boots = 0

    def next_boot(self, release: str | None) -> None:
        self.boots += 1
        self.boot = f"b{self.boots}"
        self.up = release is not None
        self.release = release or self.release


class FakeSSH:
    box: Box

    def __init__(self, endpoint: Any) -> None:
        self.endpoint, self.client = endpoint, None

    def connect(self, timeout: float = 5.0) -> None:
        if not self.box.up:
            raise SSHError("connection refused")

    def run(self, command: Any, timeout: float = 60.0, check: bool = False) -> CommandResult:
        box, text = self.box, command if isinstance(command, str) else " ".join(command)
        box.commands.append(text)
        out = ""
        if text.startswith("uname -r; cat /proc/sys/kernel/random/boot_id; cat /proc/cmdline"):
            out = f"{box.release}\n{box.boot}\nroot=/dev/sda1 ro\n" + \
                ("/usr/sbin/kexec\n" if box.kexec else "\n")
        elif text.startswith("uname -r; cat /proc/sys/kernel/random/boot_id"):
            out = f"{box.release}\n{box.boot}\n"
        elif text.startswith("kexec -l"):
            box.loaded = text
        elif "kexec -e" in text:
            box.next_boot("6.1.192" if box.lab_boots else None)
        elif "reboot -f" in text:
            box.next_boot("6.1.0-57-amd64")
        return CommandResult(text, 0, out, "", 0.0)

    def put(self, local: Path, remote_path: str) -> None:
        self.box.commands.append(f"put {remote_path}")

    def close(self) -> None:
        pass


@pytest.fixture
def box(monkeypatch: pytest.MonkeyPatch) -> Box:
    made = Box()
    FakeSSH.box = made
    monkeypatch.setattr(remote, "GuestSSH", FakeSSH)
    monkeypatch.setattr("harness.remote.time.sleep", lambda s: None)
    monkeypatch.setattr(remote.RemoteConsole, "follow", lambda self, ssh, command="": None)
    return made


def boot(tmp_path: Path, r: Remote, **kw: Any) -> Any:
    image = tmp_path / "image"
    image.write_bytes(b"bzImage")
    return remote.boot_remote(r, "box", image, "6.1.192", GuestSettings(**kw), tmp_path / "g",
                              tmp_path / "key")


def machine(**kw: Any) -> Remote:
    return Remote(**{"host": "h", "port": 22, "user": "root", "host_key": KEY, "key": None,
                     "boot_timeout": 30.0, "cmdline": (), **kw})


def test_the_machine_is_kexeced_with_its_own_command_line_and_comes_back_ready(
        box: Box, tmp_path: Path) -> None:
    with boot(tmp_path, machine(), cmdline_extra=("kasan_multi_shot",)) as guest:
        assert guest.outcome.state is State.READY and guest.outcome.kernel_release == "6.1.192"
        assert guest.outcome.accel == "remote"
        guest.power_off()  # a real machine is never powered off
    assert "--command-line=root=/dev/sda1 ro kasan_multi_shot" in box.loaded
    assert box.commands.count("put /tmp/bpflab-kernel") == 1
    assert box.release == "6.1.0-57-amd64" and box.boots == 2  # rebooted home


def test_a_machine_without_kexec_is_a_lab_error(box: Box, tmp_path: Path) -> None:
    box.kexec = False
    with pytest.raises(LabError, match="no kexec on it"):
        with boot(tmp_path, machine()):
            pass


def test_a_machine_back_on_its_own_kernel_says_the_lab_kernel_did_not_boot(
        box: Box, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = FakeSSH.run

    def falls_back(self: FakeSSH, command: Any, **kw: Any) -> CommandResult:
        if isinstance(command, str) and "kexec -e" in command:
            self.box.next_boot("6.1.0-57-amd64")  # the watchdog, the firmware's default
            return CommandResult(command, 0, "", "", 0.0)
        return real(self, command, **kw)
    monkeypatch.setattr(FakeSSH, "run", falls_back)
    with boot(tmp_path, machine()) as guest:
        assert guest.outcome.state is State.HANG
        assert "came back on 6.1.0-57-amd64, not on the lab's 6.1.192" in guest.outcome.reason


def test_a_machine_that_does_not_come_back_is_a_hang_in_words_that_say_where_it_is(
        box: Box, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    box.lab_boots = False
    clock = iter(range(0, 10**6, 7))
    monkeypatch.setattr("harness.remote.time.monotonic", lambda: float(next(clock)))
    with boot(tmp_path, machine()) as guest:
        assert guest.outcome.state is State.HANG
        assert "did not answer SSH on the lab kernel within 30 s, and the lab has no " \
            "power_cycle command for it: it may still be running the lab's kernel" in \
            guest.outcome.reason
    assert "WARNING: machine box is not back on its own kernel" in capsys.readouterr().out


def test_a_machine_that_does_not_come_back_is_power_cycled_home(
        box: Box, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    box.lab_boots = False
    clock = iter(range(0, 10**6, 7))
    monkeypatch.setattr("harness.remote.time.monotonic", lambda: float(next(clock)))
    cycled: list[str] = []

    def power(cmd: str, **kw: Any) -> Any:
        cycled.append(cmd)
        box.next_boot("6.1.0-57-amd64")
        return type("Done", (), {"returncode": 0, "stdout": "", "stderr": ""})()
    monkeypatch.setattr("harness.remote.subprocess.run", power)
    with boot(tmp_path, machine(power_cycle="pdu --outlet 3 cycle")) as guest:
        assert guest.outcome.reason.endswith("power-cycled: back on 6.1.0-57-amd64")
    assert cycled == ["pdu --outlet 3 cycle"] and box.release == "6.1.0-57-amd64"


def test_a_console_command_is_followed_into_console_log_and_watched(tmp_path: Path) -> None:
    console = remote.RemoteConsole(tmp_path, "box")
    with console:
        console.run_command(["printf", "[    1.0] Linux version 6.1.192 (x)\\n"
                             "[    2.0] bpflab: begin t.py::test_a\\n"])
        deadline = time.monotonic() + 10
        while not console.console_closed() and time.monotonic() < deadline:
            time.sleep(0.05)
    assert console.console_closed()
    assert console.report().kernel_release == "6.1.192"
    running = console.running_test()
    assert running is not None and running[0] == "t.py::test_a"
    assert "bpflab: begin t.py::test_a" in (tmp_path / "console.log").read_text()
    assert console.ended_why().startswith("machine box: its kernel log stream ended")
