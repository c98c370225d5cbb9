"""The Guest process wrapper, driven with a stand-in for QEMU (a small Python script)
at the process seam: console stamping, teardown by pid, double stop."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from harness.console import parse, split_stamp
from harness.guest import Guest, stamp

CHATTY = "import time\nprint('Linux version 6.1.0', flush=True)\nprint('a\\r')\ntime.sleep(60)\n"


def fake_qemu(script: str) -> list[str]:
    return [sys.executable, "-c", script]


def wait_for(cond: object, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if callable(cond) and cond():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_console_lines_are_stamped_with_host_time_and_saved(tmp_path: Path) -> None:
    with Guest(fake_qemu(CHATTY), tmp_path, tmp_path / "qmp", verbose=False) as guest:
        wait_for(lambda: guest.report().lines == 2)
    saved = guest.console_log.read_text().splitlines()
    assert [split_stamp(line)[1] for line in saved] == ["Linux version 6.1.0", "a"]
    assert parse(saved).first_output_s is not None
    assert parse(saved).kernel_release == "6.1.0"


def test_a_guest_without_qmp_is_killed_by_its_pid_after_the_grace(tmp_path: Path) -> None:
    guest = Guest(fake_qemu(CHATTY), tmp_path, tmp_path / "no-qmp", verbose=False)
    guest.start()
    assert guest.proc is not None
    pid = guest.proc.pid
    started = time.monotonic()
    guest.stop(grace=0.5)
    assert time.monotonic() - started < 5
    assert guest.returncode() is not None
    assert not os.path.exists(f"/proc/{pid}/status") or "zombie" not in \
        Path(f"/proc/{pid}/status").read_text()


def test_the_guest_is_stopped_when_the_block_raises(tmp_path: Path) -> None:
    guest = Guest(fake_qemu(CHATTY), tmp_path, tmp_path / "qmp", verbose=False)
    try:
        with guest:
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    assert guest.returncode() is not None


def test_stopping_twice_or_never_started_is_harmless(tmp_path: Path) -> None:
    guest = Guest(fake_qemu("print('x')"), tmp_path, tmp_path / "qmp", verbose=False)
    assert guest.stop() is None
    guest.start()
    wait_for(guest.console_closed)
    assert guest.stop() == 0
    assert guest.stop() == 0


def test_the_stamp_carries_wall_time_and_seconds_since_start() -> None:
    line = stamp(0.0, 100.0, 103.25, "hello")
    assert line.startswith("1970-01-01T00:00:03.250Z")
    assert split_stamp(line) == (3.25, "hello")
