"""The C suite's build: argv builders, cache key, ELF/BTF readers, and kernel.c's
reading of the lab's commits file (decided by harness/commits.py)."""

from __future__ import annotations

import platform
import struct
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Mapping, Sequence

import pytest

from harness import catalog, commits, csuite
from harness.config import Arch, load_arches
from harness.errors import LabError
from harness.ops import Completed, Ops

ARCHES = {a.name: a for a in load_arches()}
X86, ARM64 = ARCHES["x86_64"], ARCHES["arm64"]
PINS = ("libbpf-dev=1:1.1.2-0+deb12u1", "zlib1g-dev=1:1.2.13.dfsg-1")


def make_elf(path: Path, sections: Mapping[str, bytes], machine: int = 62,
             interp: bool = False) -> Path:
    """A minimal little-endian ELF64: named sections, and a PT_INTERP header if asked."""
    names = b"\0" + b"".join(n.encode() + b"\0" for n in [*sections, ".shstrtab"])
    blobs = [*sections.values(), names]
    data_off = 64 + 56
    body, offsets = b"", []
    for blob in blobs:
        offsets.append(data_off + len(body))
        body += blob
    shoff = data_off + len(body)
    header = b"\x7fELF\x02\x01\x01" + b"\0" * 9 + struct.pack(
        "<HHIQQQIHHHHHH", 2, machine, 1, 0, 64, shoff, 0, 64, 56, 1, 64,
        len(blobs) + 1, len(blobs))
    phdr = struct.pack("<IIQQQQQQ", 3 if interp else 1, 4, 0, 0, 0, 0, 0, 8)
    shdrs, name_off = b"\0" * 64, 1
    for name, blob, off in zip([*sections, ".shstrtab"], blobs, offsets):
        shdrs += struct.pack("<IIQQQQIIQQ", name_off, 1, 0, 0, off, len(blob), 0, 0, 1, 0)
        name_off += len(name) + 1
    path.write_bytes(header + phdr + body + shdrs)
    return path


def test_the_bpf_object_is_built_for_the_arch_against_the_generated_vmlinux_h() -> None:
    tc = csuite.toolchain(ARM64, Path("/sr"))
    argv = csuite.bpf_object_argv(Path("/src"), Path("/out"), tc)
    assert argv[:3] == ["clang", "-target", "bpf"]
    assert "-D__TARGET_ARCH_arm64" in argv and "-I/out" in argv
    assert argv[-3:] == ["/src/map_in_map.bpf.c", "-o", "/out/map_in_map.bpf.o"]
    x86 = csuite.bpf_object_argv(Path("/src"), Path("/out"), csuite.toolchain(X86, None))
    assert "-D__TARGET_ARCH_x86" in x86


def test_a_cross_build_links_statically_against_the_sysroot() -> None:
    tc = csuite.toolchain(ARM64, Path("/sr"))
    argv = csuite.link_argv(Path("/src"), Path("/out"), tc)
    assert argv[0] == "aarch64-linux-gnu-gcc" and "-static" in argv
    assert ["-isystem", "/sr/usr/include"] == argv[argv.index("-isystem"):][:2]
    assert "-L/sr/usr/lib/aarch64-linux-gnu" in argv
    assert argv[-6:] == ["-lbpf", "-lelf", "-lz", "-lpthread", "-o", "/out/bpf_map_in_map"]
    assert all(f"/src/{s}" in argv for s in csuite.USER_SOURCES)


def test_a_native_build_uses_the_host_compiler_and_libraries() -> None:
    argv = csuite.link_argv(Path("/src"), Path("/out"), csuite.toolchain(X86, None))
    assert argv[0] == "gcc" and "-static" in argv
    assert not any(a.startswith("-L") or a == "-isystem" for a in argv)


def test_generators_and_package_commands_are_plain_argv() -> None:
    assert csuite.vmlinux_h_argv(Path("/k/vmlinux")) == \
        ["bpftool", "btf", "dump", "file", "/k/vmlinux", "format", "c"]
    assert csuite.skeleton_argv(Path("/o")) == \
        ["bpftool", "gen", "skeleton", "/o/map_in_map.bpf.o", "name", "map_in_map"]
    assert csuite.apt_download_argv(["-o", "X=1"], "libbpf-dev", "1:1.1.2-0", "arm64") == \
        ["apt-get", "-o", "X=1", "download", "libbpf-dev:arm64=1:1.1.2-0"]
    assert csuite.extract_argv(Path("a.deb"), Path("/r")) == ["dpkg-deb", "-x", "a.deb", "/r"]


