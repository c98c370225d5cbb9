"""Debian guest root filesystems: built by mmdebstrap from rootfs/, cached by content.

The cache key hashes every recipe file under rootfs/ (README.md aside), the arch and
the lab's public key, so an image is rebuilt only when one of those changes."""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Iterator

import yaml

from harness.binfmt import ensure_binfmt
from harness.config import PROJECT, Arch
from harness.debsrc import AptSource, host_codename, host_sources
from harness.errors import ConfigError, LabError
from harness.keys import LabKey, ensure_lab_key
from harness.ops import Ops
from harness.results import write_json

RECIPE = PROJECT / "rootfs"
HOST_KEY = "etc/ssh/ssh_host_ed25519_key.pub"
NOT_RECIPE = ("README.md",)


@dataclass(frozen=True)
class Recipe:
    root: Path
    suite: str
    variant: str
    size: str
    packages: tuple[str, ...]
    dpkg_excludes: tuple[str, ...]

    @property
    def hook(self) -> Path:
        return self.root / "hooks" / "customize.sh"

    @property
    def overlay(self) -> Path:
        return self.root / "overlay"


@dataclass(frozen=True)
class Rootfs:
    """A built image and what a client needs to trust the guest booted from it."""

    arch: str
    key: str
    dir: Path
    image: Path
    host_key: Path  # the guest's SSH host public key, for pinning
    lab_key: LabKey
    cached: bool
    build_seconds: float


def load_recipe(root: Path = RECIPE) -> Recipe:
    path = root / "recipe.yaml"
    try:
        raw: Any = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(str(path), "(file)", f"readable YAML ({exc})") from exc
    if not isinstance(raw, dict):
        raise ConfigError(str(path), "(top level)", "a mapping")
    expected = {"suite": str, "variant": str, "size": str, "packages": list,
                "dpkg_excludes": list}
    for key, value in raw.items():
        if key not in expected:
            raise ConfigError(str(path), str(key), "unknown key")
        if not isinstance(value, expected[key]):
            raise ConfigError(str(path), key, f"expected {expected[key].__name__}")
    for key in ("suite", "packages"):
        if key not in raw:
            raise ConfigError(str(path), key, "missing (required)")
    return Recipe(root, raw["suite"], raw.get("variant", "minbase"), raw.get("size", "1G"),
                  tuple(str(p) for p in raw["packages"]),
                  tuple(str(p) for p in raw.get("dpkg_excludes", [])))


def recipe_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name not in NOT_RECIPE
                  and "__pycache__" not in p.parts)


