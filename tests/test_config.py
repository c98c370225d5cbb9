"""lab.yaml loading: frozen data out, or an error naming the file, the key, the expectation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

from harness.config import (ACCEL_ARGS, ACCELS, DEFAULT_LAB, INIT_PATHS, INITS, ExpectedReport,
                            GuestSettings, Limits, load_arches, load_lab)
from harness.errors import ConfigError

PROJECT = Path(__file__).resolve().parent.parent
LABS = Path(__file__).parent / "data" / "labs"
DEBIAN = "source: {debian: {versions: [6.1.192]}}\n"
Writer = Callable[[str], Path]


def test_the_builtin_lab_loads_with_both_arches_and_the_kasan_fragment() -> None:
    lab = load_lab(DEFAULT_LAB)
    assert [a.name for a in lab.arches] == ["x86_64", "arm64"]
    assert any(f.name == "kasan.config" for f in lab.build.fragments)
    assert lab.source.debian_versions and lab.source.git is None


def test_arch_aliases_resolve_to_the_canonical_arch(fake_tree: Path, write_lab: Writer) -> None:
    lab = load_lab(write_lab(f"source: {{git: {fake_tree}, commits: [v1]}}\n"
                             "arches: [aarch64, amd64]\n"))
    assert [a.name for a in lab.arches] == ["arm64", "x86_64"]
    assert lab.arch("aarch64").cross_compile == "aarch64-linux-gnu-"


@pytest.mark.parametrize("body, key, expected", [
    ("source: {debian: {versions: [6.1.192]}}\nbuild: {jobz: 2}\n", "build.jobz", "unknown key"),
    ("source: {debian: {versions: [6.1.192]}}\nbuild: {jobs: two}\n", "build.jobs", "expected int"),
    ("source: {debian: {versions: [6.1.192]}}\narches: [sparc]\n", "arches[0]", "unknown arch"),
    ("source: {debian: {versions: [six]}}\n", "source.debian.versions[0]", "kernel version"),
    ("source: {}\n", "source.git", "exactly one of"),
    ("source: {git: /nonexistent}\n", "source.git", "a git repository"),
    ("source: {debian: {versions: [6.1.192]}}\nbuild: {fragments: [nope.config]}\n",
     "build.fragments[0]", "does not exist"),
    ("source: {debian: {versions: [6.1.192]}}\nbuild: {base: allyesconfig}\n", "build.base",
     "tinyconfig"),
    ("source: {debian: {versions: [6.1.192]}}\nvariants: [{name: a}, {name: a}]\n", "variants",
     "unique"),
    ("source: {debian: {versions: [6.1.192]}}\nvariants: [{name: x, patches: [no.patch]}]\n",
     "variants[0].patches[0]", "does not exist"),
    ("source: {debian: {versions: [6.1.192]}}\nguest: {accel: hvf}\n", "guest.accel",
     "one of auto, tcg, kvm"),
    ("source: {debian: {versions: [6.1.192]}}\nguest: {init: openrc}\n", "guest.init",
     "one of lean, systemd"),
    ("source: {debian: {versions: [6.1.192]}}\nguest: {boot_timeout: -1}\n",
     "guest.boot_timeout", "seconds > 0"),
    ("source: {debian: {versions: [6.1.192]}}\nguest: {memory: 4G}\n", "guest.memory",
     "unknown key"),
    ("source: {debian: {versions: [6.1.192]}}\nvariants: [{name: x, reverts: [HEAD]}]\n",
     "variants[0].reverts[0]", "upstream commit id"),
    ("source: {debian: {versions: [6.1.192]}}\nvariants: [{name: x, backports: [v6.2]}]\n",
     "variants[0].backports[0]", "upstream commit id"),
    ("source: {debian: {versions: [6.1.192]}}\n"
     "variants: [{name: x, reverts: ['8766733641'], backports: ['8766733641']}]\n",
     "variants[0].backports", "not also in reverts"),
    ("source: {debian: {versions: [6.1.192]}}\nvariants: [{name: x, series: [6]}]\n",
     "variants[0].series[0]", "a string"),
    ("source: {debian: {versions: [6.1.192]}}\nvariants: [{name: x, tests: [test_x.py]}]\n",
     "variants[0].tests[0]", "a test id such as test_x.py::test_y"),
    ("source: {debian: {versions: [6.1.192]}}\nvariants: [{name: x, series: ['7.x']}]\n",
     "variants[0].series[0]", "kernel series"),
    ("source: {debian: {versions: [6.1.192]}}\nvariants: [{name: x, series: ['6.1', '5.4'],"
     " patches: ['kernels/patches/reverts/{series}/8766733641.patch']}]\n",
     "variants[0].patches[0]", "for series 5.4"),
    ("source: {debian: {versions: [6.1.192]}}\nvariants: [{name: x,"
     " patches: ['kernels/{series}/{arch}.patch']}]\n",
     "variants[0].patches[0]", "no field but {series}"),
    ("source: {git: next.git, remote: /srv/bpf-next}\n", "source.branch", "together"),
    ("source: {debian: {versions: [6.1.192]}, remote: /srv/bpf-next, branch: master}\n",
     "source.git", "fetched into"),
    ("source: {git: next.git, remote: /r, branch: m, max_commits: 0}\n", "source.max_commits",
     "a count"),
    ("- just\n- a list\n", "(top level)", "mapping"),
    ("source: [unclosed\n", "(file)", "valid YAML"),
])
def test_a_bad_lab_file_is_refused_naming_the_key(write_lab: Writer, body: str, key: str,
                                                   expected: str) -> None:
    path = write_lab(body)
    with pytest.raises(ConfigError) as err:
        load_lab(path)
    assert err.value.key == key
    assert expected in err.value.expected
    assert str(path) in str(err.value)


def test_the_command_line_reports_a_bad_lab_in_one_line_with_exit_code_2(
        write_lab: Writer) -> None:
    path = write_lab("source: {debian: {versions: [6.1.192]}}\narches: [sparc]\n")
    proc = subprocess.run([sys.executable, "-m", "invoke", "--search-root", str(PROJECT),
                           "plan", "--lab", str(path)], capture_output=True, text=True,
                          cwd=PROJECT)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == [f"error: {path}: arches[0]: unknown arch 'sparc' "
                     "(expected one of: x86_64, arm64)"]


def test_the_example_lab_is_valid_but_for_the_tree_it_points_at() -> None:
    with pytest.raises(ConfigError) as err:
        load_lab(PROJECT / "lab.example.yaml")
    assert err.value.key == "source.git"


def test_the_guest_section_forces_the_accelerator_and_the_init(write_lab: Writer) -> None:
    lab = load_lab(write_lab(DEBIAN + "guest: {accel: tcg, init: systemd, boot_timeout: 120}\n"))
    assert (lab.guest.accel, lab.guest.init, lab.guest.boot_timeout) == ("tcg", "systemd", 120.0)
    assert GuestSettings().accel == "auto"  # auto: the lab probes KVM


def test_a_key_given_twice_in_the_lab_is_refused_with_both_lines() -> None:
    path = LABS / "duplicate_boot_timeout.yaml"
    with pytest.raises(ConfigError) as err:
        load_lab(path)
    assert str(err.value) == (f"{path}: guest.boot_timeout: a key given once, "
                              "but it appears on lines 7 and 9")


@pytest.mark.parametrize("body, key, lines", [
    ("source: {debian: {versions: [6.1.192]}}\nworkdir: a\nworkdir: b\n", "workdir", "2 and 3"),
    ("source: {debian: {versions: [6.1.192]}}\n"
     "variants:\n  - name: a\n  - {name: b, arches: [x86_64], name: c}\n",
     "variants[1].name", "4 and 4"),
    ("source: {debian: {versions: [6.1.192]}}\n"
     "build: {jobs: 1,\n  jobs: 2,\n  jobs: 3}\n", "build.jobs", "2, 3 and 4"),
])
def test_a_key_given_twice_anywhere_is_refused_naming_its_path(
        write_lab: Writer, body: str, key: str, lines: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_lab(write_lab(body))
    assert (err.value.key, err.value.expected) == (
        key, f"a key given once, but it appears on lines {lines}")


def test_a_merge_key_may_be_overridden_without_counting_as_a_duplicate(
        write_lab: Writer) -> None:
    lab = load_lab(write_lab(DEBIAN + "guest: {<<: {boot_timeout: 60, init: systemd}, "
                                      "boot_timeout: 120}\n"))
    assert (lab.guest.boot_timeout, lab.guest.init) == (120.0, "systemd")


def test_a_key_given_twice_in_the_arches_file_is_refused(write_lab: Writer) -> None:
    path = LABS / "arches_duplicate_cpu.yaml"
    with pytest.raises(ConfigError) as err:
        load_arches(path)
    assert str(err.value) == (f"{path}: x86_64.cpu: a key given once, "
                              "but it appears on lines 12 and 14")
    with pytest.raises(ConfigError) as err:
        load_lab(write_lab(DEBIAN), arches_file=path)
    assert err.value.path == str(path)


@pytest.mark.parametrize("setting, key", [
    ("guest: {boot_timeout: .nan}", "guest.boot_timeout"),
    ("guest: {silence_timeout: -.inf}", "guest.silence_timeout"),
    ("guest: {test_timeout: .inf}", "guest.test_timeout"),
    ("guest: {suite_timeout: 1.0e+400}", "guest.suite_timeout"),
])
def test_a_number_that_is_not_finite_is_refused(write_lab: Writer, setting: str,
                                                 key: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_lab(write_lab(DEBIAN + setting + "\n"))
    assert err.value.key == key
    assert err.value.expected.startswith("a finite number, got ")


@pytest.mark.parametrize("setting, key, expected", [
    ("build: {jobs: 1025}", "build.jobs", "a count 0..1024 (0 = all cores), got 1025"),
    ("build: {jobs: -1}", "build.jobs", "a count 0..1024 (0 = all cores), got -1"),
    ("build: {jobs: .nan}", "build.jobs", "expected int, got float nan"),
    ("build: {jobs: true}", "build.jobs", "expected int, got bool True"),
    ("guest: {boot_timeout: 0}", "guest.boot_timeout",
     "seconds > 0 and <= 86400 (one day), got 0"),
    ("guest: {silence_timeout: 86401}", "guest.silence_timeout",
     "seconds > 0 and <= 86400 (one day), got 86401"),
    ("guest: {test_timeout: 1e9}", "guest.test_timeout", "expected float, got str '1e9'"),
    ("guest: {suite_timeout: 100000.5}", "guest.suite_timeout",
     "seconds > 0 and <= 86400 (one day), got 100000.5"),
    ("guest: {test_timeout: 1000000000000000000000000000000000000000000000000000000000}",
     "guest.test_timeout", "seconds > 0 and <= 86400 (one day), got 1000000000000000"),
    ("guest: {boot_timeout: true}", "guest.boot_timeout", "expected float, got bool True"),
    ("guest: {max_boots: 0}", "guest.max_boots", "boots per target 1..64, got 0"),
    ("guest: {max_boots: 65}", "guest.max_boots", "boots per target 1..64, got 65"),
    ("guest: {max_boots: 2.5}", "guest.max_boots", "expected int, got float 2.5"),
    ("limits: {console_bytes: 4095}", "limits.console_bytes",
     "bytes 4096..17179869184 (4 KiB..16 GiB), got 4095"),
    ("limits: {junit_bytes: 17179869185}", "limits.junit_bytes",
     "bytes 4096..17179869184 (4 KiB..16 GiB), got 17179869185"),
    ("limits: {output_bytes: 16MiB}", "limits.output_bytes", "expected int, got str '16MiB'"),
    ("limits: {stderr_bytes: 4096}", "limits.stderr_bytes", "unknown key"),
    ("limits: [4096]", "limits", "expected dict, got list [4096]"),
])
def test_an_absurd_number_is_refused_with_the_range_expected(
        write_lab: Writer, setting: str, key: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_lab(write_lab(DEBIAN + setting + "\n"))
    assert err.value.key == key
    assert err.value.expected.startswith(expected)


def test_a_version_written_as_a_number_is_refused_with_the_hint_to_quote_it(
        write_lab: Writer) -> None:
    path = write_lab("source: {debian: {versions: [6.1.192, 6.10]}}\n")
    with pytest.raises(ConfigError) as err:
        load_lab(path)
    assert str(err.value) == (f"{path}: source.debian.versions[1]: a string (YAML reads 6.10 "
                              'as the number 6.1: write "6.10" in quotes), got 6.1')


@pytest.mark.parametrize("body, key, typed", [
    (DEBIAN + "variants: [{name: x, reverts: [8766733641]}]\n", "variants[0].reverts[0]",
     "8766733641"),
    (DEBIAN + "variants: [{name: x, backports: ['aa3496accc', 1234567]}]\n",
     "variants[0].backports[1]", "1234567"),
    ("source: {git: /nonexistent, commits: [v6.7, 6.8]}\n", "source.commits[1]", "6.8"),
    (DEBIAN + "build: {fragments: [2024]}\n", "build.fragments[0]", "2024"),
])
def test_a_number_in_a_list_of_strings_is_refused_not_converted(
        write_lab: Writer, body: str, key: str, typed: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_lab(write_lab(body))
    assert err.value.key == key
    assert err.value.expected.startswith(f'a string (YAML reads {typed} as a number: '
                                         f'write "{typed}" in quotes), got ')


def test_a_quoted_commit_id_of_digits_only_is_accepted(write_lab: Writer) -> None:
    lab = load_lab(write_lab(DEBIAN + "variants: [{name: x, reverts: ['8766733641']}]\n"))
    assert lab.variants[0].reverts == ("8766733641",)


def test_a_lab_that_is_not_utf8_is_refused_with_the_offending_byte() -> None:
    path = LABS / "latin1_comment.yaml"
    offset = path.read_bytes().index(b"\xe9")
    with pytest.raises(ConfigError) as err:
        load_lab(path)
    assert str(err.value) == f"{path}: (file): UTF-8 text (byte 0xe9 at offset {offset})"


def test_a_lab_that_sets_nothing_new_gets_the_default_timeouts_and_limits(
        write_lab: Writer) -> None:
    lab = load_lab(write_lab(DEBIAN))
    assert lab.guest == GuestSettings("auto", "lean", 90.0, 30.0, 600.0, 1800.0, 8)
    assert lab.limits == Limits(64 << 20, 16 << 20, 16 << 20)
    assert lab.variants[0].expect_reports == ()


def test_every_setting_of_a_lab_file_is_read_into_frozen_data() -> None:
    lab = load_lab(LABS / "every_setting.yaml")
    assert lab.source.debian_versions == ("6.10", "6.1.192")
    assert (lab.build.jobs, lab.build.ccache) == (1024, False)
    assert lab.guest == GuestSettings("kvm", "systemd", 120.0, 45.5, 86400.0, 3600.0, 64)
    assert lab.limits == Limits(console_bytes=4096, output_bytes=2**34, junit_bytes=1 << 20)
    assert lab.variants[1].expect_reports == (
        ExpectedReport("test_map_in_map_free.py::test_inner_map_replaced_under_a_parked_"
                       "sleepable_program_is_not_used_after_free",
                       ("KASAN: use-after-free Read in array_map_update_elem",)),
        ExpectedReport("map_in_map::race_kprobe_inner_map_free",
                       ("KASAN: use-after-free Write in array_map_update_elem",
                        "KASAN: use-after-free Read in array_map_update_elem")))
    assert isinstance(lab.variants[1].expect_reports[0].signatures, tuple)


def test_the_accelerators_and_inits_come_from_one_table_each() -> None:
    assert ACCEL_ARGS == {"tcg": "tcg,thread=multi", "kvm": "kvm"}
    assert INIT_PATHS == {"lean": "/usr/sbin/bpflab-init", "systemd": "/lib/systemd/systemd"}
    assert ACCELS == ("auto", "tcg", "kvm")
    assert INITS == ("lean", "systemd")


def test_an_expected_report_in_the_old_form_is_refused_showing_the_new_form(
        write_lab: Writer) -> None:
    path = write_lab(DEBIAN + "variants:\n  - name: base\n  - name: uaf\n"
                              "    expect_reports: ['KASAN: use-after-free']\n")
    with pytest.raises(ConfigError) as err:
        load_lab(path)
    assert str(err.value) == (f"{path}: variants[1].expect_reports[0]: a mapping "
                              "{test: <test id>, signatures: [...]}, got 'KASAN: use-after-free'")


@pytest.mark.parametrize("report, key, expected", [
    ("{signatures: [KASAN]}", "expect_reports[0].test", "missing (required)"),
    ("{test: '', signatures: [KASAN]}", "expect_reports[0].test", "a test id without spaces"),
    ("{test: 'map_in_map race', signatures: [KASAN]}", "expect_reports[0].test",
     "a test id without spaces"),
    ("{test: a::b}", "expect_reports[0].signatures", "missing (required)"),
    ("{test: a::b, signatures: []}", "expect_reports[0].signatures", "a non-empty list"),
    ("{test: a::b, signatures: ['KASAN', '']}", "expect_reports[0].signatures",
     "non-empty report signatures"),
    ("{test: a::b, signatures: [KASAN, 6.10]}", "expect_reports[0].signatures[1]",
     "a string (YAML reads 6.10"),
    ("{test: a::b, signatures: KASAN}", "expect_reports[0].signatures", "expected list"),
    ("{test: a::b, signatures: [KASAN], tests: [c::d]}", "expect_reports[0].tests",
     "unknown key"),
])
def test_an_expected_report_without_a_test_or_a_signature_is_refused(
        write_lab: Writer, report: str, key: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_lab(write_lab(DEBIAN + f"variants: [{{name: x, expect_reports: [{report}]}}]\n"))
    assert err.value.key == f"variants[0].{key}"
    assert expected in err.value.expected


def test_a_key_that_is_not_a_string_is_refused_as_unknown(write_lab: Writer) -> None:
    with pytest.raises(ConfigError) as err:
        load_lab(write_lab(DEBIAN + "guest: {1: 2, zz: 3}\n"))
    assert err.value.key == "guest.1"


def test_the_series_layers_are_data_checked_like_the_lab_file(tmp_path: Path) -> None:
    from harness.config import load_series
    (tmp_path / "a.config").write_text("CONFIG_X=y\n")
    good = tmp_path / "series.yaml"
    good.write_text('- {fragment: a.config, first: "7.0", last: "7.9"}\n')
    layer = load_series(good)[0]
    assert layer.covers("7.3") and not layer.covers("6.12") and not layer.covers("8.0")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- {fragment: a.config, first: 7.10}\n")
    with pytest.raises(ConfigError, match=r"\[0\]\.first"):
        load_series(bad)
    bad.write_text('- {fragment: nope.config}\n')
    with pytest.raises(ConfigError, match="does not exist"):
        load_series(bad)
    assert [s.first for s in load_series()] == ["6.12", "7.0"]  # the lab's own file


def test_a_variant_may_run_a_share_of_the_suites(write_lab: Writer) -> None:
    lab = load_lab(write_lab("source: {debian: {versions: [6.1.192]}}\n"
                             "variants: [{name: q, tests: ['map_in_map::timer_in_inner_map']}]\n"))
    assert lab.variants[0].tests == ("map_in_map::timer_in_inner_map",)


def test_a_variant_runs_on_its_series_with_that_series_patch(write_lab: Writer) -> None:
    from harness.model import Commit, Selection
    lab = load_lab(write_lab(
        DEBIAN + "variants:\n  - name: base\n"
        "  - name: uaf\n    patches: ['kernels/patches/reverts/{series}/8766733641.patch']\n"
        "  - name: old-only\n    series: ['6.1']\n"))
    old, new = (Commit(s, s, f"v{s}", "", s) for s in ("6.1", "7.3"))
    got = [(t.commit.series, t.variant.name) for t in Selection().targets(lab, [old, new])]
    assert got == [("6.1", "base"), ("6.1", "uaf"), ("6.1", "old-only"),
                   ("7.3", "base"), ("7.3", "uaf")]
    uaf = lab.variants[1]
    assert uaf.patches_for("7.3") == (PROJECT / "kernels/patches/reverts/7.3/8766733641.patch",)
    with pytest.raises(Exception, match=r"old-only: arches any, series 6\.1.*v7\.3 \(7\.3\)"):
        Selection(variant="old-only").targets(lab, [new])