def test_the_cache_key_follows_arch_sources_btf_and_libraries() -> None:
    key = csuite.cache_key(X86, "src1", "btf1", PINS)
    assert key == csuite.cache_key(X86, "src1", "btf1", PINS)
    assert key.startswith("x86_64-") and len(key) == len("x86_64-") + 16
    others = {csuite.cache_key(X86, "src2", "btf1", PINS),
              csuite.cache_key(X86, "src1", "btf2", PINS),
              csuite.cache_key(X86, "src1", "btf1", PINS[:1]),
              csuite.cache_key(ARM64, "src1", "btf1", PINS)}
    assert key not in others and len(others) == 4


def test_the_sources_digest_changes_with_any_file(tmp_path: Path) -> None:
    (tmp_path / "a.c").write_text("int a;\n")
    first = csuite.sources_digest(tmp_path)
    (tmp_path / "a.c").write_text("int b;\n")
    second = csuite.sources_digest(tmp_path)
    (tmp_path / "b.h").write_text("")
    assert len({first, second, csuite.sources_digest(tmp_path)}) == 3


def test_the_btf_digest_reads_only_the_btf_section(tmp_path: Path) -> None:
    a = make_elf(tmp_path / "a", {".text": b"\x90" * 8, ".BTF": b"\x9f\xeb types"})
    b = make_elf(tmp_path / "b", {".text": b"\xcc" * 20, ".BTF": b"\x9f\xeb types"})
    c = make_elf(tmp_path / "c", {".text": b"\x90" * 8, ".BTF": b"\x9f\xeb other"})
    assert csuite.btf_digest(a) == csuite.btf_digest(b) != csuite.btf_digest(c)


def test_raw_btf_is_hashed_whole_and_an_elf_without_btf_is_refused(tmp_path: Path) -> None:
    raw = tmp_path / "btf"
    raw.write_bytes(b"\x9f\xeb\x01\x00 raw")
    assert len(csuite.btf_digest(raw)) == 64
    with pytest.raises(LabError, match="no .BTF section"):
        csuite.btf_digest(make_elf(tmp_path / "nobtf", {".text": b"\x90"}))


def test_elf_info_tells_machine_and_static_linking(tmp_path: Path) -> None:
    assert csuite.elf_info(make_elf(tmp_path / "s", {}, machine=183)) == \
        csuite.ElfInfo(183, True)
    assert csuite.elf_info(make_elf(tmp_path / "d", {}, interp=True)).static is False
    with pytest.raises(LabError, match="x86_64"):
        csuite.check_binary(make_elf(tmp_path / "w", {}, machine=183), X86)


class FakeOps(Ops):
    """Answers dpkg-query like the host, fails the BPF compile with clang's real words."""

    def __init__(self) -> None:
        super().__init__(verbose=False)
        self.calls: list[list[str]] = []

    def run(self, argv: Sequence[str], cwd: Path | None = None,
            env: Mapping[str, str] | None = None, check: bool = True,
            quiet: bool = False) -> Completed:
        self.calls.append(list(argv))
        out, code = {
            "dpkg-query": ("\n".join(f"{p}=1:1.0" for p in csuite.SYSROOT_PACKAGES), 0),
            "bpftool": ("#ifndef __VMLINUX_H__\n#define __VMLINUX_H__\n#endif\n", 0),
            "clang": ("In file included from map_in_map.bpf.c:7:\n"
                      "map_in_map.bpf.c:41:2: error: use of undeclared identifier 'x'\n"
                      "        x++;\n        ^\n1 error generated.\n", 1),
        }.get(argv[0], ("", 0))
        return Completed(tuple(argv), code, out)


def native(arch: Arch) -> Arch:
    """The arch as the host's own, whatever the host: no sysroot download in unit tests."""
    return replace(arch, name=platform.machine(), aliases=())


def test_a_compile_error_raises_with_the_compilers_first_error(tmp_path: Path) -> None:
    vmlinux = make_elf(tmp_path / "vmlinux", {".BTF": b"\x9f\xeb"})
    ops = FakeOps()
    with pytest.raises(LabError, match="use of undeclared identifier 'x'") as err:
        csuite.build_c_suite(tmp_path / "work", native(X86), vmlinux, ops)
    assert "clang (BPF object) failed (1)" in str(err.value)
    assert [c[0] for c in ops.calls] == ["dpkg-query", "bpftool", "clang"]
    assert not [p for p in (tmp_path / "work" / "csuite").iterdir() if p.is_dir()]


def test_a_cached_build_runs_no_compiler(tmp_path: Path) -> None:
    vmlinux = make_elf(tmp_path / "vmlinux", {".BTF": b"\x9f\xeb"})
    arch, ops = native(X86), FakeOps()
    pins = csuite.library_versions(ops)
    key = csuite.cache_key(arch, csuite.sources_digest(), csuite.btf_digest(vmlinux), pins)
    done = tmp_path / "work" / "csuite" / key / "bpf_map_in_map"
    done.parent.mkdir(parents=True)
    done.write_bytes(b"built")
    assert csuite.build_c_suite(tmp_path / "work", arch, vmlinux, ops) == done
    assert [c[0] for c in ops.calls] == ["dpkg-query", "dpkg-query"]


