"""Console classification on real console logs recorded from the lab's own boots
(tests/data/console/<scenario>.log)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.console import State, classify, parse, parse_file, split_stamp

LOGS = Path(__file__).parent / "data" / "console"


def verdict(name: str, *, now_s: float, exited: bool = False, ssh_ready: bool = False,
            silence: float = 30.0, ready: float = 90.0) -> State:
    report = parse_file(LOGS / name)
    return classify(report, now_s=now_s, exited=exited, ssh_ready=ssh_ready,
                    silence_limit_s=silence, ready_limit_s=ready).state


@pytest.mark.parametrize(("arch", "release"), [("x86_64", "6.1.192+"), ("arm64", "6.1.192")])
def test_a_clean_boot_yields_release_kasan_init_and_sshd_facts(arch: str, release: str) -> None:
    report = parse_file(LOGS / f"{arch}_lean_init_clean_boot.log")
    assert report.kernel_release == release
    assert report.kasan
    assert report.init == "/usr/sbin/bpflab-init"
    assert report.sshd_started
    assert report.bug is None and not report.panic
    assert report.first_output_s is not None and 0 < report.first_output_s < 10
    assert report.last_output_s is not None and report.last_output_s > report.first_output_s


def test_a_clean_boot_with_ssh_answering_is_ready() -> None:
    assert verdict("x86_64_lean_init_clean_boot.log", now_s=9.0, ssh_ready=True) is State.READY


def test_a_clean_boot_before_ssh_answers_is_still_booting() -> None:
    assert verdict("x86_64_lean_init_clean_boot.log", now_s=9.0) is State.BOOTING


@pytest.mark.parametrize("log", ["x86_64_init_exits_panic.log",
                                 "x86_64_init_exits_panic_truncated.log"])
def test_a_panic_at_boot_is_a_panic_even_when_the_log_is_cut(log: str) -> None:
    report = parse_file(LOGS / log)
    assert report.panic
    assert report.bug is not None and "Attempted to kill init" in report.bug
    assert verdict(log, now_s=10.0, exited=True) is State.PANIC


def test_a_crash_beats_ssh_answering() -> None:
    assert verdict("x86_64_init_exits_panic.log", now_s=10.0, ssh_ready=True) is State.PANIC


def test_the_tail_ends_with_the_last_line_the_guest_printed() -> None:
    log = LOGS / "x86_64_init_exits_panic.log"
    report = parse_file(log, tail=5)
    assert len(report.tail) == 5
    assert report.tail[-1] == split_stamp(log.read_text().splitlines()[-1])[1]


def test_a_console_gone_quiet_without_ssh_is_a_hang_once_silence_runs_out() -> None:
    log = "x86_64_systemd_network_never_up.log"
    last = parse_file(LOGS / log).last_output_s
    assert last is not None
    assert verdict(log, now_s=last + 10) is State.BOOTING
    assert verdict(log, now_s=last + 31) is State.HANG


def test_no_ssh_by_the_deadline_is_a_hang_even_with_a_chatty_console() -> None:
    log = "x86_64_systemd_network_never_up.log"
    last = parse_file(LOGS / log).last_output_s
    assert last is not None
    assert verdict(log, now_s=last + 1, ready=last) is State.HANG


def test_a_log_cut_mid_line_with_garbage_parses_without_error() -> None:
    report = parse_file(LOGS / "x86_64_boot_cut_short.log")
    assert report.lines == 121
    assert report.kernel_release == "6.1.192+" and report.init is None
    assert verdict("x86_64_boot_cut_short.log", now_s=4.0, exited=True) is State.EXITED


def test_a_missing_log_is_an_empty_report_and_no_output_is_a_hang() -> None:
    report = parse_file(LOGS / "does-not-exist.log")
    assert report.lines == 0 and report.first_output_s is None
    v = classify(report, now_s=31.0, exited=False, ssh_ready=False, silence_limit_s=30.0,
                 ready_limit_s=90.0)
    assert v.state is State.HANG and "no console output" in v.reason


def test_unstamped_lines_are_parsed_too() -> None:
    report = parse(["[    0.000000] Linux version 6.1.0 (x)", "Kernel panic - not syncing: x"])
    assert report.kernel_release == "6.1.0" and report.panic
    assert report.first_output_s is None
    assert split_stamp("plain") == (None, "plain")


@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_a_missing_init_is_a_panic_naming_the_init(arch: str) -> None:
    report = parse_file(LOGS / f"{arch}_no_init_panic.log")
    assert report.bug is not None and "Requested init /nonexistent failed" in report.bug
    assert report.init == "/nonexistent"  # tried, and failed at once
    assert verdict(f"{arch}_no_init_panic.log", now_s=6.0, exited=True) is State.PANIC


def test_waiting_forever_for_the_root_disk_is_a_hang_not_a_panic() -> None:
    log = "x86_64_root_never_appears_hang.log"
    report = parse_file(LOGS / log)
    assert report.bug is None and report.tail[-1].endswith("Waiting for root device "
                                                           "/dev/nonexistent...")
    assert report.last_output_s is not None
    assert verdict(log, now_s=report.last_output_s + 5) is State.BOOTING
    assert verdict(log, now_s=report.last_output_s + 31) is State.HANG


def test_the_stack_dumps_taken_from_a_hung_guest_are_not_mistaken_for_a_crash() -> None:
    report = parse_file(LOGS / "x86_64_root_never_appears_hang_sysrq.log")
    assert any("Show Blocked State" in line for line in
               (LOGS / "x86_64_root_never_appears_hang_sysrq.log").read_text().splitlines())
    assert report.bug is None and not report.panic


def test_a_report_the_kernel_survives_at_boot_does_not_decide_the_boot() -> None:
    # The lab's 6.1 kernels have printed, once in many boots, an early KASAN
    # wild-memory-access and booted on: a report to tie to the boot, not a panic.
    clean = (LOGS / "x86_64_lean_init_clean_boot.log").read_text().splitlines()
    uaf = (LOGS / "x86_64_uaf_inject_map_in_map.log").read_text().splitlines()
    start = next(i for i, line in enumerate(uaf) if "BUG: KASAN:" in line)
    at = next(i for i, line in enumerate(clean) if "as init process" in line)
    log = clean[:at] + uaf[start - 1:start + 40] + clean[at:]
    report = parse(log)
    assert report.bug is not None and "KASAN" in report.bug and not report.panic
    state = classify(report, now_s=9.0, exited=False, ssh_ready=True, silence_limit_s=30,
                     ready_limit_s=90).state
    assert state is State.READY


def test_a_panic_is_named_by_its_panic_line_even_after_an_earlier_report() -> None:
    uaf = (LOGS / "x86_64_uaf_inject_map_in_map.log").read_text().splitlines()
    start = next(i for i, line in enumerate(uaf) if "BUG: KASAN:" in line)
    panic = (LOGS / "x86_64_init_exits_panic.log").read_text().splitlines()
    verdict = classify(parse(uaf[start - 1:start + 40] + panic), now_s=20.0, exited=True,
                       ssh_ready=False, silence_limit_s=30, ready_limit_s=90)
    assert verdict.state is State.PANIC
    assert verdict.reason.endswith("Kernel panic - not syncing: Attempted to kill init! "
                                   "exitcode=0x00000100")
