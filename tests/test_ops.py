"""Ops against real programs: output, missing tools, and child process groups that
end with an error, an interrupt, terminate_children() or the lab's own death."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Iterator

import pytest

from harness.errors import LabError
from harness.ops import TIMED_OUT, Ops

ROOT = Path(__file__).resolve().parents[1]
SLOWMAKE = Path(__file__).parent / "data" / "slowmake"
TREE = ("make", "submake", "sleep")  # top make, the sub-make doing the work, its child


def state(pid: int) -> str:
    """The process's state letter; "" once it is gone (a zombie counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return ""
    letter = stat.rpartition(")")[2].split()[0]
    return "" if letter in "ZX" else letter


def wait_for_tree(pids: Path, timeout: float = 10.0) -> dict[str, int]:
    """The pids slowmake writes, once all of them have."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        texts = {name: (pids / name).read_text() if (pids / name).exists() else ""
                 for name in TREE}
        if all(text.endswith("\n") for text in texts.values()):
            return {name: int(text) for name, text in texts.items()}
        time.sleep(0.05)
    raise AssertionError(f"slowmake did not start: {sorted(os.listdir(pids))}")


def survivors(tree: dict[str, int], within: float) -> dict[str, int]:
    deadline = time.monotonic() + within
    while True:
        alive = {name: pid for name, pid in tree.items() if state(pid)}
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


@pytest.fixture
def pids(tmp_path: Path) -> Iterator[Path]:
    """Where slowmake writes its pids; whatever a failing test left is killed here,
    by the pids slowmake reported and only while they are still in make's group."""
    where = tmp_path / "pids"
    where.mkdir()
    yield where
    recorded = {name: int(text) for name in TREE
                if (text := (where / name).read_text() if (where / name).exists() else "")
                and text.endswith("\n")}
    for pid in recorded.values():
        if state(pid) and os.getpgid(pid) == recorded.get("make"):
            os.kill(pid, signal.SIGKILL)


def read_until(stream: IO[str], prefix: str) -> list[str]:
    lines = []
    for line in stream:
        lines.append(line.strip())
        if line.startswith(prefix):
            break
    return lines


def mini_lab(pids: Path, log: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(SLOWMAKE / "mini_lab.py"), str(SLOWMAKE),
                             str(pids), str(log)], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_run_captures_stdout_and_stderr_together() -> None:
    done = Ops(verbose=False).run(["sh", "-c", "echo out; echo err >&2"])
    assert done.returncode == 0 and done.stdout.split() == ["out", "err"]


def test_a_failing_command_is_a_lab_error_with_its_output() -> None:
    with pytest.raises(LabError, match=r"command failed \(3\)[\s\S]*why"):
        Ops(verbose=False).run(["sh", "-c", "echo why; exit 3"])
    assert Ops(verbose=False).run(["sh", "-c", "exit 3"], check=False).returncode == 3


def test_a_missing_program_is_a_lab_error(tmp_path: Path) -> None:
    with pytest.raises(LabError, match="no-such-tool: not installed"):
        Ops(verbose=False).run(["no-such-tool", "--version"])
    with pytest.raises(LabError, match="no-such-tool: not installed"):
        Ops(verbose=False).stream(["no-such-tool"], tmp_path / "log")


def test_each_child_leads_its_own_process_group() -> None:
    code = "import os; print(os.getpid(), os.getpgrp(), os.getsid(0))"
    pid, pgrp, sid = map(int, Ops(verbose=False).run([sys.executable, "-c", code]).stdout.split())
    assert pid == pgrp == sid and pgrp != os.getpgrp()


@pytest.mark.parametrize("failure", [RuntimeError, KeyboardInterrupt])
def test_an_error_or_interrupt_while_streaming_ends_the_whole_make_tree(
        failure: type[BaseException], pids: Path, tmp_path: Path) -> None:
    def on_line(line: str) -> None:
        if line.strip().startswith("LD"):  # by then make, sub-make and sleep all run
            raise failure("stop")

    with pytest.raises(failure):
        Ops(verbose=False).stream(["make", "-C", str(SLOWMAKE), f"PIDS={pids}"],
                                  tmp_path / "make.log", on_line=on_line)
    assert survivors(wait_for_tree(pids), within=5.0) == {}


def test_terminate_children_ends_make_that_a_background_thread_waits_on(
        pids: Path, tmp_path: Path) -> None:
    lab = mini_lab(pids, tmp_path / "make.log")
    tree = wait_for_tree(pids)
    lab.send_signal(signal.SIGTERM)
    assert lab.stdout is not None
    said = read_until(lab.stdout, "terminated")
    # Checked while the lab may still run: its own exit would end them anyway.
    assert survivors(tree, within=3.0) == {}
    said += lab.stdout.read().splitlines()
    assert lab.wait(timeout=15) == 0
    assert f"terminated {tree['make']}" in said
    exits = [int(line.split()[-1]) for line in said if line.startswith("make exited")]
    assert len(exits) == 1 and exits[0] != 0, said  # its waiting thread saw it end


def test_a_sigkilled_lab_leaves_no_make_behind(pids: Path, tmp_path: Path) -> None:
    lab = mini_lab(pids, tmp_path / "make.log")
    tree = wait_for_tree(pids)
    lab.kill()
    lab.wait(timeout=5)
    # PDEATHSIG ends the top make at once; the watchdog ends the rest of its group
    # (a bound, not a speed target: on a host busy with guests it took over 8 s)
    assert survivors(tree, within=30.0) == {}


def test_a_command_past_its_timeout_is_ended_with_its_group_and_status_124() -> None:
    started = time.monotonic()
    done = Ops(verbose=False).run(["sh", "-c", "echo started; sleep 30 & sleep 30"],
                                  check=False, timeout=0.5)
    assert done.returncode == TIMED_OUT and time.monotonic() - started < 10
    assert done.stdout.startswith("started") and "ended after 0.5 s" in done.stdout
