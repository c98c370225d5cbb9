"""lab.yaml and kernels/arches.yaml, loaded once into frozen dataclasses.

Unknown keys, duplicate keys, wrong types and absurd numbers are refused with the
file, the key and what was expected; no raw dict travels past this module."""

from __future__ import annotations

import os
import platform
import re
from dataclasses import dataclass, fields, replace
from pathlib import Path



from harness.errors import ConfigError
from harness.yamlfile import Table, join, read_yaml

PROJECT = Path(__file__).resolve().parent.parent
ARCHES_FILE = PROJECT / "kernels" / "arches.yaml"
PROFILES_FILE = PROJECT / "kernels" / "profiles.yaml"
DEFAULT_LAB = PROJECT / "lab.yaml"
CACHE_ENV = "BPFLAB_CACHE"


def shared_cache() -> Path:
    """Caches shared by every clone and lab on this host, keyed by content (kernels by
    what they are built from, ccache by what it compiles): $BPFLAB_CACHE, else
    $XDG_CACHE_HOME/bpflab, else ~/.cache/bpflab. A hit never changes a result."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "bpflab"
BASE_CONFIGS = ("tinyconfig", "defconfig", "allnoconfig")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
SERIES_RE = re.compile(r"[0-9]+\.[0-9]+")
QEMU_VERSION_RE = re.compile(r"[0-9]+\.[0-9]+(\.[0-9]+)?")
SERIES_FIELD = "{series}"  # in a variant's patch path: the kernel's series

# The one vocabulary of guest accelerators and inits: QEMU's -accel argument and the
# guest's init= path for each. "auto" probes KVM once per host, else TCG.
ACCEL_ARGS: dict[str, str] = {
    "tcg": "tcg,thread=multi",  # one host thread per vCPU; TCG is otherwise single-threaded
    "kvm": "kvm",
}
INIT_PATHS: dict[str, str] = {
    "lean": "/usr/sbin/bpflab-init",  # brings up eth0 and sshd, nothing else
    "systemd": "/lib/systemd/systemd",  # the stock boot
}
ACCELS = ("auto", *ACCEL_ARGS)
INITS = tuple(INIT_PATHS)
DAY_S = 86400  # the longest timeout: anything longer is a typo, not a plan
MAX_JOBS = 1024
MIN_BYTES, MAX_BYTES = 4096, 2**34  # 4 KiB .. 16 GiB
EXPECT_FORM = "a mapping {test: <test id>, signatures: [...]}"


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


MEMORY_RE = re.compile(r"[1-9][0-9]*[MG]")
MAX_VCPUS = 64


@dataclass(frozen=True)
class Remote:
    """A machine the user already has, reached over SSH: the lab copies a kernel to
    it, kexecs into it, runs the suites and reads its kernel log over SSH, then
    reboots it back into its own kernel. Without a serial console the kernel log is
    `dmesg --follow`; `console` is a command printing the machine's console instead
    (an IPMI serial-over-LAN, say). `power_cycle` is run when the machine does not
    come back (a PDU or IPMI command line); without it such a machine is a hang, and
    the lab says it may still run the lab's kernel."""

    host: str
    port: int
    user: str
    host_key: str  # pinned: 'ssh-ed25519 AAAA...'
    key: Path | None  # the private key the machine accepts; None: the lab's key
    boot_timeout: float
    cmdline: tuple[str, ...]  # the lab kernel's command line; (): the machine's own
    console: str = ""
    power_cycle: str = ""


