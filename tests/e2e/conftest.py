"""Fixtures for booting real guests: the lab's workdir and the newest built kernel."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.config import Arch, load_arches, load_lab

ARCHES = {a.name: a for a in load_arches()}


@dataclass(frozen=True)
class BuiltKernel:
    arch: Arch
    image: Path
    release: str


@pytest.fixture(scope="session")
def lab_workdir() -> Path:
    """The default lab's workdir: its rootfs cache, keys and accel verdict are reused."""
    return load_lab().workdir


def newest_kernel(workdir: Path, arch: str) -> BuiltKernel:
    """The most recently built kernel for arch in the lab's cache (built by `lab build`)."""
    found = sorted((workdir / "cache" / "kernels").glob(f"{arch}-*/image"),
                   key=lambda p: p.stat().st_mtime)
    found = [p for p in found if (p.parent / "meta.json").exists()]
    if not found:
        pytest.skip(f"no {arch} kernel built yet in {workdir}/cache/kernels "
                    f"(run: invoke build --arch {arch})")
    meta = json.loads((found[-1].parent / "meta.json").read_text())
    return BuiltKernel(ARCHES[arch], found[-1], str(meta["kernel_release"]))
