"""The matrix end to end over fakes at its seams: the fake kbuild tree for builds, and
scripted guests (a recorded console, SSH answers) for boots. Every fault a guest can
show during the suites ends as a recorded result with the right verdict."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

import pytest

from harness import matrix as mx
from harness.accel import AccelVerdict
from harness.boot import GuestKit
from harness.config import GuestSettings, load_lab
from harness.console import State
from harness.errors import LabError, UserError
from harness.keys import LabKey
from harness.main import Session
from harness.model import Selection, Verdict
from harness.ops import Ops
from harness.rootfs import Rootfs
from harness.ssh import CommandResult, GuestDropped, SSHError
from harness.store import RunDirBusy

DATA = Path(__file__).parent / "data"
CLEAN_BOOT = DATA / "console" / "x86_64_lean_init_clean_boot.log"
PANIC_LOG = DATA / "console" / "x86_64_lkdtm_panic_mid_test.log"
PY = ("test_a.py::test_one", "test_a.py::test_two", "test_b.py::test_three")
C = ("map_in_map::spin_lock_in_inner_map", "map_in_map::timer_in_inner_map")
CATALOG = {"python": PY, "c": C}
STAMP = "2026-11-26T04:26:43.882Z +  10.822 | "


def junit_xml(cases: dict[str, str]) -> str:
    """pytest's JUnit for these test ids: '' passes, else the inner result XML."""
    rows = "".join(f'<testcase classname="{t.split("::")[0][:-3]}" name="{t.split("::")[1]}" '
                   f'time="0.1">{r}</testcase>' for t, r in cases.items())
    return f'<?xml version="1.0"?><testsuites><testsuite name="pytest">{rows}' \
           f'</testsuite></testsuites>'


def tap(names: tuple[str, ...], plan: int | None = None) -> str:
    lines = ["TAP version 13", f"1..{len(names) if plan is None else plan}"]
    lines += [f"ok {i + 1} - {n.split('::')[1]}" for i, n in enumerate(names)]
    return "\n".join(lines) + "\n"


def case_line(test: str, outcome: str = "passed") -> str:
    return "bpflab-case " + json.dumps({"test": test, "outcome": outcome, "message": "",
                                        "seconds": 0.1})


@dataclass
class Script:
    """One boot: how it comes up, and what the suites' commands do on it."""

    ready: bool = True
    junit: str = ""  # python JUnit text ('' = every requested test passes)
    pytest_exit: int = 0
    c_out: str = ""  # C stdout ('' = every requested test passes)
    c_exit: int = 0
    die_in: str = ""  # a test id: the guest dies while running it
    panic: bool = False  # ... with a kernel panic on the console
    tainted_after_python: bool = False
    fail: tuple[str, ...] = ()  # python tests that fail when requested; the rest pass


def requested(command: str, all_ids: tuple[str, ...]) -> tuple[str, ...]:
    named = [w.strip("'") for w in command.split() if "::" in w or w.startswith("'python/")]
    ids = [w.removeprefix("python/") for w in named]
    if "bpf_map_in_map" in command:
        words = command.split("bpf_map_in_map", 1)[1].split()
        return tuple(f"map_in_map::{w}" for w in words) or all_ids
    return tuple(ids) or all_ids