@pytest.fixture(scope="module")
def kernel_check(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """kernel.c compiled with its command-line window, with the suite's own flags and
    warnings as errors: the C suite's reading of the commits file itself."""
    exe = tmp_path_factory.mktemp("kc") / "kernel_check"
    subprocess.run(["gcc", *csuite.CFLAGS, "-Werror", f"-I{csuite.SOURCES}",
                    str(csuite.SOURCES / "kernel_check.c"), str(csuite.SOURCES / "kernel.c"),
                    "-o", str(exe)], check=True)
    return exe


def commits_file(tmp_path: Path, identity: commits.Identity) -> Path:
    """The file the lab would write for this kernel, from the real table."""
    path = tmp_path / "commits.txt"
    path.write_text(commits.render(commits.decide(commits.load_table(), identity), identity))
    return path


def check(exe: Path, path: Path | None, *ids: str) -> subprocess.CompletedProcess[str]:
    env = {"BPFLAB_COMMITS": str(path)} if path else {}
    return subprocess.run([str(exe), *ids], capture_output=True, text=True, env=env)


def test_the_c_suite_reads_each_tests_commit_from_the_file(kernel_check: Path,
                                                           tmp_path: Path) -> None:
    uaf = commits.Identity("6.1.192", None, ("8766733641",), (), "uaf-inject")
    out = check(kernel_check, commits_file(tmp_path, uaf))
    assert out.returncode == 0, out.stdout
    assert out.stdout.splitlines() == [
        "spin_lock_in_inner_map b7ff97925b lacks", "timer_in_inner_map 40ec00abf1 has",
        "kptr_in_inner_map 61df10c779 has",
        "sleepable_uaf_inner_map_free 8766733641 lacks",
        "race_kprobe_inner_map_free 8766733641 lacks",
        "race_sleepable_fentry_inner_map_free 8766733641 lacks"]
    assert [line.split()[0] for line in out.stdout.splitlines()] == \
        [name.removeprefix("map_in_map::") for name in catalog.c_tests()]


def test_the_c_suite_matches_ids_by_prefix_and_keeps_the_files_why(
        kernel_check: Path, tmp_path: Path) -> None:
    path = commits_file(tmp_path, commits.Identity("6.1.74"))
    out = check(kernel_check, path, "8766733641", "CBA41BB78D0123", "03b77e1")
    assert out.stdout.splitlines() == [
        "8766733641 lacks 6.1.y from 6.1.75, release 6.1.74",
        "CBA41BB78D0123 has 6.1.y from 6.1.34, release 6.1.74",
        "03b77e1 lacks mainline v6.3, release 6.1.74 (6.1.y has no backport)"]


def test_without_the_variable_the_c_suite_bails_out_saying_how_to_get_the_file(
        kernel_check: Path) -> None:
    out = check(kernel_check, None)
    assert out.returncode == 2
    assert out.stdout.startswith("Bail out! BPFLAB_COMMITS is not set")
    assert "harness/commits.py" in out.stdout and "python -m harness.commits" in out.stdout


def test_a_file_lacking_a_declared_id_makes_the_c_suite_bail_out(kernel_check: Path,
                                                                 tmp_path: Path) -> None:
    path = commits_file(tmp_path, commits.Identity("7.3.0-rc7"))
    path.write_text("".join(line + "\n" for line in path.read_text().splitlines()
                            if not line.startswith("03b77e17ae")))
    out = check(kernel_check, path)
    assert out.returncode == 2
    assert out.stdout.startswith("Bail out! kptr_in_inner_map declares 03b77e17ae, which "
                                 f"the commits file {path} does not list")
    asked = check(kernel_check, commits_file(tmp_path, commits.Identity("6.8")), "deadbeef00")
    assert asked.returncode == 2 and "Bail out! deadbeef00 is not in the commits file" \
        in asked.stdout


@pytest.mark.parametrize("line", ["8766733641 maybe", "HEAD present", "876673 absent x"])
def test_a_malformed_file_makes_the_c_suite_bail_out_naming_the_line(
        kernel_check: Path, tmp_path: Path, line: str) -> None:
    path = tmp_path / "commits.txt"
    path.write_text(f"# a file\n{line}\n")
    out = check(kernel_check, path)
    assert out.returncode == 2
    assert out.stdout.startswith(f"Bail out! BPFLAB_COMMITS: {path}:2: expected '<id> "
                                 "present|absent <why>'")
    path.write_text("8766733641 present a\n87667336 absent b\n")
    assert f"{path}:2: 87667336 is listed twice" in check(kernel_check, path).stdout
    assert "No such file" in check(kernel_check, tmp_path / "none").stdout