@dataclass(frozen=True)
class Profile:
    """A machine the suites run on: an arch, QEMU's machine and CPU with their options,
    vCPUs, memory, what the kernel command line adds, and the Kconfig fragment its
    kernel needs (None: the arch's kernel as it is; profiles needing the same fragment
    share their builds). The arch's own profile is named after the arch."""

    name: str
    arch: Arch
    machine: str  # QEMU -machine, options included: "virt,mte=on"
    cpu: str
    smp: int = 2
    memory: str = "2G"
    cmdline: tuple[str, ...] = ()
    fragment: Path | None = None
    why: str = ""
    series: tuple[str, ...] = ()  # only kernels of these series (its fragment's reach)
    remote: Remote | None = None  # a real machine over SSH, not a QEMU guest
    qemu_min: str = ""  # the oldest QEMU whose emulation this machine needs ("" any)
    # what one series needs on top of the fragment, e.g. ("6.12", .../kasan-hw-tags-6.12.config)
    series_fragments: tuple[tuple[str, Path], ...] = ()

    def runs_on(self, series: str) -> bool:
        return not self.series or series in self.series

    def fragments(self, series: str) -> list[Path]:
        """The Kconfig the profile's kernel of this series adds to the lab's."""
        if self.fragment is None:
            return []
        return [self.fragment] + [f for s, f in self.series_fragments if s == series]

    @property
    def flavour(self) -> str:
        """What the profile's kernel differs by ("" none): its build directory's
        suffix, so that a profile's kernel never reconfigures the arch's."""
        return self.fragment.stem if self.fragment else ""


def default_profile(arch: Arch) -> Profile:
    return Profile(arch.name, arch, arch.machine, arch.cpu)


@dataclass(frozen=True)
class Source:
    """Where kernel commits come from: a local git tree, or Debian's archive."""

    git: Path | None
    debian_versions: tuple[str, ...]
    range: str | None
    paths: tuple[str, ...]
    commits: tuple[str, ...]
    # ./lab nightly: the branch to follow (fetched from remote into source.git)
    remote: str | None = None
    branch: str | None = None
    max_commits: int = 8  # commits tested per night at most, the newest kept
    fetch_timeout: float = 300.0  # s

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
class ExpectedReport:
    """A kernel report a variant must produce: the test that triggers it, and the
    signatures (prefixes) accepted from it, e.g. "KASAN: use-after-free Read in"."""

    test: str  # a JUnit test id (file.py::test_name) or a C suite case (suite::case)
    signatures: tuple[str, ...]


@dataclass(frozen=True)
class Variant:
    name: str
    patches: tuple[Path, ...]
    arches: tuple[str, ...]
    # Reports this variant must produce, e.g. a fault-injection kernel's use-after-free
    # under its reproducer; their absence is a failure, their presence no kernel bug.
    expect_reports: tuple[ExpectedReport, ...] = ()
    # Upstream commits the patches undo: the suites treat them as absent, whatever the
    # kernel's release says, and so expect the old behaviour (e.g. the UAF) on it.
    reverts: tuple[str, ...] = ()
    # Upstream commits the patches bring (a stable backport under test, or the part of
    # a commit a fault-injection patch gives an older kernel): the suites treat them as
    # present, whatever the release says, and so expect the new behaviour.
    backports: tuple[str, ...] = ()
    # Only these tests of the suites ("test_x.py::test_y", "map_in_map::name"); () is
    # every test. Set by workflows that run a fix's reproducers alone (./lab backports).
    tests: tuple[str, ...] = ()
    # Kernel series ("6.1", "7.3") the variant is for; () is every series. A patch a
    # series cannot take (e.g. one giving 6.1 what 6.2 brought) names its series here.
    series: tuple[str, ...] = ()

    def runs_on(self, series: str) -> bool:
        return not self.series or series in self.series

    def patches_for(self, series: str) -> tuple[Path, ...]:
        """The patches, "{series}" in a path replaced by the kernel's series: one
        variant (say, a fix taken out) over kernels whose code differs."""
        return tuple(Path(str(p).replace(SERIES_FIELD, series)) for p in self.patches)