class FakeSSH:
    def __init__(self, script: Script, console: Path, log: list[str]) -> None:
        self.script, self.console, self.log = script, console, log
        self.tainted = False
        self.junit = ""

    def run(self, command: str, timeout: float = 60.0, check: bool = False,
            watch: object = None, limit: int = 1 << 20) -> CommandResult:
        self.log.append(command)
        if "kernel/tainted" in command:
            return CommandResult(command, 0, "32\n" if self.tainted else "0\n", "", 0.0)
        if "pytest" in command:
            return self._suite(command, requested(command, PY), "python")
        if "bpf_map_in_map" in command:
            return self._suite(command, requested(command, C), "c")
        return CommandResult(command, 0, "", "", 0.0)

    def _suite(self, command: str, ids: tuple[str, ...], suite: str) -> CommandResult:
        s = self.script
        if s.die_in in ids:
            done = ids[:ids.index(s.die_in)]
            self._console_dies(s.die_in)
            out = "\n".join(case_line(t) for t in done) if suite == "python" else \
                tap(done, plan=len(ids)).rstrip()
            err = GuestDropped(f"connection lost during {command!r}")
            err.partial = CommandResult(command, -1, out + "\n", "", 1.0)
            raise err
        if suite == "python":
            self.junit = s.junit or junit_xml(
                {t: '<failure message="scripted failure"/>' if t in s.fail else "" for t in ids})
            self.tainted = s.tainted_after_python
            return CommandResult(command, s.pytest_exit, "", "", 1.0)
        return CommandResult(command, s.c_exit, s.c_out or tap(ids), "", 1.0)

    def _console_dies(self, test: str) -> None:
        with open(self.console, "a") as fh:
            fh.write(f"{STAMP}[    9.05] bpflab: begin {test}\n")
            if self.script.panic:
                tail = PANIC_LOG.read_text().splitlines()[281:]
                fh.write("\n".join(tail) + "\n")

    def put(self, local: Path, remote: str) -> None:
        assert local.exists()

    def get(self, remote: str, local: Path) -> None:
        if not self.junit:
            raise SSHError("no such file")
        local.write_text(self.junit)


class FakeBooted:
    def __init__(self, run_dir: Path, script: Script, log: list[str]) -> None:
        self.script = script
        state = State.READY if script.ready else State.PANIC
        self.outcome = type("O", (), {"ready": script.ready, "accel": "tcg", "ssh_ready_s": 4.2,
                                      "state": state, "console_log": run_dir / "console.log",
                                      "reason": "SSH answered" if script.ready else
                                      "Kernel panic - not syncing: VFS"})()
        self.ssh = FakeSSH(script, run_dir / "console.log", log)
        self.guest = type("G", (), {"sysrq": lambda self: None})()

    def watch(self, test_timeout: float) -> Callable[[], str | None]:
        return lambda: None

    def running_test(self) -> str | None:
        return self.script.die_in or None

    def power_off(self) -> None:
        self.ssh.run("sync; poweroff -f >/dev/null 2>&1 &", timeout=10)


@dataclass
class Guests:
    """The boot seam: each boot takes the next script (the last one repeats)."""

    scripts: list[Script] = field(default_factory=lambda: [Script()])
    boots: list[Path] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    machines: list[tuple[object, tuple[str, ...]]] = field(default_factory=list)

    @contextmanager
    def __call__(self, kit: GuestKit, kernel: Path, settings: GuestSettings,
                 run_dir: Path, *, machine: object = None) -> Iterator[FakeBooted]:
        script = self.scripts[min(len(self.boots), len(self.scripts) - 1)]
        self.boots.append(run_dir)
        self.machines.append((machine, settings.cmdline_extra))
        run_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(CLEAN_BOOT, run_dir / "console.log")
        yield FakeBooted(run_dir, script, self.commands)


def fake_c_suite(workdir: Path, arch: object, vmlinux: Path, ops: object) -> Path:
    binary = workdir / "fake-csuite" / "bpf_map_in_map"
    binary.parent.mkdir(parents=True, exist_ok=True)
    binary.write_bytes(b"\x7fELF fake")
    return binary


def fake_kit(workdir: Path, arch: object, kernel: Path, settings: object,
             ops: object) -> GuestKit:
    key = LabKey(workdir / "id", workdir / "id.pub")
    rootfs = Rootfs("x", "k", workdir, workdir / "root.img", workdir / "host.pub", key, True, 0)
    return GuestKit(workdir, arch, rootfs, AccelVerdict("tcg", "test"))  # type: ignore[arg-type]


def seams(guests: Guests, **kw: object) -> mx.Seams:
    return mx.Seams(guests, kw.get("c_suite", fake_c_suite), fake_kit,  # type: ignore[arg-type]
                    CATALOG)


@pytest.fixture
def session(fake_tree: Path, tmp_path: Path) -> Session:
    lab = tmp_path / "lab.yaml"
    lab.write_text(f"workdir: {tmp_path / 'work'}\n"
                   f"source: {{git: {fake_tree}, commits: [v1, v3]}}\n"
                   "arches: [x86_64, arm64]\nbuild: {ccache: false, jobs: 1}\n"
                   "guest: {max_boots: 4}\n")
    return Session(load_lab(lab), Ops(verbose=False))


