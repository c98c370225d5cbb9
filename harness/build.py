"""Kernel builds: one out-of-tree build directory per arch and config, reused from
commit to commit; artifacts in a content-keyed cache; a failed build is a result."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from harness import kconfig
from harness.errors import ConfigError
from harness.config import (PROJECT, Arch, Lab, SeriesFragment, load_series,
                            shared_cache)
from harness.gitrepo import Checkout, makefile_version, series_of
from harness.model import Status
from harness.model import Target as Target  # the older home
from harness.ops import Ops
from harness.progress import Progress
from harness.results import write_json

OBJECT_RE = re.compile(r"^\s+(CC|AS|CC \[M\])\s")
ERROR_RE = re.compile(r"(error:|Error \d+|\*\*\* |undefined reference|not found)")
# Reproducible identity; an empty LOCALVERSION keeps setlocalversion from adding
# "+" for a git checkout, so uname -r in the guest is the plain release.
KBUILD_ENV = {"KBUILD_BUILD_USER": "bpflab", "KBUILD_BUILD_HOST": "bpflab",
              "KBUILD_BUILD_TIMESTAMP": "1970-01-01", "LC_ALL": "C", "LOCALVERSION": ""}
# What a cache entry holds besides meta.json; all of them, or it is no entry.
ARTIFACTS = ("image", "vmlinux", "config", "System.map", "build.log")


@dataclass(frozen=True)
class BuildResult:
    target: Target
    status: Status
    key: str
    log: Path
    artifacts: Path | None = None
    errors: tuple[str, ...] = ()
    cached: bool = False
    meta: dict[str, object] = field(default_factory=dict)

    @property
    def image(self) -> Path | None:
        return self.artifacts / "image" if self.artifacts else None


def make_argv(arch: Arch, src: Path, build_dir: Path, jobs: int, ccache: bool,
              *targets: str) -> list[str]:
    """The make command line for one arch; the same compiler for config and build."""
    argv = ["make", "-C", str(src), f"O={build_dir}", f"ARCH={arch.linux_arch}", f"-j{jobs}"]
    if arch.cross_prefix:
        argv.append(f"CROSS_COMPILE={arch.cross_prefix}")
    if ccache:
        argv += [f"CC=ccache {arch.cross_prefix}gcc", "HOSTCC=ccache gcc"]
    return argv + list(targets)


def first_errors(log_lines: list[str], limit: int = 8) -> tuple[str, ...]:
    """The compiler's first complaints, else the end of the log."""
    hits = [line.strip() for line in log_lines if ERROR_RE.search(line)]
    return tuple(hits[:limit] or [line.strip() for line in log_lines[-limit:]])


