"""Machine profiles (kernels/profiles.yaml): validated data, the matrix's columns, the
machine QEMU gets, and kernels shared by what actually differs."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from harness.config import PROFILES_FILE, load_arches, load_lab, load_profiles
from harness.errors import ConfigError
from harness.main import Session
from harness.model import Commit, Selection
from harness.ops import Ops
from harness.qemu import machine_of, qemu_argv

Writer = Callable[[str], Path]
ARCHES = {a.name: a for a in load_arches()}


def test_the_shipped_profiles_describe_their_machines() -> None:
    p = load_profiles()
    assert {"x86_64", "arm64", "x86_64-1cpu", "x86_64-4cpu", "arm64-mte",
            "arm64-swtags"} <= set(p)
    assert (p["x86_64-1cpu"].smp, p["x86_64-4cpu"].smp) == (1, 4)
    mte = p["arm64-mte"]
    assert mte.arch.name == "arm64" and mte.machine == "virt,mte=on"
    assert mte.fragment is not None and "CONFIG_KASAN_HW_TAGS=y" in mte.fragment.read_text()
    assert "kasan.mode=sync" in mte.cmdline
    assert p["x86_64-1cpu"].fragment is None and p["x86_64-1cpu"].flavour == ""
    assert (p["arm64-mte"].flavour, p["arm64-swtags"].flavour) == \
        ("kasan-hw-tags", "kasan-sw-tags")


@pytest.mark.parametrize(("entry", "key", "expected"), [
    ("arch: sparc", "odd.arch", "sparc"),
    ("arch: x86_64\nsmp: 0", "odd.smp", "vCPUs 1..64"),
    ("arch: x86_64\nmemory: lots", "odd.memory", "QEMU memory such as 2G"),
    ("arch: x86_64\nfragment: nowhere.config", "odd.fragment", "does not exist"),
    ("arch: arm64\nmachine_options: ['mte=on,x=1']", "odd.machine_options[0]",
     "one argument without spaces or ','"),
    ("arch: x86_64\ncmdline: ['a b']", "odd.cmdline[0]", "one argument"),
    ("arch: x86_64\nsmpp: 2", "odd.smpp", ""),
    ("arch: arm64\nseries: ['six']", "odd.series[0]", "a kernel series"),
    ("arch: arm64\nqemu_min: ten", "odd.qemu_min", "a QEMU version such as"),
    ("arch: arm64\nseries_fragments: {6.10: x.config}", "odd.series_fragments.6.1",
     "in quotes"),
    ("arch: arm64\nseries_fragments: {'6.12': x.config}", "odd.series_fragments.6.12",
     "a fragment of the profile's own first"),
])
def test_a_bad_profile_is_an_error_naming_file_and_key(tmp_path: Path, entry: str,
                                                       key: str, expected: str) -> None:
    path = tmp_path / "profiles.yaml"
    path.write_text("odd:\n" + "".join(f"  {line}\n" for line in entry.splitlines()))
    with pytest.raises(ConfigError) as err:
        load_profiles(path)
    assert err.value.path == str(path) and err.value.key == key
    assert expected in str(err.value)


def test_a_series_fragment_must_exist_next_to_the_profiles(tmp_path: Path) -> None:
    (tmp_path / "tags.config").write_text("CONFIG_KASAN=y\n")
    path = tmp_path / "profiles.yaml"
    path.write_text("odd:\n  arch: arm64\n  fragment: tags.config\n"
                    "  series_fragments: {'6.12': nowhere.config}\n")
    with pytest.raises(ConfigError) as err:
        load_profiles(path)
    assert err.value.key == "odd.series_fragments.6.12" and "an existing" in str(err.value)


def test_a_series_gets_its_own_fragment_after_the_profiles_and_no_other_does() -> None:
    mte = load_profiles()["arm64-mte"]
    assert [f.name for f in mte.fragments("6.12")] == ["kasan-hw-tags.config",
                                                       "kasan-hw-tags-6.12.config"]
    assert [f.name for f in mte.fragments("7.3")] == ["kasan-hw-tags.config"]
    assert "CONFIG_ARM64_PAN=y" in mte.fragments("6.12")[1].read_text()
    assert load_profiles()["x86_64-4cpu"].fragments("6.12") == []


def test_an_arch_named_profile_must_be_the_archs_own_machine(tmp_path: Path) -> None:
    path = tmp_path / "profiles.yaml"
    path.write_text("x86_64: {arch: x86_64, smp: 4}\n")
    with pytest.raises(ConfigError, match="the arch's own profile"):
        load_profiles(path)


def lab_with(write_lab: Writer, tmp_path: Path, fake_tree: Path, profiles: str) -> Session:
    lab = write_lab(f"workdir: {tmp_path / 'work'}\n"
                    f"source: {{git: {fake_tree}, range: 'v1..v3', paths: [map_in_map.c]}}\n"
                    f"arches: [x86_64]\n"
                    f"build: {{ccache: false, jobs: 1}}\n"
                    f"profiles: {profiles}\n")
    return Session(load_lab(lab), Ops(verbose=False))


def test_a_labs_columns_are_its_arches_then_its_profiles(
        write_lab: Writer, tmp_path: Path, fake_tree: Path) -> None:
    session = lab_with(write_lab, tmp_path, fake_tree, "[x86_64-1cpu, arm64-swtags]")
    assert [p.name for p in session.lab.columns] == ["x86_64", "x86_64-1cpu", "arm64-swtags"]
    assert [a.name for a in session.lab.arches] == ["x86_64", "arm64"]  # the profile's arch
    targets = session.targets()
    columns = sorted({t.column for t in targets})
    assert columns == ["arm64-swtags", "x86_64", "x86_64-1cpu"]
    own = [t for t in targets if t.column == "x86_64"]
    assert own and all(t.profile is None for t in own)  # labels and keys as before
    assert own[0].label.startswith("x86_64 ")
    one = [t for t in targets if t.column == "x86_64-1cpu"]
    assert one[0].label.startswith("x86_64-1cpu ") and one[0].machine.smp == 1
    # --arch takes a profile's name, or an arch for its own profile
    assert {t.column for t in session.targets(Selection(arch="x86_64-1cpu"))} == \
        {"x86_64-1cpu"}
    assert {t.column for t in session.targets(Selection(arch="x86_64"))} == {"x86_64"}


@pytest.mark.parametrize(("profiles", "key", "expected"), [
    ("[x86_64-2cpu]", "profiles[0]", "a profile of"),
    ("[x86_64-1cpu, x86_64-1cpu]", "profiles[1]", "each profile once"),
    ("[x86_64]", "profiles[0]", "each profile once"),
])
def test_a_lab_naming_an_unknown_or_repeated_profile_is_an_error(
        write_lab: Writer, tmp_path: Path, fake_tree: Path, profiles: str, key: str,
        expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        lab_with(write_lab, tmp_path, fake_tree, profiles)
    assert err.value.key == key and expected in str(err.value)


def test_profiles_share_the_kernel_unless_their_fragment_differs(
        write_lab: Writer, tmp_path: Path, fake_tree: Path) -> None:
    session = lab_with(write_lab, tmp_path, fake_tree,
                       "[x86_64-1cpu, x86_64-4cpu, arm64-swtags]")
    builder = session.builder()
    targets = session.targets()
    first = {t.column: t for t in targets if t.commit == targets[0].commit}
    assert builder.key(first["x86_64"]) == builder.key(first["x86_64-1cpu"]) == \
        builder.key(first["x86_64-4cpu"])
    assert builder.dir_for(first["x86_64-4cpu"]) == builder.dir_for(first["x86_64"])
    tags = first["arm64-swtags"]
    arm = type(tags)(tags.commit, tags.arch, tags.variant)  # the arch's own machine
    assert builder.key(tags) != builder.key(arm)
    assert builder.dir_for(tags).name.endswith("-kasan-sw-tags")
    assert builder.frags_for(tags.arch, "", tags.machine.fragments(""))[-1].name == \
        "kasan-sw-tags.config"


def test_a_profile_limited_to_some_series_is_no_column_of_other_kernels(
        write_lab: Writer, tmp_path: Path, fake_tree: Path) -> None:
    session = lab_with(write_lab, tmp_path, fake_tree, "[arm64-mte]")
    old, new = (Commit(f"{n}" * 40, n, f"v{s}", "s", series=s) for n, s in
                (("a", "6.1"), ("b", "7.3")))
    found = [(t.commit.series, t.column) for t in Selection().targets(session.lab, [old, new])]
    assert found == [("6.1", "x86_64"), ("7.3", "x86_64"), ("7.3", "arm64-mte")]


def test_the_guest_of_a_profile_is_its_machine_cpu_vcpus_and_cmdline(tmp_path: Path) -> None:
    p = load_profiles(PROFILES_FILE)
    argv = qemu_argv(ARCHES["arm64"], tmp_path / "image", tmp_path / "root", ssh_port=1,
                     qmp_socket=tmp_path / "qmp", machine=machine_of(p["arm64-mte"]),
                     cmdline_extra=p["arm64-mte"].cmdline)
    assert argv[argv.index("-machine") + 1] == "virt,mte=on"
    assert argv[argv.index("-smp") + 1] == "2"
    assert "kasan.mode=sync" in argv[argv.index("-append") + 1]
    one = qemu_argv(ARCHES["x86_64"], tmp_path / "image", tmp_path / "root", ssh_port=1,
                    qmp_socket=tmp_path / "qmp", machine=machine_of(p["x86_64-1cpu"]))
    assert one[one.index("-smp") + 1] == "1"
    assert one[one.index("-machine") + 1] == ARCHES["x86_64"].machine


KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH0lJ3v7ZK2bD5a1r7Q2c1J8cQp7V2o0Tt1Y7m3x0e1f bpflab"


def machines_lab(write_lab: Writer, tmp_path: Path, fake_tree: Path, entry: str) -> Session:
    return Session(load_lab(write_lab(
        f"workdir: {tmp_path / 'work'}\n"
        f"source: {{git: {fake_tree}, range: 'v1..v3', paths: [map_in_map.c]}}\n"
        f"arches: [x86_64]\nbuild: {{ccache: false, jobs: 1}}\n"
        f"machines:\n  - {{{entry}}}\n")), Ops(verbose=False))


def test_a_real_machine_is_a_column_booting_the_archs_kernel(
        write_lab: Writer, tmp_path: Path, fake_tree: Path) -> None:
    session = machines_lab(write_lab, tmp_path, fake_tree,
                           f"name: box, arch: x86_64, address: '10.0.0.5:2222', "
                           f"host_key: '{KEY}', power_cycle: 'ipmitool chassis power cycle'")
    assert [p.name for p in session.lab.columns] == ["x86_64", "box"]
    box = session.lab.profile("box")
    assert box.remote is not None and (box.remote.host, box.remote.port) == ("10.0.0.5", 2222)
    assert box.remote.user == "root" and box.remote.key is None  # the lab's key
    assert box.remote.boot_timeout == 300 and box.remote.power_cycle.startswith("ipmitool")
    targets = session.targets()
    first = {t.column: t for t in targets if t.commit == targets[0].commit}
    builder = session.builder()
    assert builder.key(first["box"]) == builder.key(first["x86_64"])  # the same kernel


@pytest.mark.parametrize(("entry", "key", "expected"), [
    (f"name: box, arch: x86_64, address: '10.0.0.5:99999', host_key: '{KEY}'",
     "machines[0].address", "host, host:port or [v6]:port"),
    ("name: box, arch: x86_64, address: h, host_key: 'AAAA'", "machines[0].host_key",
     "public host key"),
    (f"name: box, arch: x86_64, address: h, host_key: '{KEY}', key: /nowhere/id",
     "machines[0].key", "does not exist"),
    (f"name: box, arch: x86_64, address: h, host_key: '{KEY}', boot_timeout: 5",
     "machines[0].boot_timeout", "10 to 3600"),
    (f"name: box, arch: sparc, address: h, host_key: '{KEY}'", "machines[0].arch", "sparc"),
    (f"name: box, arch: x86_64, host_key: '{KEY}'", "machines[0].address", "missing"),
    (f"name: box, arch: x86_64, address: h, host_key: '{KEY}', ipmi: x",
     "machines[0].ipmi", ""),
])
def test_a_bad_machine_entry_is_an_error_naming_file_and_key(
        write_lab: Writer, tmp_path: Path, fake_tree: Path, entry: str, key: str,
        expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        machines_lab(write_lab, tmp_path, fake_tree, entry)
    assert err.value.key == key and expected in str(err.value)


def test_the_lab_kernel_boots_with_the_machines_own_command_line_unless_told() -> None:
    from harness.config import Remote
    from harness.remote import kexec_cmdline
    own = "BOOT_IMAGE=/boot/vmlinuz-6.1.0-57-amd64 root=UUID=1234 ro quiet initrd=/x"
    plain = Remote("h", 22, "root", KEY, None, 300.0, ())
    assert kexec_cmdline(own, plain, ("kasan.fault=report",)) == \
        "root=UUID=1234 ro quiet kasan.fault=report"
    told = Remote("h", 22, "root", KEY, None, 300.0, ("root=/dev/sda2", "rw"))
    assert kexec_cmdline(own, told, ()) == "root=/dev/sda2 rw"
