"""lab.yaml loading: frozen data out, or an error naming the file, the key, the expectation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

from harness.config import DEFAULT_LAB, load_lab
from harness.errors import ConfigError

PROJECT = Path(__file__).resolve().parent.parent
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
     "variants: [{name: x, reverts: [8766733641], backports: [8766733641]}]\n",
     "variants[0].backports", "not also in reverts"),
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
    from harness.boot import options_for
    lab = load_lab(write_lab("source: {debian: {versions: [6.1.192]}}\n"
                             "guest: {accel: tcg, init: systemd, boot_timeout: 120}\n"))
    options = options_for(lab.guest)
    assert (options.accel, options.init, options.boot_timeout) == ("tcg", "systemd", 120.0)
    assert options_for(lab.guest, accel="kvm", init="").accel == "kvm"  # a flag wins
    assert options_for(load_lab(DEFAULT_LAB).guest).accel is None  # auto: probe
