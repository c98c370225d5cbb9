"""Kernel ABI numbers the in-guest suite hard-codes, against the uapi headers' values."""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bpf_tests" / "python"))

from bpfkit import caps, sysbpf, uffd  # noqa: E402


@pytest.mark.parametrize("machine, nr", [("x86_64", 321), ("aarch64", 280), ("arm64", 280)])
def test_the_bpf_syscall_number_follows_the_arch(machine: str, nr: int) -> None:
    assert sysbpf.syscall_nr(machine) == nr


def test_an_unknown_arch_has_no_bpf_syscall_number() -> None:
    with pytest.raises(RuntimeError, match="riscv64"):
        sysbpf.syscall_nr("riscv64")


def test_userfaultfd_ioctls_match_linux_userfaultfd_h() -> None:
    # _IOWR(0xAA, nr, struct): values as printed by a C program including the header.
    assert (uffd.UFFDIO_API, uffd.UFFDIO_REGISTER, uffd.UFFDIO_COPY) == (
        0xC018AA3F, 0xC020AA00, 0xC028AA03)
    assert uffd.NR_USERFAULTFD == {"x86_64": 323, "aarch64": 282}


def test_enotsupp_is_the_kernel_internal_524_not_eopnotsupp() -> None:
    assert sysbpf.ENOTSUPP == 524
    assert sysbpf.errno_name(524) == "ENOTSUPP" and sysbpf.errno_name(95) == "EOPNOTSUPP"


def test_bpf_errors_carry_the_errno_and_the_command() -> None:
    err = sysbpf.BpfError(sysbpf.MAP_CREATE, 524)
    assert err.errno == 524 and "MAP_CREATE" in str(err) and "ENOTSUPP" in str(err)
    log = "\n".join(f"line {i}" for i in range(40))
    text = str(sysbpf.ProgLoadError(sysbpf.PROG_LOAD, 13, log))
    assert "line 39" in text and "line 10" not in text  # the verifier log's tail


def test_capability_numbers_match_linux_capability_h() -> None:
    assert (caps.CAP_SYS_ADMIN, caps.CAP_PERFMON, caps.CAP_BPF) == (21, 38, 39)


def test_little_endian_helpers_pack_keys_as_the_kernel_reads_them() -> None:
    assert sysbpf.u32(0x2222) == b"\x22\x22\x00\x00"
    assert sysbpf.u32(-1) == b"\xff" * 4
    assert struct.unpack("<Q", sysbpf.u64(1 << 40))[0] == 1 << 40