def cache_key(root: Path, arch: Arch, authorized_key: str) -> str:
    """Hash of the recipe (paths, exec bits, contents), the arch and the lab key."""
    h = hashlib.sha256(f"arch={arch.debian_arch}\nkey={authorized_key}\n".encode())
    for path in recipe_files(root):
        mode = "x" if path.stat().st_mode & 0o111 else "-"
        h.update(f"{path.relative_to(root)} {mode}\n".encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def mirror_lines(sources: list[AptSource], host_suite: str, suite: str) -> list[str]:
    """apt lines for `suite` (and its -updates/-security) from the host's own archives.

    A host on another release still names its archives: the suffix of each host
    suite (bookworm-updates -> -updates) is carried over to the wanted suite."""
    lines: list[str] = []
    for src in sources:
        for s in src.suites:
            if s != host_suite and not s.startswith(host_suite + "-"):
                continue
            line = (f"deb [signed-by={src.signed_by}] {src.uri} "
                    f"{suite}{s[len(host_suite):]} {' '.join(src.components)}")
            if line not in lines:
                lines.append(line)
    if not lines:
        raise LabError(f"no Debian {host_suite} archive in the host's apt sources: "
                       "cannot pick a mirror for the guest rootfs")
    return lines


def mmdebstrap_argv(recipe: Recipe, arch: Arch, tree: Path, mirrors: list[str],
                    foreign: bool = False) -> list[str]:
    """foreign: ensure_binfmt() has made the arch runnable; mmdebstrap's own check
    of that would need arch-test, which the lab does not otherwise use."""
    argv = ["mmdebstrap", f"--variant={recipe.variant}", f"--arch={arch.debian_arch}",
            f"--include={','.join(recipe.packages)}",
            "--aptopt=Acquire::Retries \"3\"",
            f"--customize-hook={recipe.hook}"]
    argv += [f"--dpkgopt=path-exclude={p}" for p in recipe.dpkg_excludes]
    argv += ["--skip=check/qemu"] if foreign else []
    return argv + [recipe.suite, str(tree), *mirrors]


def mke2fs_argv(tree: Path, image: Path, size: str) -> list[str]:
    return ["mke2fs", "-q", "-F", "-t", "ext4", "-L", "bpflab-root", "-d", str(tree),
            str(image), size]


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One builder per arch at a time; the second waits and then finds the cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _cached(final: Path, arch: Arch, key: str, lab_key: LabKey) -> Rootfs | None:
    meta = final / "meta.json"
    if not meta.exists() or not (final / "rootfs.ext4").exists():
        return None
    seconds = float(json.loads(meta.read_text()).get("build_seconds", 0.0))
    return Rootfs(arch.name, key, final, final / "rootfs.ext4",
                  final / "ssh_host_ed25519_key.pub", lab_key, True, seconds)


def ensure_rootfs(workdir: Path, arch: Arch, ops: Ops, recipe_root: Path = RECIPE) -> Rootfs:
    """The cached image for this recipe and arch, built first when missing."""
    recipe = load_recipe(recipe_root)
    lab_key = ensure_lab_key(workdir, ops)
    key = cache_key(recipe_root, arch, lab_key.public_text())
    final = workdir / "rootfs" / f"{arch.name}-{key}"
    with _locked(workdir / "rootfs" / f".lock-{arch.name}"):
        found = _cached(final, arch, key, lab_key)
        if found:
            return found
        _build(recipe, arch, ops, final, lab_key)
        _prune(final, ops)
    built = _cached(final, arch, key, lab_key)
    assert built is not None
    return replace(built, cached=False)


def _prune(keep: Path, ops: Ops) -> None:
    """Images of older recipes for the same arch: ~300 MB each, never booted again."""
    arch_name = keep.name.rsplit("-", 1)[0]
    for old in keep.parent.glob(f"{arch_name}-*"):
        if old != keep and old.is_dir() and old.name.rsplit("-", 1)[0] == arch_name:
            remove_tree(old, ops)


def mounts_under(path: Path, mountinfo: str) -> list[Path]:
    """Mount points at or below path in /proc/self/mountinfo text, deepest first."""
    found = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        point = Path(_unescape(fields[4]))
        if point == path or path in point.parents:
            found.append(point)
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as \\ooo octal."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def remove_tree(path: Path, ops: Ops) -> None:
    """rmtree that first unmounts what a killed mmdebstrap left mounted in its chroot
    (/proc, /sys, and the host's own /dev/shm bind-mounted: a plain rmtree would empty
    the host's /dev/shm). A mount that stays is an error naming it, never a deletion."""
    if not path.exists():
        return
    real = path.resolve()
    for point in mounts_under(real, Path("/proc/self/mountinfo").read_text()):
        ops.run(["umount", "--lazy", str(point)], check=False, quiet=True)
    left = mounts_under(real, Path("/proc/self/mountinfo").read_text())
    if left:
        raise LabError(f"cannot unmount {', '.join(map(str, left))}: left by an "
                       f"interrupted rootfs build; unmount them, then remove {path}")
    shutil.rmtree(path, ignore_errors=True)


def _build(recipe: Recipe, arch: Arch, ops: Ops, final: Path, lab_key: LabKey) -> None:
    staging = final.with_name(f".build-{final.name}")
    remove_tree(staging, ops)
    tree = staging / "tree"
    staging.mkdir(parents=True)
    ensure_binfmt(arch, ops)
    mirrors = mirror_lines(host_sources(), host_codename(), recipe.suite)
    log = staging / "build.log"
    started = time.monotonic()
    env = {"BPFLAB_OVERLAY": str(recipe.overlay),
           "BPFLAB_AUTHORIZED_KEY": str(lab_key.public)}
    argv = mmdebstrap_argv(recipe, arch, tree, mirrors, foreign=not arch.is_native)
    code = ops.stream(argv, log, env=env)
    if code != 0:
        raise LabError(f"mmdebstrap failed ({code}) for {arch.name}: see {log}")
    shutil.copy(tree / HOST_KEY, staging / "ssh_host_ed25519_key.pub")
    if ops.stream(mke2fs_argv(tree, staging / "rootfs.ext4", recipe.size), log) != 0:
        raise LabError(f"mke2fs failed for {arch.name}: see {log}")
    remove_tree(tree, ops)
    seconds = round(time.monotonic() - started, 1)
    write_json(staging / "meta.json", {
        "arch": arch.name, "debian_arch": arch.debian_arch, "suite": recipe.suite,
        "packages": list(recipe.packages), "mirrors": mirrors, "size": recipe.size,
        "build_seconds": seconds, "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                            time.gmtime())})
    remove_tree(final, ops)
    staging.rename(final)