@dataclass(frozen=True)
class GuestSettings:
    accel: str = "auto"  # auto: probe KVM once per host (bounded), else TCG
    init: str = "lean"  # lean: bpflab-init starts network and sshd; systemd: stock boot
    boot_timeout: float = 90.0  # s from QEMU start to SSH ready
    silence_timeout: float = 30.0  # s without console output at boot: a hang
    test_timeout: float = 600.0  # s one test may run (begin to end marker): a hang
    suite_timeout: float = 1800.0  # s one suite command may run
    max_boots: int = 8  # boots per target at most
    # kernel command line additions (not in the lab file: tools such as the report
    # recorder boot with kasan_multi_shot)
    cmdline_extra: tuple[str, ...] = ()


@dataclass(frozen=True)
class Limits:
    """Bytes the lab keeps from a guest: a guest that floods must not fill the disk."""

    console_bytes: int = 64 << 20  # console.log per boot
    output_bytes: int = 16 << 20  # stdout/stderr per suite command
    junit_bytes: int = 16 << 20  # a guest JUnit file, read at most


@dataclass(frozen=True)
class KnownReport:
    signature: str
    why: str


@dataclass(frozen=True)
class Lab:
    path: Path
    workdir: Path
    source: Source
    arches: tuple[Arch, ...]
    build: BuildSettings
    variants: tuple[Variant, ...]
    guest: GuestSettings = GuestSettings()
    limits: Limits = Limits()
    # Reports this lab's own environment prints outside any test, declared with why:
    # kept and shown, but they do not fail kernel-health.
    known_reports: tuple["KnownReport", ...] = ()
    # ./lab nightly's history database: a SQLAlchemy URL (postgresql+pg8000://...);
    # "" is SQLite in the workdir
    history: str = ""
    # The matrix's columns beside the arch: each arch's own profile, then the lab's
    # `profiles:` (kernels/profiles.yaml); () is each arch's own profile.
    profiles: tuple[Profile, ...] = ()

    def arch(self, name: str) -> Arch:
        return find_arch(self.arches, name, str(self.path), "--arch")

    @property
    def columns(self) -> tuple[Profile, ...]:
        return self.profiles or tuple(default_profile(a) for a in self.arches)

    def profile(self, name: str) -> Profile:
        """A column by its profile's name, or an arch's own profile by the arch's."""
        for p in self.columns:
            if p.name == name:
                return p
        return default_profile(self.arch(name))


def _count(t: Table, name: str, default: int, lo: int, hi: int, what: str) -> int:
    value = t.take(name, int, default)
    if not lo <= value <= hi:
        raise ConfigError(t.file, t.key(name), f"{what}, got {value}")
    return value


def _seconds(t: Table, name: str, default: float) -> float:
    value = t.take(name, float, default)
    if not 0 < value <= DAY_S:
        raise ConfigError(t.file, t.key(name), f"seconds > 0 and <= {DAY_S} (one day), "
                                               f"got {t.numbers.get(t.key(name), value)}")
    return value


def load_arches(path: Path = ARCHES_FILE) -> tuple[Arch, ...]:
    raw, numbers = read_yaml(path, "arches file")
    top = Table(raw, str(path), "", numbers)
    arches = []
    for name in list(top.data):
        t = top.sub(str(name))
        values = {f: t.take(f, str, required=True) for f in (
            "linux_arch", "cross_compile", "make_target", "kernel_image", "fragment",
            "debian_arch", "qemu_binary", "machine", "cpu", "console")}
        aliases = t.strings("aliases")
        t.done()
        values["fragment"] = path.parent / values["fragment"]  # type: ignore[assignment]
        arches.append(Arch(name=str(name), aliases=aliases, **values))  # type: ignore[arg-type]
    return tuple(arches)


SERIES_FILE = PROJECT / "kernels" / "series.yaml"


@dataclass(frozen=True)
class SeriesFragment:
    """A Kconfig fragment for a range of kernel series (inclusive; "" is open)."""

    fragment: Path
    first: str = ""
    last: str = ""

    def covers(self, series: str) -> bool:
        if not series:
            return False
        at = series_key(series)
        return (not self.first or series_key(self.first) <= at) and \
            (not self.last or at <= series_key(self.last))