def run(session: Session, tmp_path: Path, guests: Guests, sel: Selection = Selection(),
        force: bool = False, **kw: object) -> mx.MatrixResult:
    return mx.matrix(session, tmp_path / "run", force, sel, seams(guests, **kw))


def meta(tmp_path: Path, target: str = "v1__x86_64__base") -> dict[str, object]:
    return json.loads((tmp_path / "run/targets" / target / "metadata.json").read_text())


def junit_of(tmp_path: Path, target: str = "v1__x86_64__base") -> str:
    return (tmp_path / "run/targets" / target / "junit.xml").read_text()


ONE = Selection("x86_64", None, "v1")


def test_a_clean_run_stores_every_target_with_every_test_and_is_ok(
        session: Session, tmp_path: Path) -> None:
    guests = Guests()
    result = run(session, tmp_path, guests)
    assert result.verdict is Verdict.OK and len(guests.boots) == 4
    targets = sorted(p.name for p in (tmp_path / "run/targets").iterdir())
    assert targets == ["v1__arm64__base", "v1__x86_64__base", "v3__arm64__base",
                       "v3__x86_64__base"]
    m = meta(tmp_path)
    assert m["schema"] == 2 and m["counts"] == {"pass": 6, "fail": 0, "skip": 0, "error": 0,
                                                "total": 6}
    assert 'name="timer_in_inner_map" classname="c.map_in_map"' in junit_of(tmp_path)
    assert (tmp_path / "run/index.html").exists() and (tmp_path / "run/junit.xml").exists()


def test_a_kernel_panic_during_a_test_fails_the_target_and_the_rest_runs_on_a_fresh_boot(
        session: Session, tmp_path: Path) -> None:
    guests = Guests([Script(die_in="test_a.py::test_two", panic=True), Script()])
    result = run(session, tmp_path, guests, ONE)
    assert result.verdict is Verdict.FAILED and len(guests.boots) == 2
    m = meta(tmp_path)
    assert m["stages"] == {"build": "pass", "boot": "pass", "tests": "fail"}
    assert m["counts"]["error"] == 1 and m["counts"]["pass"] == 5  # kernel-health passes
    assert m["reports"][0]["test"] == "test_a.py::test_two"
    assert m["reports"][0]["signature"].startswith(("kernel panic", "panic"))
    assert "test_a.py::test_two" in m["reason"]
    xml = junit_of(tmp_path)
    assert 'name="test_three"' in xml and 'name="timer_in_inner_map"' in xml
    # the fresh boot ran only what was left: test_three, then the C suite
    second = [c for c in guests.commands[guests.commands.index(
        next(c for c in guests.commands if "pytest" in c)) + 1:] if "pytest" in c]
    assert second and "test_three" in second[0] and "test_one" not in second[0]


def test_a_guest_killed_during_a_test_is_an_error_on_that_test_not_a_pass(
        session: Session, tmp_path: Path) -> None:
    guests = Guests([Script(die_in="map_in_map::spin_lock_in_inner_map"), Script()])
    result = run(session, tmp_path, guests, ONE)
    assert result.verdict is Verdict.FAILED
    m = meta(tmp_path)
    assert m["counts"]["error"] == 1 and m["counts"]["pass"] == 5
    assert "the guest died during this test" in junit_of(tmp_path)


def test_a_kernel_that_dies_on_every_boot_ends_with_every_test_accounted_for(
        session: Session, tmp_path: Path) -> None:
    guests = Guests([Script(die_in="test_a.py::test_one", panic=True),
                     Script(die_in="test_a.py::test_two", panic=True),
                     Script(die_in="test_b.py::test_three", panic=True),
                     Script(die_in="map_in_map::spin_lock_in_inner_map", panic=True)])
    run(session, tmp_path, guests, ONE)
    m = meta(tmp_path)
    assert len(guests.boots) == 4  # guest.max_boots
    assert m["counts"]["total"] == 6 and m["counts"]["pass"] == 1  # kernel-health only
    xml = junit_of(tmp_path)
    assert "boot budget ran out" in xml and 'name="timer_in_inner_map"' in xml


def test_a_fresh_boot_that_does_not_come_up_leaves_errors_naming_it(
        session: Session, tmp_path: Path) -> None:
    guests = Guests([Script(die_in="test_a.py::test_two", panic=True), Script(ready=False)])
    assert run(session, tmp_path, guests, ONE).verdict is Verdict.FAILED
    assert "fresh boot 2 did not come up" in junit_of(tmp_path)


