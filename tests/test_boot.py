"""The boot wait loop, with the QEMU guest and the SSH client faked at their seams:
when SSH is tried, how long each try may take, and when waiting stops."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from harness.boot import _wait
from harness.config import GuestSettings
from harness.console import ConsoleReport, State, parse, split_stamp
from harness.ssh import HostKeyMismatch, SSHError

LOGS = Path(__file__).parent / "data" / "console"


def no_pause(seconds: float) -> None:
    pass


def at(line: str) -> float:
    seconds = split_stamp(line)[0]
    assert seconds is not None
    return seconds


def stamped(name: str) -> list[str]:
    return (LOGS / name).read_text().splitlines()


@dataclass
class ScriptedGuest:
    """Replays a real console log against a fake clock that each poll advances."""

    log: list[str]
    step: float = 0.5
    exits_at_end: bool = False
    now: float = 0.0
    console_log: Path = Path("console.log")

    def elapsed(self) -> float:
        return self.now

    def visible(self) -> list[str]:
        return [line for line in self.log if at(line) <= self.now]

    def report(self) -> ConsoleReport:
        self.now += self.step
        return parse(self.visible())

    def console_closed(self) -> bool:
        return self.exits_at_end and len(self.visible()) == len(self.log)


@dataclass
class FakeSSH:
    answers_after: float | None  # guest seconds; None: never
    guest: ScriptedGuest
    timeouts: list[float] = field(default_factory=list)
    wrong_key: bool = False

    def connect(self, timeout: float = 5.0) -> None:
        self.timeouts.append(timeout)
        if self.wrong_key:
            raise HostKeyMismatch("not the pinned key")
        if self.answers_after is None or self.guest.now < self.answers_after:
            raise SSHError("Connection reset by peer")


def test_ssh_is_not_tried_before_the_kernel_runs_init() -> None:
    guest = ScriptedGuest(stamped("x86_64_lean_init_clean_boot.log"))
    ssh = FakeSSH(answers_after=9.0, guest=guest)
    verdict, ready_s = _wait(guest, ssh, GuestSettings(), no_pause)
    assert verdict.state is State.READY and ready_s is not None and ready_s >= 9.0
    init_at = next(at(line) for line in guest.log if "as init process" in line)
    assert len(ssh.timeouts) <= (guest.now - init_at) / guest.step + 1


def test_tries_are_short_until_sshd_says_it_listens() -> None:
    guest = ScriptedGuest(stamped("x86_64_lean_init_clean_boot.log"), step=0.2)
    ssh = FakeSSH(answers_after=9.5, guest=guest)
    _wait(guest, ssh, GuestSettings(), no_pause)
    assert ssh.timeouts[0] == 1.0 and ssh.timeouts[-1] == 5.0


def test_a_panicking_kernel_ends_the_wait_without_any_ssh_try() -> None:
    guest = ScriptedGuest(stamped("x86_64_no_init_panic.log"), exits_at_end=True)
    ssh = FakeSSH(answers_after=None, guest=guest)
    verdict, ready_s = _wait(guest, ssh, GuestSettings(), no_pause)
    assert verdict.state is State.PANIC and ready_s is None
    assert guest.now < 12


def test_a_silent_guest_is_a_hang_after_the_silence_timeout() -> None:
    guest = ScriptedGuest(stamped("x86_64_root_never_appears_hang.log"))
    ssh = FakeSSH(answers_after=None, guest=guest)
    verdict, _ = _wait(guest, ssh, GuestSettings(silence_timeout=10), no_pause)
    assert verdict.state is State.HANG
    assert ssh.timeouts == []


def test_a_wrong_host_key_stops_the_wait_at_once() -> None:
    guest = ScriptedGuest(stamped("x86_64_lean_init_clean_boot.log"))
    ssh = FakeSSH(answers_after=0.0, guest=guest, wrong_key=True)
    with pytest.raises(HostKeyMismatch):
        _wait(guest, ssh, GuestSettings(), no_pause)