def series_key(series: str) -> tuple[int, int]:
    major, _, minor = series.partition(".")
    return int(major), int(minor or 0)


def load_series(path: Path = SERIES_FILE) -> tuple[SeriesFragment, ...]:
    """kernels/series.yaml: what the Kconfig of a range of series needs on top of the
    lab's fragments, so that every series from 6.1 on gets the same kernel."""
    raw, numbers = read_yaml(path, "series file")
    top = Table({"series": raw}, str(path), "", numbers)
    items = top.take("series", list, [])
    out = []
    for i, item in enumerate(items):
        t = Table(item, str(path), f"[{i}]", numbers)
        fragment = path.parent / t.take("fragment", str, required=True)
        first, last = t.take("first", str, ""), t.take("last", str, "")
        t.done()
        for key, value in (("first", first), ("last", last)):
            if value and not re.fullmatch(r"\d+\.\d+", value):
                raise ConfigError(str(path), f"[{i}].{key}", f"a series like 7.0, got {value!r}")
        if not fragment.is_file():
            raise ConfigError(str(path), f"[{i}].fragment",
                              f"an existing Kconfig fragment, but {fragment} does not exist")
        out.append(SeriesFragment(fragment, first, last))
    return tuple(out)


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


def _source(t: Table, base: Path) -> Source:
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
    remote, branch = t.take("remote", str), t.take("branch", str)
    max_commits = _count(t, "max_commits", 8, 1, 10_000, "a count 1..10000")
    fetch_timeout = _seconds(t, "fetch_timeout", 300.0)
    t.done()
    if bool(remote) != bool(branch):
        raise ConfigError(t.file, t.key("branch" if remote else "remote"),
                          "source.remote and source.branch together (the branch to follow "
                          "and where it is fetched from)")
    if remote and not git:
        raise ConfigError(t.file, t.key("git"), "source.git (where the followed branch is "
                          "fetched into) with source.remote")
    git_path = _resolve(base, git) if git else None
    if remote and git:  # made by the first fetch: relative to the lab file
        git_path = Path(os.path.normpath(base / Path(git).expanduser()))
    if git_path and not remote and not (git_path / ".git").exists() \
            and not (git_path / "HEAD").exists():
        raise ConfigError(t.file, t.key("git"), f"a git repository, but {git_path} is not one")
    return Source(git_path, versions, range_, paths, commits, remote, branch, max_commits,
                  fetch_timeout)


def _files(t: Table, name: str, base: Path, what: str,
           series: tuple[str, ...] | None = None) -> tuple[Path, ...]:
    """Existing files. With series (a variant's patches), a path may hold "{series}";
    it must then exist for each series the variant names, and is checked again for the
    series of each kernel built."""
    paths = []
    for i, value in enumerate(t.strings(name)):
        key = f"{t.key(name)}[{i}]"
        if series is not None and SERIES_FIELD in value:
            if "{" in value.replace(SERIES_FIELD, "") or "}" in value.replace(SERIES_FIELD, ""):
                raise ConfigError(t.file, key, f"no field but {SERIES_FIELD}, got {value!r}")
            path = _series_path(base, value)
            for s in series:
                one = Path(str(path).replace(SERIES_FIELD, s))
                if not one.is_file():
                    raise ConfigError(t.file, key, f"an existing {what} for series {s} "
                                      f"(in {t.key('series')}), but {one} does not exist")
            paths.append(path)
            continue
        path = _resolve(base, value)
        if not path.is_file():
            raise ConfigError(t.file, key, f"an existing {what}, but {path} does not exist")
        paths.append(path)
    return tuple(paths)


def _series_path(base: Path, value: str) -> Path:
    """A path holding "{series}", relative to the lab file when the folder before the
    field exists there, else to the project."""
    head = value.split(SERIES_FIELD)[0]
    p = Path(value).expanduser()
    if p.is_absolute():
        return p
    return base / p if head and (base / head).exists() else PROJECT / p


