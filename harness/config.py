"""lab.yaml and kernels/arches.yaml, loaded once into frozen dataclasses.

Unknown keys and wrong types are refused with the file, the key and what was
expected; no raw dict travels past this module."""

from __future__ import annotations

import platform
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from harness.errors import ConfigError

PROJECT = Path(__file__).resolve().parent.parent
ARCHES_FILE = PROJECT / "kernels" / "arches.yaml"
DEFAULT_LAB = PROJECT / "lab.yaml"
BASE_CONFIGS = ("tinyconfig", "defconfig", "allnoconfig")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
T = TypeVar("T")


@dataclass(frozen=True)
class Arch:
    name: str
    aliases: tuple[str, ...]
    linux_arch: str
    cross_compile: str
    make_target: str
    kernel_image: str
    fragment: Path
    debian_arch: str
    qemu_binary: str
    machine: str
    cpu: str
    console: str

    @property
    def is_native(self) -> bool:
        return platform.machine() in (self.name, *self.aliases)

    @property
    def cross_prefix(self) -> str:
        """CROSS_COMPILE for this host: empty when building natively."""
        return "" if self.is_native else self.cross_compile


@dataclass(frozen=True)
class Source:
    """Where kernel commits come from: a local git tree, or Debian's archive."""

    git: Path | None
    debian_versions: tuple[str, ...]
    range: str | None
    paths: tuple[str, ...]
    commits: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.git.name if self.git else "debian"


@dataclass(frozen=True)
class BuildSettings:
    base: str
    fragments: tuple[Path, ...]
    jobs: int
    ccache: bool


@dataclass(frozen=True)
class Variant:
    name: str
    patches: tuple[Path, ...]
    arches: tuple[str, ...]
    # Kernel report signatures (prefixes) this variant must produce, e.g. a
    # fault-injection kernel's "KASAN: use-after-free"; their absence is a failure.
    expect_reports: tuple[str, ...] = ()
    # Upstream commits the patches undo: the suites treat them as absent, whatever the
    # kernel's release says, and so expect the old behaviour (e.g. the UAF) on it.
    reverts: tuple[str, ...] = ()
    # Upstream commits the patches bring (a stable backport under test, or the part of
    # a commit a fault-injection patch gives an older kernel): the suites treat them as
    # present, whatever the release says, and so expect the new behaviour.
    backports: tuple[str, ...] = ()


ACCELS = ("auto", "tcg", "kvm")
INITS = ("lean", "systemd")


@dataclass(frozen=True)
class GuestSettings:
    accel: str = "auto"  # auto: probe KVM once per host (bounded), else TCG
    init: str = "lean"  # lean: bpflab-init starts network and sshd; systemd: stock boot
    boot_timeout: float = 90.0  # s from QEMU start to SSH ready
    silence_timeout: float = 30.0  # s without console output: a hang


@dataclass(frozen=True)
class Lab:
    path: Path
    workdir: Path
    source: Source
    arches: tuple[Arch, ...]
    build: BuildSettings
    variants: tuple[Variant, ...]
    guest: GuestSettings = GuestSettings()

    def arch(self, name: str) -> Arch:
        return find_arch(self.arches, name, str(self.path), "--arch")


