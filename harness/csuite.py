"""The C map-in-map suite (bpf_tests/c): BPF object, skeleton and one static test binary
per arch, built on the host and cached by the content of the sources and of the target
kernel's BTF. Cross builds link against libraries unpacked from Debian's .debs."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

from harness.build import first_errors
from harness.config import PROJECT, Arch
from harness.debsrc import PrivateApt, host_codename, host_sources, private_sources
from harness.errors import LabError
from harness.ops import Ops

SOURCES = PROJECT / "bpf_tests" / "c"
BPF_SOURCE = "map_in_map.bpf.c"
USER_SOURCES = ("runner.c", "kernel.c", "tests_fields.c", "tests_uaf.c", "tests_race.c")
SKELETON_NAME = "map_in_map"
BINARY = "bpf_map_in_map"
# Headers and static archives the binary links with (zstd is not needed: Debian's
# libelf 0.188 links zlib only); runtime packages come along for completeness.
SYSROOT_PACKAGES = ("libbpf-dev", "libbpf1", "libelf-dev", "libelf1", "zlib1g-dev", "zlib1g")
LIBS = ("-lbpf", "-lelf", "-lz", "-lpthread")
CFLAGS = ("-O2", "-g", "-Wall", "-Wextra", "-Wno-unused-parameter")
BPF_CFLAGS = ("-target", "bpf", "-g", "-O2", "-Wall")
# bpf_tracing.h spells arches by kernel directory (x86, arm64, riscv, ...), which is
# linux_arch; ELF machine numbers check that the output is for the arch asked for.
ELF_MACHINES = {"amd64": 62, "arm64": 183, "riscv64": 243, "i386": 3, "armhf": 40}
RECIPE = "1"  # bump when the build steps change in a way the argv lists do not show


@dataclass(frozen=True)
class Toolchain:
    cc: str  # the C compiler for user space
    triplet: str  # Debian multiarch directory, e.g. aarch64-linux-gnu
    target_arch: str  # __TARGET_ARCH_<this> for bpf_tracing.h
    sysroot: Path | None  # unpacked .debs for a cross build; None: the host's libraries


def toolchain(arch: Arch, sysroot: Path | None) -> Toolchain:
    triplet = arch.cross_compile.rstrip("-")
    cc = f"{arch.cross_compile}gcc" if sysroot else "gcc"
    return Toolchain(cc, triplet, arch.linux_arch, sysroot)


def vmlinux_h_argv(vmlinux: Path) -> list[str]:
    return ["bpftool", "btf", "dump", "file", str(vmlinux), "format", "c"]


def bpf_object_argv(src: Path, out: Path, tc: Toolchain) -> list[str]:
    """clang for the BPF object: CO-RE against out/vmlinux.h, arch only via the define."""
    return ["clang", *BPF_CFLAGS, f"-D__TARGET_ARCH_{tc.target_arch}", f"-I{out}", f"-I{src}",
            "-c", str(src / BPF_SOURCE), "-o", str(out / f"{SKELETON_NAME}.bpf.o")]


def skeleton_argv(out: Path) -> list[str]:
    return ["bpftool", "gen", "skeleton", str(out / f"{SKELETON_NAME}.bpf.o"),
            "name", SKELETON_NAME]


def link_argv(src: Path, out: Path, tc: Toolchain) -> list[str]:
    """One static binary: nothing but the kernel is needed on the guest."""
    libs: list[str] = []
    if tc.sysroot:
        libs = ["-isystem", str(tc.sysroot / "usr/include"),
                "-isystem", str(tc.sysroot / "usr/include" / tc.triplet),
                f"-L{tc.sysroot / 'usr/lib' / tc.triplet}"]
    return [tc.cc, *CFLAGS, "-static", f"-I{out}", f"-I{src}", *libs,
            *(str(src / s) for s in USER_SOURCES), *LIBS, "-o", str(out / BINARY)]


def apt_download_argv(apt_options: list[str], package: str, version: str,
                      debian_arch: str) -> list[str]:
    return ["apt-get", *apt_options, "download", f"{package}:{debian_arch}={version}"]


def extract_argv(deb: Path, dest: Path) -> list[str]:
    return ["dpkg-deb", "-x", str(deb), str(dest)]


def btf_digest(vmlinux: Path) -> str:
    """sha256 of the kernel's BTF: the .BTF section of a vmlinux ELF, or a raw BTF file
    (/sys/kernel/btf/vmlinux). A rebuilt kernel with the same types keeps the key."""
    with open(vmlinux, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF":
            f.seek(0)
            return hashlib.sha256(f.read()).hexdigest()
        if head[4] != 2 or head[5] != 1:
            raise LabError(f"{vmlinux}: not a little-endian 64-bit ELF")
        shoff, = struct.unpack_from("<Q", head, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", head, 0x3A)
        f.seek(shoff)
        table = f.read(shentsize * shnum)
        sections = [struct.unpack_from("<IIQQQQ", table, i * shentsize) for i in range(shnum)]
        f.seek(sections[shstrndx][4])
        names = f.read(sections[shstrndx][5])
        for name_off, _type, _flags, _addr, offset, size in sections:
            if names[name_off:names.index(b"\0", name_off)] == b".BTF":
                f.seek(offset)
                return hashlib.sha256(f.read(size)).hexdigest()
    raise LabError(f"{vmlinux}: no .BTF section (kernel built without CONFIG_DEBUG_INFO_BTF?)")


def sources_digest(src: Path = SOURCES) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in src.iterdir() if p.is_file()):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def cache_key(arch: Arch, sources: str, btf: str, libraries: tuple[str, ...]) -> str:
    """<arch>-<hash>: what the binary depends on, the build steps included."""
    tc = toolchain(arch, Path("/SYSROOT") if not arch.is_native else None)
    steps = [bpf_object_argv(Path("/SRC"), Path("/OUT"), tc),
             link_argv(Path("/SRC"), Path("/OUT"), tc), skeleton_argv(Path("/OUT"))]
    h = hashlib.sha256("\n".join([RECIPE, arch.name, sources, btf, *libraries,
                                  *(" ".join(s) for s in steps)]).encode())
    return f"{arch.name}-{h.hexdigest()[:16]}"


@dataclass(frozen=True)
class ElfInfo:
    machine: int
    static: bool  # no program interpreter: runs without the guest's ld.so and libs


def elf_info(path: Path) -> ElfInfo:
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2:
            raise LabError(f"{path}: not a 64-bit ELF file")
        machine, = struct.unpack_from("<H", head, 0x12)
        phoff, = struct.unpack_from("<Q", head, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    types = [struct.unpack_from("<I", table, i * phentsize)[0] for i in range(phnum)]
    return ElfInfo(machine, 3 not in types)  # 3: PT_INTERP


def library_versions(ops: Ops) -> tuple[str, ...]:
    """The host's versions of the library packages: the native build uses them, the
    cross build pins the foreign arch to the same ones (one libbpf for the skeleton
    that the host's bpftool writes and for the headers it is compiled with)."""
    out = ops.run(["dpkg-query", "-W", "-f", "${Package}=${Version}\n",
                   *SYSROOT_PACKAGES], check=False, quiet=True)
    found = tuple(sorted({line.strip() for line in out.stdout.splitlines()
                          if "=" in line and not line.startswith("dpkg")}))
    names = {entry.split("=")[0] for entry in found}
    missing = [p for p in SYSROOT_PACKAGES if p not in names]
    if missing:
        raise LabError(f"host packages missing: {', '.join(missing)} (run ./lab setup)")
    return found


def ensure_sysroot(workdir: Path, arch: Arch, ops: Ops, pins: tuple[str, ...]) -> Path:
    """<workdir>/sysroot/<debian arch>: the pinned .debs unpacked, reused while the pins
    hold. The host's apt is untouched: a private apt state lives in <workdir>/apt-<arch>."""
    root = workdir / "sysroot" / arch.debian_arch
    stamp = root / ".bpflab-packages"
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{arch.debian_arch}.lock", "w") as lock:
        # Builds of other keys for this arch may be compiling against the sysroot.
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.exists() and stamp.read_text() == "\n".join(pins):
            return root
        staging = root.with_name(f"{root.name}.tmp-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        for deb in _fetch(workdir, arch, ops, pins):
            ops.run(extract_argv(deb, staging), quiet=True)
        (staging / stamp.name).write_text("\n".join(pins))
        shutil.rmtree(root, ignore_errors=True)
        staging.rename(root)
    return root


def _fetch(workdir: Path, arch: Arch, ops: Ops, pins: tuple[str, ...]) -> list[Path]:
    host_arch = ops.run(["dpkg", "--print-architecture"], quiet=True).stdout.strip()
    apt = PrivateApt(workdir / f"apt-{arch.debian_arch}", ops,
                     architectures=tuple(dict.fromkeys((host_arch, arch.debian_arch))))
    apt.prepare(private_sources(host_sources(), host_codename()))
    debs = workdir / "sysroot" / f"{arch.debian_arch}.debs"
    debs.mkdir(parents=True, exist_ok=True)
    found = []
    for pin in pins:
        package, version = pin.split("=", 1)
        found.append(_download(apt, ops, debs, package, version, arch.debian_arch))
    return found


def _download(apt: PrivateApt, ops: Ops, dest: Path, package: str, version: str,
              debian_arch: str) -> Path:
    pattern = f"{package}_{version.replace(':', '%3a')}_{debian_arch}.deb"
    found = sorted(dest.glob(pattern))
    if not found:
        # PrivateApt.download cannot name a foreign arch; its options can.
        ops.run(apt_download_argv(apt._options(), package, version, debian_arch), cwd=dest)
        found = sorted(dest.glob(pattern))
    if not found:
        raise LabError(f"apt-get download {package}:{debian_arch}={version} left no "
                       f"{pattern} in {dest}")
    return found[0]


def _step(ops: Ops, argv: list[str], what: str) -> str:
    """Run one build step; a failure raises with the tool's first error lines."""
    done = ops.run(argv, check=False)
    if done.returncode != 0:
        errors = "\n".join(first_errors(done.stdout.splitlines(), limit=10))
        raise LabError(f"C suite: {what} failed ({done.returncode}):\n{errors}")
    return done.stdout


def _write_generated(path: Path, text: str, expect: str, what: str) -> None:
    # Ops folds stderr into stdout: a warning there would corrupt the header.
    if not text.lstrip().startswith(expect):
        raise LabError(f"C suite: {what} printed more than a header:\n{text[:600]}")
    path.write_text(text)


def _build_into(out: Path, src: Path, vmlinux: Path, tc: Toolchain, ops: Ops) -> None:
    out.mkdir(parents=True)
    _write_generated(out / "vmlinux.h", _step(ops, vmlinux_h_argv(vmlinux), "vmlinux.h"),
                     "#ifndef __VMLINUX_H__", "bpftool btf dump")
    _step(ops, bpf_object_argv(src, out, tc), "clang (BPF object)")
    _write_generated(out / f"{SKELETON_NAME}.skel.h", _step(ops, skeleton_argv(out), "skeleton"),
                     "/*", "bpftool gen skeleton")
    _step(ops, link_argv(src, out, tc), f"{tc.cc} (user space)")


def check_binary(path: Path, arch: Arch) -> None:
    info = elf_info(path)
    want = ELF_MACHINES.get(arch.debian_arch)
    if want is not None and info.machine != want:
        raise LabError(f"{path}: ELF machine {info.machine}, expected {want} for {arch.name}")
    if not info.static:
        raise LabError(f"{path}: dynamically linked; the guest needs a static binary")


def build_c_suite(workdir: Path, arch: Arch, vmlinux: Path, ops: Ops) -> Path:
    """The static bpf_map_in_map binary for arch, against vmlinux's BTF (cached)."""
    if not vmlinux.is_file():
        raise LabError(f"{vmlinux}: no such kernel image (vmlinux with BTF expected)")
    pins = library_versions(ops)
    key = cache_key(arch, sources_digest(), btf_digest(vmlinux), pins)
    final = workdir / "csuite" / key
    if (final / BINARY).is_file():
        return final / BINARY
    final.parent.mkdir(parents=True, exist_ok=True)
    with open(final.parent / f".{key}.lock", "w") as lock:
        # Two runs wanting the same key (two guests of one arch) build it once.
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / BINARY).is_file():
            return final / BINARY
        sysroot = None if arch.is_native else ensure_sysroot(workdir, arch, ops, pins)
        staging = final.with_name(f"{key}.tmp-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        try:
            _build_into(staging, SOURCES, vmlinux, toolchain(arch, sysroot), ops)
            check_binary(staging / BINARY, arch)
        except LabError:
            shutil.rmtree(staging, ignore_errors=True)  # no half-built tree left behind
            raise
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
    return final / BINARY