def sha256_file(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def read_entry(entry: Path) -> tuple[dict[str, object], str]:
    """A cache entry's meta.json, and what is wrong with the entry ("" if whole)."""
    try:
        meta = json.loads((entry / "meta.json").read_text())
    except FileNotFoundError:
        return {}, "meta.json missing"
    except (OSError, ValueError) as exc:
        return {}, f"meta.json unreadable: {exc}"
    if not isinstance(meta, dict):
        return {}, "meta.json is not an object"
    missing = [name for name in ARTIFACTS if not (entry / name).is_file()]
    if missing:
        return meta, f"{', '.join(missing)} missing"
    if sha256_file(entry / "image") != meta.get("sha256_image"):
        return meta, "image sha256 differs from meta.json"
    # Entries stored before vmlinux_size was recorded are checked by their image only.
    size = meta.get("vmlinux_size")
    if size is not None and (entry / "vmlinux").stat().st_size != size:
        return meta, "vmlinux size differs from meta.json"
    return meta, ""


def cached_build(target: Target, key: str) -> BuildResult | None:
    """The whole cache entry of key, or None (missing or broken: never removed here)."""
    done = shared_cache() / "kernels" / key
    meta, why = read_entry(done)
    if why:
        return None
    return BuildResult(target, Status.PASS, key, done / "build.log", done, cached=True,
                       meta=meta)


@contextmanager
def exclusive(path: Path, what: str, wait: bool = True) -> Iterator[bool]:
    """An flock on path, which then holds our pid for whoever comes next. Yields
    whether it is held: without wait, only if it was free; with wait, always, after
    saying once who holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        held = _flock(fd, what, wait)
        if held:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield held
    finally:
        os.close(fd)


def _flock(fd: int, what: str, wait: bool) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        if not wait:
            return False
    holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
    print(f"waiting for {what} (held by pid {holder})", flush=True)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return True


def compiler_version(ops: Ops, arch: Arch) -> str:
    out = ops.run([f"{arch.cross_prefix}gcc", "--version"], quiet=True)
    return out.stdout.splitlines()[0].strip()


def parse_ccache_stats(text: str) -> dict[str, int]:
    """`ccache --print-stats` (tab-separated) into hits and misses."""
    raw = {}
    for line in text.splitlines():
        key, _, value = line.partition("\t")
        if value.strip().isdigit():
            raw[key.strip()] = int(value)
    hits = raw.get("direct_cache_hit", 0) + raw.get("preprocessed_cache_hit", 0)
    return {"hits": hits, "misses": raw.get("cache_miss", 0)}


@dataclass
class Builder:
    lab: Lab
    ops: Ops
    checkout: Checkout
    layers: tuple[SeriesFragment, ...] = field(default_factory=load_series)
    _series: dict[str, str] = field(default_factory=dict)

    @property
    def fragments(self) -> list[Path]:
        return list(self.lab.build.fragments)

    def frags_for(self, arch: Arch, series: str = "",
                  machine: Sequence[Path] = ()) -> list[Path]:
        """The lab's fragments, the arch's, the series layers (kernels/series.yaml),
        then the machine profile's for the series (a KASAN mode, say), which have the
        last word."""
        layers = [s.fragment for s in self.layers if s.covers(series)]
        return self.fragments + [arch.fragment] + layers + list(machine)

    def jobs(self) -> int:
        return self.lab.build.jobs or os.cpu_count() or 1

    def key(self, target: Target) -> str:
        arch = target.arch
        extra = [target.commit.tree, arch.name, self.lab.build.base,
                 compiler_version(self.ops, arch), str(self.lab.build.ccache),
                 repr(sorted(KBUILD_ENV.items()))]
        series = self.series(target)
        frags = kconfig.fingerprint(self.frags_for(arch, series,
                                                   target.machine.fragments(series)) +
                                    list(self.patches(target)), extra)
        return f"{arch.name}-{frags}"

    def build_dir(self, arch: Arch, series: str = "", flavour: str = "") -> Path:
        """One per arch, base config, kernel series (6.1, 7.3) and machine profile's
        fragment: adjacent commits of a series build incrementally, a series never
        inherits another's stale objects (tools/ of 6.1 fail a 7.3 build), and a KASAN
        mode never rebuilds the arch's kernel. A lab fragment change reconfigures it in
        place: kbuild rebuilds only what depends on the changed options."""
        name = f"{arch.name}-{self.lab.build.base}" + (f"-{series}" if series else "") + \
            (f"-{flavour}" if flavour else "")
        return self.lab.workdir / "build" / name

    def dir_for(self, target: Target) -> Path:
        return self.build_dir(target.arch, self.series(target), target.machine.flavour)

    def series(self, target: Target) -> str:
        """The kernel series of the commit, from its top Makefile (VERSION, PATCHLEVEL)."""
        sha = target.commit.sha
        if target.commit.series:
            return target.commit.series
        if sha not in self._series:
            self._series[sha] = series_of(makefile_version(self.ops, self.checkout.origin, sha))
        return self._series[sha]

    def patches(self, target: Target) -> tuple[Path, ...]:
        """The variant's patches for the kernel's series; one missing is the lab file's
        error, named with the series."""
        series = self.series(target)
        found = target.variant.patches_for(series)
        for i, patch in enumerate(found):
            if not patch.is_file():
                raise ConfigError(str(self.lab.path), f"variants[{target.variant.name}]"
                                  f".patches[{i}]", f"a patch for series {series or '?'} "
                                  f"({target.commit.name}), but {patch} does not exist")
        return found

    def cache_dir(self, key: str) -> Path:
        return shared_cache() / "kernels" / key  # as cached_build reads it

    def build_lock(self, bdir: Path) -> Path:
        """Held for configure, make and storing: one make per build directory."""
        return bdir.with_name(f"{bdir.name}.lock")

    def lookup(self, target: Target) -> BuildResult | None:
        """The cached build of target. A broken entry is a miss: said, and removed
        unless a build holds the build directory (its store replaces the entry)."""
        return self._lookup(target, self.key(target), locked=False)

    def _lookup(self, target: Target, key: str, locked: bool) -> BuildResult | None:
        done = self.cache_dir(key)
        if not done.exists():
            return None
        found = cached_build(target, key)
        if found:
            return found
        why = read_entry(done)[1]
        print(f"[build {target.label}] cache miss: {done} is broken ({why})", flush=True)
        if locked:
            shutil.rmtree(done, ignore_errors=True)
        else:
            bdir = self.dir_for(target)
            with exclusive(self.build_lock(bdir), str(bdir), wait=False) as held:
                if held:
                    shutil.rmtree(done, ignore_errors=True)
        return None

    def build(self, target: Target, force: bool = False) -> BuildResult:
        """Build one target, or return its cached artifacts (unless forced)."""
        key = self.key(target)
        hit = None if force else self._hit(target, key, locked=False)
        if hit:
            return hit
        bdir = self.dir_for(target)
        bdir.mkdir(parents=True, exist_ok=True)
        # One build at a time per source checkout: the tree must stay at the commit
        # (and its patches) until make is done, whichever arch is building.
        checkout = self.checkout.path
        with exclusive(self.build_lock(bdir), str(bdir)), \
                exclusive(checkout.parent / f".{checkout.name}.lock", str(checkout)):
            # Another lab may have built it while this one waited; and a fragment or
            # patch may have changed meanwhile: the key is what is configured now.
            key = self.key(target)
            hit = None if force else self._hit(target, key, locked=True)
            return hit or self._build_locked(target, key, bdir)

    def _hit(self, target: Target, key: str, locked: bool) -> BuildResult | None:
        hit = self._lookup(target, key, locked)
        if hit:
            print(f"[build {target.label}] cache hit: {hit.artifacts}", flush=True)
        return hit

    def _build_locked(self, target: Target, key: str, bdir: Path) -> BuildResult:
        logs = self.lab.workdir / "logs"
        log = logs / f"build-{key}-{target.commit.short}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(f"# build {target.label} {target.commit.sha} key {key}\n")
        progress = Progress(f"build {target.label}")
        started = time.monotonic()
        self.checkout.switch(target.commit.sha)
        for patch in self.patches(target):
            why = self.checkout.apply(patch)
            if why:
                return BuildResult(target, Status.FAIL, key, log, errors=(why,))
        progress.set_stage("configure")
        series = self.series(target)
        errors = self._configure(target.arch, bdir, log, series,
                                 target.machine.fragments(series))
        if errors:
            progress.finish(f"config error: {'; '.join(errors)}")
            return BuildResult(target, Status.FAIL, key, log, errors=tuple(errors))
        configured = time.monotonic()
        progress.set_stage("compile")
        self._ccache(["--zero-stats"])
        rc = self.ops.stream(
            make_argv(target.arch, self.checkout.path, bdir, self.jobs(),
                      self.lab.build.ccache, target.arch.make_target),
            log, env=self._env(),
            on_line=lambda line: progress.tick() if OBJECT_RE.match(line) else None)
        if rc != 0:
            progress.finish(f"FAILED (make exit {rc}), log {log}")
            return BuildResult(target, Status.FAIL, key, log,
                               errors=first_errors(log.read_text(errors="replace").splitlines()))
        durations = {"configure": round(configured - started, 1),
                     "compile": round(time.monotonic() - configured, 1),
                     "total": round(time.monotonic() - started, 1)}
        meta = self._meta(target, key, bdir, progress.count, durations)
        artifacts = self._store(target, key, bdir, log, meta)
        stats = parse_ccache_stats(self._ccache(["--print-stats"]))
        meta["ccache"] = stats
        progress.finish(f"built {meta['kernel_release']} ({progress.count} objects, "
                        f"ccache {stats['hits']} hits, {stats['misses']} misses)")
        return BuildResult(target, Status.PASS, key, artifacts / "build.log", artifacts,
                           meta=meta)

    def _meta(self, target: Target, key: str, bdir: Path, objects: int,
              durations: dict[str, float]) -> dict[str, object]:
        return {"commit": target.commit.sha, "name": target.commit.name,
                "tree": target.commit.tree, "arch": target.arch.name,
                "variant": target.variant.name, "key": key,
                "patches": [str(p.relative_to(PROJECT)) if p.is_relative_to(PROJECT) else str(p)
                            for p in self.patches(target)],
                "compiler": compiler_version(self.ops, target.arch),
                "kernel_release": (bdir / "include/config/kernel.release").read_text().strip(),
                "objects_compiled": objects, "durations": durations}

    def _env(self) -> dict[str, str]:
        return {**KBUILD_ENV, "CCACHE_DIR": str(shared_cache() / "ccache")}

    def _ccache(self, args: list[str]) -> str:
        if not self.lab.build.ccache:
            return ""
        return self.ops.run(["ccache", *args], env=self._env(), check=False, quiet=True).stdout

    def _configure(self, arch: Arch, bdir: Path, log: Path, series: str = "",
                   machine: Sequence[Path] = ()) -> list[str]:
        """base config + fragments (merge_config.sh) + olddefconfig, then check every
        requested option; returns what went wrong. An unchanged .config keeps its
        mtime, so a reconfigure alone causes no rebuild."""
        dot = bdir / ".config"
        old = (dot.read_bytes(), dot.stat()) if dot.exists() else None
        src = self.checkout.path
        make = make_argv(arch, src, bdir, self.jobs(), self.lab.build.ccache)
        frags = self.frags_for(arch, series, machine)
        steps = [make + [self.lab.build.base],
                 [str(src / "scripts/kconfig/merge_config.sh"), "-m", "-O", str(bdir),
                  str(dot), *map(str, frags)],
                 make + ["olddefconfig"]]
        for argv in steps:
            rc = self.ops.stream(argv, log, env={**self._env(), "ARCH": arch.linux_arch})
            if rc != 0:
                return list(first_errors(log.read_text(errors="replace").splitlines()))
        if old and dot.read_bytes() == old[0]:
            os.utime(dot, ns=(old[1].st_atime_ns, old[1].st_mtime_ns))
        final = kconfig.parse(dot.read_text().splitlines())
        return [f"config: {m}" for m in kconfig.check(kconfig.requested(frags), final)]

    def _store(self, target: Target, key: str, bdir: Path, log: Path,
               meta: dict[str, object]) -> Path:
        """Copy the artifacts into the cache, whole or not at all."""
        final = self.cache_dir(key)
        tmp = final.with_name(f".{final.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        shutil.copy2(bdir / target.arch.kernel_image, tmp / "image")
        for name in ("vmlinux", ".config", "System.map"):
            shutil.copy2(bdir / name, tmp / name.lstrip("."))
        shutil.copy2(log, tmp / "build.log")
        meta["sha256_image"] = sha256_file(tmp / "image")
        meta["vmlinux_size"] = (tmp / "vmlinux").stat().st_size
        write_json(tmp / "meta.json", meta)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        return final