def _build(t: Table, base: Path) -> BuildSettings:
    base_cfg = t.take("base", str, "tinyconfig")
    if base_cfg not in BASE_CONFIGS:
        raise ConfigError(t.file, t.key("base"),
                          f"one of {', '.join(BASE_CONFIGS)}, got {base_cfg!r}")
    frags = _files(t, "fragments", base, "Kconfig fragment")
    jobs = _count(t, "jobs", 0, 0, MAX_JOBS, f"a count 0..{MAX_JOBS} (0 = all cores)")
    ccache = t.take("ccache", bool, True)
    t.done()
    return BuildSettings(base_cfg, frags, jobs, ccache)


def _choice(t: Table, name: str, default: str, choices: tuple[str, ...]) -> str:
    value = t.take(name, str, default)
    if value not in choices:
        raise ConfigError(t.file, t.key(name), f"one of {', '.join(choices)}, got {value!r}")
    return value


def _guest(t: Table) -> GuestSettings:
    d = GuestSettings()
    accel = _choice(t, "accel", d.accel, ACCELS)
    init = _choice(t, "init", d.init, INITS)
    seconds = {f.name: _seconds(t, f.name, getattr(d, f.name))
               for f in fields(GuestSettings) if f.name.endswith("_timeout")}
    max_boots = _count(t, "max_boots", d.max_boots, 1, 64, "boots per target 1..64")
    t.done()
    return replace(d, accel=accel, init=init, max_boots=max_boots,
                   boot_timeout=seconds["boot_timeout"],
                   silence_timeout=seconds["silence_timeout"],
                   test_timeout=seconds["test_timeout"], suite_timeout=seconds["suite_timeout"])


def _limits(t: Table) -> Limits:
    d = Limits()
    sizes = {f.name: _count(t, f.name, getattr(d, f.name), MIN_BYTES, MAX_BYTES,
                            f"bytes {MIN_BYTES}..{MAX_BYTES} (4 KiB..16 GiB)")
             for f in fields(Limits)}
    t.done()
    return Limits(**sizes)


def _commit_ids(t: Table, key: str) -> tuple[str, ...]:
    ids = t.strings(key)
    for j, cid in enumerate(ids):
        if not re.fullmatch(r"[0-9a-f]{7,40}", cid):
            raise ConfigError(t.file, f"{t.key(key)}[{j}]",
                              f"an upstream commit id (7-40 hex digits), got {cid!r}")
    return ids


def _expected_reports(t: Table) -> tuple[ExpectedReport, ...]:
    out = []
    for j, item in enumerate(t.take("expect_reports", list, [])):
        where = f"{t.key('expect_reports')}[{j}]"
        if not isinstance(item, dict):  # the old form: a bare signature, tied to no test
            raise ConfigError(t.file, where, f"{EXPECT_FORM}, got {item!r}")
        r = Table(item, t.file, where, t.numbers)
        test = r.take("test", str, required=True)
        if not test or any(c.isspace() for c in test):
            raise ConfigError(t.file, r.key("test"), "a test id without spaces "
                              f"(file.py::test_name or suite::case), got {test!r}")
        signatures = r.strings("signatures", required=True)
        if not signatures or not all(s.strip() for s in signatures):
            raise ConfigError(t.file, r.key("signatures"), "a non-empty list of non-empty "
                              f"report signatures, got {list(signatures)!r}")
        r.done()
        out.append(ExpectedReport(test, signatures))
    return tuple(out)


