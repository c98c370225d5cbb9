"""Fixtures for the real layer: the default lab's own kernels, built on demand (a cache
hit when ./lab build or an earlier test made them), never skipped for lack of one."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pytest

from typing import ContextManager

from harness.model import Selection
from harness.boot import BootedGuest, GuestKit, boot, prepare_kit
from harness.config import Arch, GuestSettings, load_arches, load_lab
from harness.main import Session
from harness.ops import Ops
from harness.results import Status

ARCHES = {a.name: a for a in load_arches()}


@dataclass(frozen=True)
class BuiltKernel:
    arch: Arch
    image: Path
    vmlinux: Path
    release: str
    commit: str


@pytest.fixture(scope="session")
def lab_workdir() -> Path:
    """The default lab's workdir: its kernel and rootfs caches, keys and accel verdict."""
    return load_lab().workdir


# The default lab's release the real layer's boots, builds and faults share (./lab
# test builds its kernels once, cold, in CI's time); ./lab test --full adds the
# default lab's 7.3-rc7 through the matrix.
SHARED_RELEASE = "v6.1.192"


@lru_cache(maxsize=None)
def lab_kernel(arch: str) -> BuiltKernel:
    """The default lab's SHARED_RELEASE, base variant, for arch: built if not cached."""
    session = Session(load_lab(), Ops())
    target = session.targets(Selection(arch, "base", SHARED_RELEASE))[-1]
    result = session.builder().build(target)
    if result.status is not Status.PASS or result.artifacts is None:
        pytest.fail(f"building {target.label} failed: {result.errors} (log {result.log})")
    return BuiltKernel(ARCHES[arch], result.artifacts / "image", result.artifacts / "vmlinux",
                       str(result.meta["kernel_release"]), target.commit.name)



def boot_kernel(kernel: BuiltKernel, settings: GuestSettings = GuestSettings(),
                run_dir: Path | None = None) -> ContextManager[BootedGuest]:
    """Boot one of the lab's kernels on the lab's rootfs (its kit prepared once)."""
    return boot(kit_for(kernel.arch.name, kernel.image), kernel.image, settings, run_dir)


@lru_cache(maxsize=None)
def kit_for(arch: str, image: Path) -> GuestKit:
    return prepare_kit(load_lab().workdir, ARCHES[arch], image, GuestSettings())