@pytest.mark.parametrize(("script", "words"), [
    (Script(pytest_exit=4), "pytest exited 4 (usage error)"),
    (Script(junit=junit_xml({PY[0]: ""}).replace('time="0.1"', 'time="abc"')), "not a number"),
    (Script(junit="<testsuites><testsuite>\x1b[31m"), "not well-formed"),
    (Script(junit='<!DOCTYPE x [<!ENTITY a "aaaa">]><testsuites/>'), "DTD"),
    (Script(junit=junit_xml({})), "reported no test"),
    (Script(c_out="TAP version 13\n1..5\nok 1 - spin_lock_in_inner_map\n"), "TAP plan 1..5"),
    (Script(c_out="TAP version 13\nBail out! no root\n", c_exit=2), "bailed out"),
])
def test_a_suite_that_cannot_be_trusted_is_an_error_and_its_tests_are_not_silent(
        session: Session, tmp_path: Path, script: Script, words: str) -> None:
    result = run(session, tmp_path, Guests([script]), ONE)
    assert result.verdict is Verdict.FAILED
    xml = junit_of(tmp_path)
    assert words in xml
    assert meta(tmp_path)["counts"]["total"] >= 6  # every catalogued test has a case


def test_control_characters_in_guest_text_stay_inside_the_target(
        session: Session, tmp_path: Path) -> None:
    c_out = ("TAP version 13\n1..2\nok 1 - spin_lock_in_inner_map\n"
             "# expected \x1b[31m1\x00, observed 2\nnot ok 2 - timer_in_inner_map\n")
    raw_esc = junit_xml({PY[0]: '<failure message="red \x1b[31m"/>'})
    result = run(session, tmp_path, Guests([Script(junit=raw_esc, c_out=c_out, c_exit=1)]),
                 Selection("x86_64"))
    assert result.verdict is Verdict.FAILED
    assert sorted(p.name for p in (tmp_path / "run/targets").iterdir()) == [
        "v1__x86_64__base", "v3__x86_64__base"]  # the matrix went on
    xml = junit_of(tmp_path)
    assert "expected \\x1b[31m1\\x00, observed 2" in xml and "not well-formed" in xml
    from junitparser import JUnitXml
    assert JUnitXml.fromfile(str(tmp_path / "run/junit.xml")).tests == 14  # + python-suite


@pytest.fixture
def ctrl_c() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt, as ./lab makes sure: a shell that starts
    pytest in the background leaves SIGINT ignored."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("ctrl_c")
def test_an_interrupted_run_keeps_finished_targets_and_resumes(session: Session,
                                                               tmp_path: Path) -> None:
    class Interrupting(Guests):
        """Ctrl-C (SIGINT to the lab's main thread) while the third guest boots."""

        @contextmanager
        def __call__(self, kit: GuestKit, kernel: Path, settings: GuestSettings,
                     run_dir: Path, *, machine: object = None) -> Iterator[FakeBooted]:
            if len(self.boots) == 2:
                os.kill(os.getpid(), signal.SIGINT)
                threading.Event().wait(3)  # the boot the interrupt cuts short
                raise LabError("interrupted")
            with super().__call__(kit, kernel, settings, run_dir) as g:
                yield g
    with pytest.raises(KeyboardInterrupt):
        run(session, tmp_path, Interrupting())
    done = sorted(p.parent.name for p in (tmp_path / "run/targets").glob("*/metadata.json"))
    assert done == ["v1__arm64__base", "v1__x86_64__base"]
    again = Guests()
    assert run(session, tmp_path, again).verdict is Verdict.OK and len(again.boots) == 2
    forced = Guests()
    run(session, tmp_path, forced, Selection("x86_64"), force=True)
    assert len(forced.boots) == 2


@pytest.mark.parametrize("damage", ['{"schema": 2, "commit": ', '{"stages": {}}', "\xff\xfe",
                                    '{"schema": 1, "commit": "x"}'])