def _variants(top: Table, base: Path, arches: tuple[Arch, ...],
              columns: list[str]) -> tuple[Variant, ...]:
    raw, file = top.data.pop("variants", None), top.file
    if raw is None:
        return (Variant("base", (), ()),)
    if not isinstance(raw, list) or not raw:
        raise ConfigError(file, "variants", "a non-empty list of {name, patches, arches}")
    out = []
    for i, item in enumerate(raw):
        t = Table(item, file, f"variants[{i}]", top.numbers)
        name = t.take("name", str, required=True)
        if not NAME_RE.fullmatch(name):
            raise ConfigError(file, t.key("name"), f"letters, digits, '.', '_', '-', got {name!r}")
        series = t.strings("series")
        for j, one in enumerate(series):
            if not SERIES_RE.fullmatch(one):
                raise ConfigError(file, f"{t.key('series')}[{j}]",
                                  f"a kernel series such as \"6.1\" or \"7.3\", got {one!r}")
        patches = _files(t, "patches", base, "patch file", series)
        only = tuple(a if a in columns else find_arch(arches, a, file, t.key("arches")).name
                     for a in t.strings("arches"))  # an arch, or a profile of the lab's
        expect = _expected_reports(t)
        reverts, backports = _commit_ids(t, "reverts"), _commit_ids(t, "backports")
        both = sorted(set(reverts) & set(backports))
        if both:
            raise ConfigError(file, t.key("backports"),
                              f"commits not also in reverts, got {both[0]} in both")
        tests = t.strings("tests")
        for j, test in enumerate(tests):
            if "::" not in test:
                raise ConfigError(file, f"{t.key('tests')}[{j}]", "a test id such as "
                                  f"test_x.py::test_y or map_in_map::name, got {test!r}")
        t.done()
        out.append(Variant(name, patches, only, expect, reverts, backports, tests=tests,
                           series=series))
    names = [v.name for v in out]
    if len(set(names)) != len(names):
        raise ConfigError(file, "variants", f"unique names, got {names}")
    return tuple(out)


def load_lab(path: Path = DEFAULT_LAB, arches_file: Path = ARCHES_FILE,
             profiles_file: Path = PROFILES_FILE) -> Lab:
    path = path.resolve()
    raw, numbers = read_yaml(path, "lab file")
    file, base = str(path), path.parent
    top = Table(raw, file, "", numbers)
    known = load_arches(arches_file)
    workdir = Path(top.take("workdir", str, "work")).expanduser()
    workdir = Path(os.path.normpath(workdir if workdir.is_absolute() else base / workdir))
    source = _source(top.sub("source"), base)
    names = top.strings("arches", ("x86_64",))
    if not names and not top.data.get("profiles") and not top.data.get("machines"):
        raise ConfigError(file, "arches", "at least one arch (or profiles: or machines:)")
    arches = tuple(find_arch(known, n, file, f"arches[{i}]") for i, n in enumerate(names))
    build = _build(top.sub("build"), base)
    profiles = _profiles(top, arches, known, profiles_file)
    machines = _machines(top, base, known)
    if machines:  # real machines are columns after the arches' own and the profiles
        profiles = (profiles or tuple(default_profile(a) for a in arches)) + machines
    columns = [p.name for p in profiles] or [a.name for a in arches]
    arches = tuple(dict.fromkeys([*arches, *(p.arch for p in profiles)]))
    variants = _variants(top, base, arches, columns)
    guest = _guest(top.sub("guest"))
    limits = _limits(top.sub("limits"))
    noise = _known_reports(top)
    history = top.take("history", str, "")
    top.done()
    return Lab(path, workdir, source, arches, build, variants, guest, limits, noise, history,
               profiles)


def _profiles(top: Table, arches: tuple[Arch, ...], known: tuple[Arch, ...],
              path: Path) -> tuple[Profile, ...]:
    """The lab's `profiles:` (names in the profiles file) after each arch's own; ()
    when the lab names none."""
    names = top.strings("profiles")
    if not names:
        return ()
    shipped = load_profiles(path, known)
    chosen = [default_profile(a) for a in arches]
    for i, name in enumerate(names):
        if name not in shipped:
            raise ConfigError(top.file, f"profiles[{i}]", f"a profile of {path} "
                              f"(one of: {', '.join(shipped)}), got {name!r}")
        if any(p.name == name for p in chosen):
            raise ConfigError(top.file, f"profiles[{i}]", f"each profile once, got {name!r} "
                              "again (an arch in arches: brings its own profile)")
        chosen.append(shipped[name])
    return tuple(chosen)


