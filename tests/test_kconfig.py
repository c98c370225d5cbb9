"""Kconfig fragments merge in order and every requested option is checked by name."""

from __future__ import annotations

from pathlib import Path

from harness import kconfig


def test_not_set_lines_parse_as_n_and_later_lines_win() -> None:
    opts = kconfig.parse(["CONFIG_A=y", "# CONFIG_B is not set", "CONFIG_A=m", "# comment",
                          'CONFIG_S="x y"'])
    assert opts == {"CONFIG_A": "m", "CONFIG_B": "n", "CONFIG_S": '"x y"'}


def test_a_later_fragment_overrides_an_earlier_one(tmp_path: Path) -> None:
    a, b = tmp_path / "a.config", tmp_path / "b.config"
    a.write_text("CONFIG_KASAN=y\nCONFIG_X=y\n")
    b.write_text("# CONFIG_KASAN is not set\n")
    assert kconfig.requested([a, b]) == {"CONFIG_KASAN": "n", "CONFIG_X": "y"}


def test_dropped_and_changed_options_are_reported_by_name() -> None:
    wanted = {"CONFIG_BPF_JIT": "y", "CONFIG_NR_CPUS": "8", "CONFIG_OFF": "n", "CONFIG_OK": "y"}
    final = {"CONFIG_NR_CPUS": "64", "CONFIG_OK": "y"}
    bad = kconfig.check(wanted, final)
    assert [str(m) for m in bad] == ["CONFIG_BPF_JIT=y dropped", "CONFIG_NR_CPUS=8 changed to 64"]


def test_an_option_asked_off_may_be_absent() -> None:
    assert kconfig.check({"CONFIG_BPF_UNPRIV_DEFAULT_OFF": "n"}, {}) == []


def test_the_fingerprint_changes_with_content_not_with_location(tmp_path: Path) -> None:
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    for d in ("one", "two"):
        (tmp_path / d / "kasan.config").write_text("CONFIG_KASAN=y\n")
    same = [kconfig.fingerprint([tmp_path / d / "kasan.config"]) for d in ("one", "two")]
    assert same[0] == same[1]
    (tmp_path / "two" / "kasan.config").write_text("CONFIG_KASAN=n\n")
    assert kconfig.fingerprint([tmp_path / "two" / "kasan.config"]) != same[0]


def test_the_shipped_fragments_ask_for_what_the_mission_needs() -> None:
    kernels = Path(__file__).resolve().parent.parent / "kernels"
    wanted = kconfig.requested(sorted(kernels.glob("*.config")))
    for option in ("CONFIG_BPF_SYSCALL", "CONFIG_BPF_JIT", "CONFIG_DEBUG_INFO_BTF",
                   "CONFIG_KASAN", "CONFIG_KASAN_GENERIC", "CONFIG_VIRTIO_PCI",
                   "CONFIG_VIRTIO_BLK", "CONFIG_VIRTIO_NET", "CONFIG_SERIAL_8250_CONSOLE",
                   "CONFIG_SERIAL_AMBA_PL011_CONSOLE", "CONFIG_SLUB", "CONFIG_MODULES"):
        assert wanted[option] == "y", option