class _Table:
    """A YAML mapping being read: every key taken is checked, leftovers are errors."""

    def __init__(self, data: Any, file: str, where: str) -> None:
        if not isinstance(data, dict):
            raise ConfigError(file, where or "(top level)", "expected a mapping")
        self.data = dict(data)
        self.file = file
        self.where = where

    def key(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def take(self, name: str, kind: type[T], default: T | None = None,
             required: bool = False) -> T:
        if name not in self.data:
            if required:
                raise ConfigError(self.file, self.key(name), "missing (required)")
            return default  # type: ignore[return-value]
        value = self.data.pop(name)
        if kind is float and isinstance(value, int):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ConfigError(self.file, self.key(name),
                              f"expected {kind.__name__}, got {type(value).__name__} {value!r}")
        return value

    def strings(self, name: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        value = self.take(name, list, list(default))
        for i, item in enumerate(value):
            if isinstance(item, (int, float)) and not isinstance(item, bool):
                item = str(item)
            if not isinstance(item, str):
                raise ConfigError(self.file, f"{self.key(name)}[{i}]",
                                  f"expected a string, got {item!r}")
            value[i] = item
        return tuple(value)

    def sub(self, name: str) -> "_Table":
        return _Table(self.take(name, dict, {}), self.file, self.key(name))

    def done(self) -> None:
        if self.data:
            extra = sorted(self.data)[0]
            raise ConfigError(self.file, self.key(str(extra)), "unknown key")


def load_arches(path: Path = ARCHES_FILE) -> tuple[Arch, ...]:
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(str(path), "(file)", f"readable YAML ({exc})") from exc
    top = _Table(raw, str(path), "")
    arches = []
    for name in list(top.data):
        t = top.sub(str(name))
        fields = {f: t.take(f, str, required=True) for f in (
            "linux_arch", "cross_compile", "make_target", "kernel_image", "fragment",
            "debian_arch", "qemu_binary", "machine", "cpu", "console")}
        aliases = t.strings("aliases")
        t.done()
        fields["fragment"] = path.parent / fields["fragment"]  # type: ignore[assignment]
        arches.append(Arch(name=str(name), aliases=aliases, **fields))  # type: ignore[arg-type]
    return tuple(arches)


def find_arch(arches: tuple[Arch, ...], name: str, file: str, key: str) -> Arch:
    for arch in arches:
        if name == arch.name or name in arch.aliases:
            return arch
    known = ", ".join(a.name for a in arches)
    raise ConfigError(file, key, f"unknown arch {name!r} (expected one of: {known})")


def _resolve(base: Path, value: str) -> Path:
    """Paths in a lab file are relative to the file, falling back to the project."""
    p = Path(value).expanduser()
    if p.is_absolute():
        return p
    return base / p if (base / p).exists() else PROJECT / p


def _source(t: _Table, base: Path) -> Source:
    git = t.take("git", str)
    deb = t.sub("debian")
    versions = deb.strings("versions")
    deb.done()
    if bool(git) == bool(versions):
        raise ConfigError(t.file, t.key("git"),
                          "exactly one of source.git (a kernel tree) or "
                          "source.debian.versions (Debian releases) is expected")
    for i, v in enumerate(versions):
        if not re.fullmatch(r"\d+\.\d+(\.\d+)?(-\S+)?", v):
            raise ConfigError(t.file, f"{deb.key('versions')}[{i}]",
                              f"expected a kernel version like 6.1.192, got {v!r}")
    range_ = t.take("range", str)
    commits = t.strings("commits")
    paths = t.strings("paths")
    t.done()
    git_path = _resolve(base, git) if git else None
    if git_path and not (git_path / ".git").exists() and not (git_path / "HEAD").exists():
        raise ConfigError(t.file, t.key("git"), f"a git repository, but {git_path} is not one")
    return Source(git_path, versions, range_, paths, commits)


def _build(t: _Table, base: Path) -> BuildSettings:
    base_cfg = t.take("base", str, "tinyconfig")
    if base_cfg not in BASE_CONFIGS:
        raise ConfigError(t.file, t.key("base"),
                          f"one of {', '.join(BASE_CONFIGS)}, got {base_cfg!r}")
    frags = []
    for i, name in enumerate(t.strings("fragments")):
        path = _resolve(base, name)
        if not path.is_file():
            raise ConfigError(t.file, f"{t.key('fragments')}[{i}]",
                              f"an existing Kconfig fragment, but {path} does not exist")
        frags.append(path)
    jobs = t.take("jobs", int, 0)
    if jobs < 0:
        raise ConfigError(t.file, t.key("jobs"), f"a count >= 0 (0 = all cores), got {jobs}")
    ccache = t.take("ccache", bool, True)
    t.done()
    return BuildSettings(base_cfg, tuple(frags), jobs, ccache)


def _guest(t: _Table) -> GuestSettings:
    accel = t.take("accel", str, "auto")
    if accel not in ACCELS:
        raise ConfigError(t.file, t.key("accel"), f"one of {', '.join(ACCELS)}, got {accel!r}")
    init = t.take("init", str, "lean")
    if init not in INITS:
        raise ConfigError(t.file, t.key("init"), f"one of {', '.join(INITS)}, got {init!r}")
    times = {}
    for name, default in (("boot_timeout", 90.0), ("silence_timeout", 30.0)):
        times[name] = t.take(name, float, default)
        if times[name] <= 0:
            raise ConfigError(t.file, t.key(name), f"seconds > 0, got {times[name]}")
    t.done()
    return GuestSettings(accel, init, times["boot_timeout"], times["silence_timeout"])


def _commit_ids(t: "_Table", key: str) -> tuple[str, ...]:
    ids = t.strings(key)
    for j, cid in enumerate(ids):
        if not re.fullmatch(r"[0-9a-f]{7,40}", cid):
            raise ConfigError(t.file, f"{t.key(key)}[{j}]",
                              f"an upstream commit id (7-40 hex digits), got {cid!r}")
    return ids


def _variants(raw: Any, file: str, base: Path, arches: tuple[Arch, ...]) -> tuple[Variant, ...]:
    if raw is None:
        return (Variant("base", (), ()),)
    if not isinstance(raw, list) or not raw:
        raise ConfigError(file, "variants", "a non-empty list of {name, patches, arches}")
    out = []
    for i, item in enumerate(raw):
        t = _Table(item, file, f"variants[{i}]")
        name = t.take("name", str, required=True)
        if not NAME_RE.fullmatch(name):
            raise ConfigError(file, t.key("name"), f"letters, digits, '.', '_', '-', got {name!r}")
        patches = []
        for j, p in enumerate(t.strings("patches")):
            path = _resolve(base, p)
            if not path.is_file():
                raise ConfigError(file, f"{t.key('patches')}[{j}]",
                                  f"an existing patch file, but {path} does not exist")
            patches.append(path)
        only = tuple(find_arch(arches, a, file, t.key("arches")).name
                     for a in t.strings("arches"))
        expect = t.strings("expect_reports")
        reverts, backports = _commit_ids(t, "reverts"), _commit_ids(t, "backports")
        both = sorted(set(reverts) & set(backports))
        if both:
            raise ConfigError(file, t.key("backports"),
                              f"commits not also in reverts, got {both[0]} in both")
        t.done()
        out.append(Variant(name, tuple(patches), only, expect, reverts, backports))
    names = [v.name for v in out]
    if len(set(names)) != len(names):
        raise ConfigError(file, "variants", f"unique names, got {names}")
    return tuple(out)


def load_lab(path: Path = DEFAULT_LAB, arches_file: Path = ARCHES_FILE) -> Lab:
    path = path.resolve()
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(str(path), "(file)", f"a readable lab file ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), "(file)", f"valid YAML ({exc})".replace("\n", " ")) from exc
    file, base = str(path), path.parent
    top = _Table(raw, file, "")
    known = load_arches(arches_file)
    workdir = Path(top.take("workdir", str, "work")).expanduser()
    workdir = workdir if workdir.is_absolute() else base / workdir
    source = _source(top.sub("source"), base)
    names = top.strings("arches", ("x86_64",))
    if not names:
        raise ConfigError(file, "arches", "at least one arch")
    arches = tuple(find_arch(known, n, file, f"arches[{i}]") for i, n in enumerate(names))
    build = _build(top.sub("build"), base)
    variants = _variants(top.data.pop("variants", None), file, base, arches)
    guest = _guest(top.sub("guest"))
    top.done()
    return Lab(path, workdir, source, arches, build, variants, guest)