HOST_KEY_RE = re.compile(r"(ssh-ed25519|ecdsa-sha2-nistp(?:256|384|521)|ssh-rsa) "
                         r"[A-Za-z0-9+/]+={0,2}(?: .*)?")
MAX_BOOT_S = 3600


def _machines(top: Table, base: Path, arches: tuple[Arch, ...]) -> tuple[Profile, ...]:
    """The lab's `machines:`, real machines over SSH, each a column of its own."""
    raw, file = top.data.pop("machines", None), top.file
    if raw is None:
        return ()
    if not isinstance(raw, list) or not raw:
        raise ConfigError(file, "machines", "a non-empty list of {name, arch, address, "
                          "host_key, ...}")
    found: list[Profile] = []
    for i, item in enumerate(raw):
        t = Table(item, file, f"machines[{i}]", top.numbers)
        name = t.take("name", str, required=True)
        if not NAME_RE.fullmatch(name) or any(p.name == name for p in found):
            raise ConfigError(file, t.key("name"), f"a name of its own of letters, digits, "
                              f"'.', '_', '-', got {name!r}")
        arch = find_arch(arches, t.take("arch", str, required=True), file, t.key("arch"))
        host, port = _address(t)
        host_key = t.take("host_key", str, required=True).strip()
        if not HOST_KEY_RE.fullmatch(host_key):
            raise ConfigError(file, t.key("host_key"), "the machine's public host key as "
                              "its .pub file or ssh-keyscan gives it ('ssh-ed25519 AAAA...')")
        key_text = t.take("key", str, "")
        key = Path(os.path.expanduser(key_text)) if key_text else None
        if key is not None and not key.is_absolute():
            key = base / key
        if key is not None and not key.is_file():
            raise ConfigError(file, t.key("key"), f"an ed25519 private key file the machine "
                              f"accepts, but {key} does not exist")
        boot_timeout = t.take("boot_timeout", float, 300.0)
        if not 10 <= boot_timeout <= MAX_BOOT_S:
            raise ConfigError(file, t.key("boot_timeout"), f"seconds, 10 to {MAX_BOOT_S}, "
                              f"got {boot_timeout!r}")
        remote = Remote(host, port, t.take("user", str, "root"), host_key, key,
                        boot_timeout, _words(t, "cmdline", ""),
                        t.take("console", str, ""), t.take("power_cycle", str, ""))
        fragment = t.take("fragment", str, "")
        frag_path = (base / fragment) if fragment else None
        if frag_path is not None and not frag_path.is_file():
            raise ConfigError(file, t.key("fragment"), f"an existing Kconfig fragment, "
                              f"but {frag_path} does not exist")
        t.done()
        own = default_profile(arch)
        found.append(replace(own, name=name, fragment=frag_path, remote=remote,
                             why=f"{remote.user}@{host}:{port}"))
    return tuple(found)


def _address(t: Table) -> tuple[str, int]:
    """host, host:port or [v6]:port; port 22 when not said."""
    text = t.take("address", str, required=True).strip()
    found = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\d+))?|([^\s:\[\]]+)(?::(\d+))?", text)
    port = int((found.group(2) or found.group(4) or 22)) if found else 0
    if not found or not 0 < port < 65536:
        raise ConfigError(t.file, t.key("address"), f"host, host:port or [v6]:port, got "
                          f"{text!r}")
    return found.group(1) or found.group(3), port


def _words(t: Table, name: str, also_bad: str) -> tuple[str, ...]:
    words = t.strings(name)
    for j, word in enumerate(words):
        if not word or any(c.isspace() or c in also_bad for c in word):
            bad = "spaces" + (f" or {also_bad!r}" if also_bad else "")
            raise ConfigError(t.file, f"{t.key(name)}[{j}]", f"one argument without {bad}, "
                              f"got {word!r}")
    return words


