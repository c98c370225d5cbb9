"""Choosing KVM or TCG: forced, remembered per host, or probed once (probe faked here;
the real probe runs in the e2e layer)."""

from __future__ import annotations

import platform

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping, Sequence

import pytest

from harness import accel
from harness.accel import AccelVerdict, choose_accel
from harness.config import Arch, load_arches
from harness.errors import UserError
from harness.ops import Completed

ARCHES = {a.name: a for a in load_arches()}
# Pinned, whatever the host: one arch the host runs natively, one it must emulate.
NATIVE = replace(ARCHES["x86_64"], name=platform.machine(), aliases=())
FOREIGN = replace(ARCHES["arm64"], name="sparc64", aliases=(), debian_arch="sparc64")


@dataclass
class QemuVersionOps:
    version: str = "QEMU emulator version 7.2.22"

    def run(self, argv: Sequence[str], cwd: Path | None = None,
            env: Mapping[str, str] | None = None, check: bool = True,
            quiet: bool = False) -> Completed:
        return Completed(tuple(argv), 0, self.version + "\nCopyright\n")


class CountingProbe:
    def __init__(self, verdict: AccelVerdict) -> None:
        self.verdict = verdict
        self.calls = 0

    def __call__(self, arch: Arch, kernel: Path, run_dir: Path) -> AccelVerdict:
        self.calls += 1
        return self.verdict


@pytest.fixture(autouse=True)
def kvm_device_opens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accel, "kvm_usable", lambda: None)


def test_a_forced_accelerator_is_used_without_probing(tmp_path: Path) -> None:
    probe = CountingProbe(AccelVerdict("kvm", "x"))
    v = choose_accel(tmp_path, NATIVE, tmp_path / "k", QemuVersionOps(),  # type: ignore[arg-type]
                     force="tcg", probe=probe)
    assert (v.accel, v.reason, probe.calls) == ("tcg", "forced", 0)


def test_forcing_an_unknown_accelerator_is_the_users_mistake(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="whpx"):
        choose_accel(tmp_path, NATIVE, tmp_path / "k", QemuVersionOps(),  # type: ignore[arg-type]
                     force="whpx")


def test_a_foreign_arch_is_emulated_without_probing(tmp_path: Path) -> None:
    probe = CountingProbe(AccelVerdict("kvm", "x"))
    v = choose_accel(tmp_path, FOREIGN, tmp_path / "k", QemuVersionOps(),  # type: ignore[arg-type]
                     probe=probe)
    assert v.accel == "tcg" and probe.calls == 0


def test_the_verdict_is_probed_once_and_then_remembered(tmp_path: Path) -> None:
    probe = CountingProbe(AccelVerdict("tcg", "KVM guest printed nothing in 12 s (hangs)"))
    ops = QemuVersionOps()
    first = choose_accel(tmp_path, NATIVE, tmp_path / "k", ops, probe=probe)  # type: ignore[arg-type]
    second = choose_accel(tmp_path, NATIVE, tmp_path / "k", ops, probe=probe)  # type: ignore[arg-type]
    assert (first.accel, first.cached, second.accel, second.cached) == ("tcg", False, "tcg", True)
    assert probe.calls == 1
    saved = json.loads((tmp_path / "accel.json").read_text())
    (key, entry), = saved.items()
    assert "QEMU emulator version 7.2.22" in key and entry["accel"] == "tcg"


def test_a_new_qemu_version_is_probed_afresh(tmp_path: Path) -> None:
    probe = CountingProbe(AccelVerdict("tcg", "hangs"))
    choose_accel(tmp_path, NATIVE, tmp_path / "k", QemuVersionOps(), probe=probe)  # type: ignore[arg-type]
    choose_accel(tmp_path, NATIVE, tmp_path / "k",
                 QemuVersionOps("QEMU emulator version 9.0"), probe=probe)  # type: ignore[arg-type]
    assert probe.calls == 2


def test_a_damaged_verdict_file_means_probing_again(tmp_path: Path) -> None:
    (tmp_path / "accel.json").write_text("{not json")
    probe = CountingProbe(AccelVerdict("kvm", "kernel printed after 0.8 s"))
    v = choose_accel(tmp_path, NATIVE, tmp_path / "k", QemuVersionOps(), probe=probe)  # type: ignore[arg-type]
    assert v.accel == "kvm" and probe.calls == 1


def test_an_unopenable_dev_kvm_means_tcg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accel, "kvm_usable", lambda: "/dev/kvm: No such file or directory")
    v = choose_accel(tmp_path, NATIVE, tmp_path / "k", QemuVersionOps())  # type: ignore[arg-type]
    assert v.accel == "tcg" and "/dev/kvm" in v.reason
