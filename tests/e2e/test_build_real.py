"""End to end: real kernels from Debian's linux-source with the lab's own config."""

from __future__ import annotations

import subprocess
from dataclasses import replace

import pytest

from harness import kconfig
from harness.model import Selection
from harness.config import DEFAULT_LAB, load_lab
from harness.main import Session
from harness.ops import Ops
from harness.results import Status

pytestmark = pytest.mark.e2e
VERSION = "6.1.192"
# Where the image format keeps its magic: x86 boot protocol header, arm64 Image header.
MAGIC = {"x86_64": (0x202, b"HdrS"), "arm64": (0x38, b"ARM\x64")}


@pytest.fixture(scope="module")
def session() -> Session:
    lab = load_lab(DEFAULT_LAB)
    lab = replace(lab, source=replace(lab.source, debian_versions=(VERSION,)))
    return Session(lab, Ops())


@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_the_default_source_builds_a_kasan_btf_kernel_and_a_rerun_is_a_cache_hit(
        session: Session, arch: str) -> None:
    target = session.targets(Selection(arch, None, f"v{VERSION}"))[0]
    result = session.builder().build(target)
    assert result.status is Status.PASS, result.errors
    assert result.artifacts is not None
    offset, magic = MAGIC[arch]
    assert (result.artifacts / "image").read_bytes()[offset:offset + len(magic)] == magic
    assert str(result.meta["kernel_release"]).startswith(VERSION)

    final = kconfig.parse((result.artifacts / "config").read_text().splitlines())
    frags = session.builder().frags_for(target.arch)
    assert kconfig.check(kconfig.requested(frags), final) == []
    for option in ("CONFIG_BPF_SYSCALL", "CONFIG_BPF_JIT", "CONFIG_DEBUG_INFO_BTF",
                   "CONFIG_KASAN", "CONFIG_KASAN_GENERIC", "CONFIG_VIRTIO_BLK",
                   "CONFIG_VIRTIO_NET", "CONFIG_VIRTIO_PCI"):
        assert final.get(option) == "y", option

    sections = subprocess.run(["readelf", "-S", "-W", str(result.artifacts / "vmlinux")],
                              capture_output=True, text=True, check=True).stdout
    assert " .BTF " in sections

    again = session.builder().build(target)
    assert again.cached and again.artifacts == result.artifacts