def test_unreadable_or_foreign_metadata_means_the_target_is_redone(
        session: Session, tmp_path: Path, damage: str) -> None:
    run(session, tmp_path, Guests(), ONE)
    (tmp_path / "run/targets/v1__x86_64__base/metadata.json").write_text(damage,
                                                                         errors="surrogateescape")
    again = Guests()
    assert run(session, tmp_path, again, ONE).verdict is Verdict.OK
    assert len(again.boots) == 1 and meta(tmp_path)["schema"] == 2


def test_a_second_run_on_the_same_run_directory_stops_with_one_line(
        session: Session, tmp_path: Path) -> None:
    import fcntl
    (tmp_path / "run").mkdir()
    with open(tmp_path / "run" / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write("4242\n")
        held.flush()
        with pytest.raises(RunDirBusy, match="in use by another run"):
            run(session, tmp_path, Guests(), ONE)
    assert not (tmp_path / "run/targets").exists()


def test_the_boot_budget_running_out_with_work_queued_is_an_error(
        session: Session, tmp_path: Path) -> None:
    lab = replace(session.lab, guest=replace(session.lab.guest, max_boots=1))
    guests = Guests([Script(tainted_after_python=True)])
    run(Session(lab, session.ops), tmp_path, guests, ONE)
    assert len(guests.boots) == 1
    assert "boot budget ran out (guest.max_boots = 1)" in junit_of(tmp_path)
    assert meta(tmp_path)["stages"]["tests"] == "fail"


def test_a_filter_that_matches_nothing_is_refused_naming_the_choices(
        session: Session, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="choices: base"):
        run(session, tmp_path, Guests(), Selection(None, "typo", None))
    with pytest.raises(UserError, match="not among the lab's commits"):
        run(session, tmp_path, Guests(), Selection(None, None, "v9"))
    with pytest.raises(UserError, match="unknown arch"):
        run(session, tmp_path, Guests(), Selection("riscv", None, None))


def test_guest_settings_are_part_of_the_fingerprint(session: Session, tmp_path: Path) -> None:
    run(session, tmp_path, Guests(), ONE)
    lab = replace(session.lab, guest=replace(session.lab.guest, init="systemd"))
    again = Guests()
    run(Session(lab, session.ops), tmp_path, again, ONE)
    assert len(again.boots) == 1  # not reused from the lean-init result


def test_a_hostile_commit_name_and_test_name_are_escaped_in_the_page(
        session: Session, tmp_path: Path, fake_tree: Path) -> None:
    subprocess.run(["git", "-C", str(fake_tree), "tag", "<svg/onload=alert(1)>", "v1"],
                   check=True)
    bad = '<failure message="&lt;script&gt;alert(2)&lt;/script&gt;"/>'
    run(session, tmp_path, Guests([Script(junit=junit_xml({PY[0]: bad}))]), Selection("x86_64"))
    page = (tmp_path / "run/index.html").read_text()
    assert "<svg" not in page and "<script>" not in page
    assert "&lt;svg/onload=alert(1)&gt;" in page


def test_a_c_suite_that_does_not_build_makes_its_tests_errors_and_python_still_runs(
        session: Session, tmp_path: Path) -> None:
    def no_clang(workdir: Path, arch: object, vmlinux: Path, ops: object) -> Path:
        raise LabError("C suite: clang (BPF object) failed (1)")
    guests = Guests()
    result = run(session, tmp_path, guests, ONE, c_suite=no_clang)
    assert result.verdict is Verdict.FAILED and len(guests.boots) == 1
    m = meta(tmp_path)
    assert m["counts"]["error"] == 2 and m["counts"]["pass"] == 4
    assert "the C suite did not build" in junit_of(tmp_path)


def test_a_kernel_that_does_not_boot_is_a_result_not_a_crash(session: Session,
                                                             tmp_path: Path) -> None:
    result = run(session, tmp_path, Guests([Script(ready=False)]), Selection("arm64"))
    assert result.verdict is Verdict.FAILED
    m = meta(tmp_path, "v1__arm64__base")
    assert m["stages"] == {"build": "pass", "boot": "fail", "tests": "skip"}
    assert "not run: the kernel did not boot" in junit_of(tmp_path, "v1__arm64__base")
    table = (tmp_path / "run/summary.json").read_text()
    assert "boot panic" not in table  # the summary keeps stages; the table is short
    assert m["exit_reason"] == "panic"


def test_a_target_the_lab_could_not_boot_is_a_lab_failure(session: Session,
                                                          tmp_path: Path) -> None:
    def broken(*args: object, **kwargs: object) -> object:
        raise LabError("qemu-system-x86_64: not installed")
    result = run(session, tmp_path, broken, ONE)  # type: ignore[arg-type]
    assert result.verdict is Verdict.LAB


def test_a_lab_error_on_a_fresh_boot_keeps_what_ran_and_names_the_rest(
        session: Session, tmp_path: Path) -> None:
    guests = Guests([Script(die_in="test_a.py::test_two", panic=True)])
    real = guests.__call__

    def second_fails(kit: GuestKit, kernel: Path, settings: GuestSettings,
                     run_dir: Path, *, machine: object = None) -> object:
        if guests.boots:
            raise LabError("QEMU could not bind a forwarding port in 3 tries")
        return real(kit, kernel, settings, run_dir, machine=machine)
    result = run(session, tmp_path, second_fails, ONE)  # type: ignore[arg-type]
    assert result.verdict is Verdict.LAB  # the lab could not run a boot: exit 2
    m = meta(tmp_path)
    assert m["counts"]["total"] == 6 and m["counts"]["pass"] == 2  # test_one, health
    assert "boot 2: lab error: QEMU could not bind" in junit_of(tmp_path)
    assert m["errors"] == ["boot 2: lab error: QEMU could not bind a forwarding port in 3 tries"]


def test_documentation_does_not_change_the_suites_fingerprint(tmp_path: Path) -> None:
    from harness.suites import suites_fingerprint
    shutil.copytree(Path(__file__).parents[1] / "bpf_tests", tmp_path / "suites")
    before = suites_fingerprint(tmp_path / "suites")
    (tmp_path / "suites" / "COVERAGE.md").write_text("edited\n")
    assert suites_fingerprint(tmp_path / "suites") == before
    (tmp_path / "suites" / "python" / "conftest.py").write_text("# edited\n")
    assert suites_fingerprint(tmp_path / "suites") != before


def test_an_unexpected_exception_is_exit_2_with_the_traceback_in_a_log(tmp_path: Path) -> None:
    code = ("import tasks, sys\n"
            "from invoke.exceptions import Exit\n"
            "def boom(s): raise OSError(28, 'No space left on device')\n"
            "try:\n    tasks._run('', boom)\n"
            "except Exit as e:\n    print(e.code, e.message)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).parents[1], timeout=60)
    code_, _, message = done.stdout.strip().partition(" ")
    assert code_ == "2", done.stdout + done.stderr
    assert "unexpected OSError" in message and "traceback in" in message
    log = Path(message.rsplit("traceback in ", 1)[1].rstrip(")"))
    assert "No space left on device" in log.read_text()
    log.unlink()


def test_a_profile_is_a_column_of_its_own_booted_on_its_machine(
        fake_tree: Path, tmp_path: Path) -> None:
    lab = tmp_path / "lab.yaml"
    lab.write_text(f"workdir: {tmp_path / 'work'}\n"
                   f"source: {{git: {fake_tree}, commits: [v1]}}\n"
                   "arches: [x86_64]\nprofiles: [x86_64-1cpu]\n"
                   "build: {ccache: false, jobs: 1}\nguest: {max_boots: 4}\n")
    session = Session(load_lab(lab), Ops(verbose=False))
    guests = Guests()
    assert run(session, tmp_path, guests).verdict is Verdict.OK
    targets = sorted(p.name for p in (tmp_path / "run/targets").iterdir())
    assert targets == ["v1__x86_64-1cpu__base", "v1__x86_64__base"]
    one = meta(tmp_path, "v1__x86_64-1cpu__base")
    assert one["arch"] == "x86_64" and one["profile"] == "x86_64-1cpu"
    assert meta(tmp_path)["profile"] == ""
    assert one["fingerprint"] != meta(tmp_path)["fingerprint"]
    assert sorted(getattr(m, "smp") for m, _ in guests.machines) == [1, 2]
    merged = (tmp_path / "run/junit.xml").read_text()
    assert "x86_64-1cpu" in merged
    # one kernel: the 1-vCPU machine boots the arch's own build
    assert [p.name for p in (tmp_path / "work/build").iterdir() if p.is_dir()] == \
        ["x86_64-tinyconfig"]
