"""KASAN reports once per boot: the suites' runs spread over fresh boots (Rounds)."""

from __future__ import annotations

from pathlib import Path

from harness.junit import Case
from harness.results import Status
from harness.ssh import CommandResult
from harness.suites import BLINDED, Guard, Install, Pending, Rounds, blinded

SKIP = f'<skipped message="kernel 6.1.192 lacks 8766733641: {BLINDED}, a new report ..."/>'
FULL = """<testsuites><testsuite name="pytest">
<testcase classname="test_map_in_map_free" name="test_deterministic" time="1"/>
<testcase classname="test_map_in_map_free" name="test_race" time="0">{race}</testcase>
<testcase classname="test_map_in_map_basic" name="test_lookup" time="0"/>
</testsuite></testsuites>"""
RERUN = """<testsuites><testsuite name="pytest">
<testcase classname="test_map_in_map_free" name="test_race" time="3">{race}</testcase>
</testsuite></testsuites>"""
C_FULL = ("TAP version 13\n1..2\nok 1 - sleepable_uaf\n"
          f"ok 2 - race_kprobe # SKIP {BLINDED}: a new KASAN report cannot be told apart\n")
C_RERUN = "TAP version 13\n1..1\nok 1 - race_kprobe\n"


PY = ("test_map_in_map_free.py::test_deterministic", "test_map_in_map_free.py::test_race",
      "test_map_in_map_basic.py::test_lookup")
C = ("map_in_map::sleepable_uaf", "map_in_map::race_kprobe")


def one_boot(rounds: Rounds, guest: "Guest", out: Path, binary: Path | None = None) -> None:
    rounds.run(guest, out, Install({}, binary), Guard(), lambda: None)


class Guest:
    """One boot: answers the suites' commands; KASAN taints it when a UAF test runs."""

    def __init__(self, race_blind_again: bool = False, tainted_at_boot: bool = False) -> None:
        self.commands: list[str] = []
        self.tainted = tainted_at_boot
        self.race_blind_again = race_blind_again

    def run(self, command: str, timeout: float = 60.0, check: bool = False,
            watch: object = None, limit: int = 0) -> CommandResult:
        self.commands.append(command)
        out = ""
        if "kernel/tainted" in command:
            out = "32\n" if self.tainted else "0\n"
        elif "bpf_map_in_map" in command:
            out = C_RERUN if "race_kprobe" in command else C_FULL
            self.tainted = True
        elif "pytest" in command:
            self.tainted = True
        return CommandResult(command, 0, out, "", 0.01)

    def put(self, local: Path, remote: str) -> None:
        assert local.exists()

    def get(self, remote: str, local: Path) -> None:
        last = [c for c in self.commands if "pytest" in c][-1]
        if "::test_race" in last:
            local.write_text(RERUN.format(race=SKIP if self.race_blind_again else ""))
        else:
            local.write_text(FULL.format(race=SKIP))


def test_blind_tests_are_rerun_on_fresh_boots_and_replace_their_skips(tmp_path: Path) -> None:
    binary = tmp_path / "bpf_map_in_map"
    binary.write_bytes(b"\x7fELF fake")
    rounds = Rounds({"python": PY, "c": C})
    guests = []
    while not rounds.done():
        guests.append(Guest())
        one_boot(rounds, guests[-1], tmp_path, binary)
    # python (taints) | the blind race | C (taints) | the blind C race
    assert len(guests) == 4
    assert "pytest python/test_map_in_map_free.py::test_race " in guests[1].commands[-3]
    assert guests[3].commands[-2].endswith("./c/bpf_map_in_map race_kprobe")
    # every boot ends with kmemleak's final scan, after its share of the tests
    assert all("python3 -m bpfkit.leaks" in g.commands[-1] for g in guests)
    result = rounds.result("")
    assert [(c.nodeid, c.status) for c in result.cases] == [
        ("test_map_in_map_free::test_deterministic", Status.PASS),
        ("test_map_in_map_free::test_race", Status.PASS),
        ("test_map_in_map_basic::test_lookup", Status.PASS),
        ("map_in_map::sleepable_uaf", Status.PASS),
        ("map_in_map::race_kprobe", Status.PASS)]
    assert (tmp_path / "python.xml").exists() and (tmp_path / "python-2.xml").exists()


def test_a_rerun_left_blind_again_is_not_repeated(tmp_path: Path) -> None:
    rounds = Rounds({"python": PY})
    boots = 0
    while not rounds.done():
        boots += 1
        assert boots <= 2
        one_boot(rounds, Guest(race_blind_again=True), tmp_path)
    race = [c for c in rounds.result("").cases if c.name == "test_race"]
    assert boots == 2 and race[0].status is Status.SKIP and BLINDED in race[0].message


def test_blind_cases_are_selected_as_each_suite_names_them() -> None:
    cases = (Case("python", "test_map_in_map_free.TestRaces", "test_race[kprobe]",
                  Status.SKIP, message=f"x: {BLINDED}"),
             Case("python", "test_map_in_map_free", "test_other", Status.SKIP,
                  message="no userfaultfd"),
             Case("c", "map_in_map", "race_kprobe", Status.SKIP, message=BLINDED),
             Case("c", "map_in_map", "spin_lock", Status.PASS, message=BLINDED))
    assert blinded(cases) == ("test_map_in_map_free.py::TestRaces::test_race[kprobe]",
                              "map_in_map::race_kprobe")
    assert Pending("c").only == ()


def test_a_fresh_boot_tainted_while_booting_runs_nothing_and_the_next_one_does(
        tmp_path: Path) -> None:
    rounds = Rounds({"python": PY})
    one_boot(rounds, Guest(), tmp_path)
    spoiled = Guest(tainted_at_boot=True)
    one_boot(rounds, spoiled, tmp_path)
    assert not any("pytest" in c for c in spoiled.commands) and not rounds.done()
    one_boot(rounds, Guest(), tmp_path)
    race = [c for c in rounds.result("").cases if c.name == "test_race"]
    assert rounds.done() and race[0].status is Status.PASS
    assert "KASAN had reported before any test" in rounds.result("").log