def load_profiles(path: Path = PROFILES_FILE,
                  arches: tuple[Arch, ...] | None = None) -> dict[str, Profile]:
    """kernels/profiles.yaml: each machine profile by name, validated with file:key."""
    arches = arches if arches is not None else load_arches()
    raw, numbers = read_yaml(path, "profiles file")
    top = Table(raw, str(path), "", numbers)
    found: dict[str, Profile] = {}
    for name in list(top.data):
        t = top.sub(str(name))
        if not NAME_RE.fullmatch(str(name)):
            raise ConfigError(t.file, str(name), "a name of letters, digits, '.', '_', '-'")
        arch = find_arch(arches, t.take("arch", str, required=True), t.file, t.key("arch"))
        base = default_profile(arch)
        machine, cpu = t.take("machine", str, base.machine), t.take("cpu", str, base.cpu)
        options = _words(t, "machine_options", ",")  # key=value, after the machine type
        cmdline = _words(t, "cmdline", "")
        smp = _count(t, "smp", base.smp, 1, MAX_VCPUS, f"vCPUs 1..{MAX_VCPUS}")
        memory = t.take("memory", str, base.memory)
        if not MEMORY_RE.fullmatch(memory):
            raise ConfigError(t.file, t.key("memory"), f"QEMU memory such as 2G or 512M, "
                              f"got {memory!r}")
        fragment = t.take("fragment", str)
        frag_path = path.parent / fragment if fragment else None
        if frag_path is not None and not frag_path.is_file():
            raise ConfigError(t.file, t.key("fragment"), f"an existing Kconfig fragment, "
                              f"but {frag_path} does not exist")
        why = t.take("why", str, "")
        series = t.strings("series")
        for j, one in enumerate(series):
            if not SERIES_RE.fullmatch(one):
                raise ConfigError(t.file, f"{t.key('series')}[{j}]",
                                  f"a kernel series such as \"6.12\" or \"7.3\", got {one!r}")
        by_series = []
        for one, file in t.take("series_fragments", dict, {}).items():
            key = f"{t.key('series_fragments')}.{one}"
            if not isinstance(one, str) or not SERIES_RE.fullmatch(one):
                raise ConfigError(t.file, key, f"a kernel series in quotes such as \"6.12\" "
                                  f"(YAML reads 6.10 as 6.1), got {one!r}")
            if frag_path is None:
                raise ConfigError(t.file, key, "a fragment of the profile's own first "
                                  "(series_fragments add to it)")
            if not isinstance(file, str) or not (path.parent / file).is_file():
                raise ConfigError(t.file, key, f"an existing Kconfig fragment next to "
                                  f"{path.name}, got {file!r}")
            by_series.append((str(one), path.parent / file))
        qemu_min = t.take("qemu_min", str, "")
        if qemu_min and not QEMU_VERSION_RE.fullmatch(qemu_min):
            raise ConfigError(t.file, t.key("qemu_min"), f"a QEMU version such as \"10.0\", "
                              f"got {qemu_min!r}")
        t.done()
        profile = Profile(str(name), arch, ",".join([machine, *options]), cpu, smp, memory,
                          cmdline, frag_path, why, series, qemu_min=qemu_min,
                          series_fragments=tuple(by_series))
        if str(name) == arch.name and replace(profile, why="") != base:
            raise ConfigError(t.file, str(name), "the arch's own profile, as arches.yaml "
                              "gives it: another name for another machine")
        found[str(name)] = profile
    return found


def _known_reports(top: Table) -> tuple[KnownReport, ...]:
    out = []
    for i, item in enumerate(top.take("known_reports", list, [])):
        t = Table(item, top.file, f"known_reports[{i}]", top.numbers)
        signature, why = t.take("signature", str, required=True), t.take("why", str, required=True)
        t.done()
        if not signature.strip() or not why.strip():
            raise ConfigError(top.file, f"known_reports[{i}]", "a signature and why, both non-empty")
        out.append(KnownReport(signature, why))
    return tuple(out)
