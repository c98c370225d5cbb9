"""The BPF test suites on a guest: copy them in, run them, bring their results back
as cases. The Python suite writes JUnit (and a line per finished test on stdout, so
results survive a guest that dies before the end); the C suite prints TAP."""

from __future__ import annotations

import hashlib
import io
import json
import shlex
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from harness.config import PROJECT
from harness.junit import JUNIT_LIMIT, Case, JUnitError, case_of, from_junit, from_tap
from harness.model import Status
from harness.ssh import OUTPUT_LIMIT, CommandResult, SSHError, Watch

SUITES = PROJECT / "bpf_tests"
REMOTE = "/root/bpf_tests"
FINAL_SCAN_S = 180.0  # two kmemleak scans of a 2 GiB guest under TCG and KASAN
C_CLASS = "map_in_map"  # JUnit classname c.map_in_map; kmsg markers map_in_map::<test>
# In a skip reason of either suite: an earlier KASAN report of this boot left the test
# blind (KASAN reports once per boot). The lab reruns such tests on a fresh boot.
BLINDED = "taint bit 5 was already set"
CASE_LINE = "bpflab-case "  # the Python suite's per-test line on stdout (conftest.py)
PYTEST_EXITS = {2: "interrupted", 3: "internal error", 4: "usage error",
                5: "no tests collected"}


def suites_fingerprint(root: Path = SUITES) -> str:
    """Hash of every suite file: a changed test means a target is redone."""
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and _shipped(p)):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def _shipped(path: Path) -> bool:
    """What the guest gets and what decides results: not caches, not documentation."""
    return "__pycache__" not in path.parts and ".pytest_cache" not in path.parts \
        and path.suffix not in (".pyc", ".o", ".md")


def suites_tarball(root: Path = SUITES, extra: dict[str, Path] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path in sorted(p for p in root.rglob("*") if p.is_file() and _shipped(p)):
            tar.add(path, arcname=str(path.relative_to(root)))
        for name, path in (extra or {}).items():
            tar.add(path, arcname=name)
    return buf.getvalue()


class Shell(Protocol):
    """What the suites need of a guest: commands and files (harness.ssh.GuestSSH)."""

    def run(self, command: str, timeout: float = 60.0, check: bool = False,
            watch: Watch | None = None, limit: int = OUTPUT_LIMIT) -> CommandResult: ...

    def put(self, local: Path, remote: str) -> None: ...

    def get(self, remote: str, local: Path) -> None: ...


@dataclass(frozen=True)
class Guard:
    """Bounds of one suite command: its time, a watch that ends it when the guest is
    gone or wedged, and how much of its output and JUnit is read."""

    timeout: float = 1800.0
    watch: Watch | None = None
    output_limit: int = OUTPUT_LIMIT
    junit_limit: int = JUNIT_LIMIT


@dataclass(frozen=True)
class SuiteRun:
    cases: tuple[Case, ...]
    log: str  # what the suite printed
    error: str = ""  # why the suite as a whole cannot be trusted, if so


@dataclass(frozen=True)
class Install:
    env: dict[str, str]
    c_binary: Path | None = None
    commits_file: Path | None = None  # what the kernel carries (harness.commits.render)


def install(ssh: Shell, out_dir: Path, setup: Install) -> str:
    """Copy the suites (and the C binary, and the commits file) to the guest; returns
    the environment exports for the suite commands."""
    out_dir.mkdir(parents=True, exist_ok=True)
    extra = {"c/bpf_map_in_map": setup.c_binary} if setup.c_binary else {}
    env = dict(setup.env)
    if setup.commits_file is not None:
        extra["commits.txt"] = setup.commits_file
        env["BPFLAB_COMMITS"] = f"{REMOTE}/commits.txt"
    tarball = out_dir / "bpf_tests.tar.gz"
    tarball.write_bytes(suites_tarball(extra=extra))
    ssh.run(f"rm -rf {REMOTE} && mkdir -p {REMOTE}", check=True)
    ssh.put(tarball, f"{REMOTE}.tar.gz")
    ssh.run(f"tar -xzf {REMOTE}.tar.gz -C {REMOTE}", check=True)
    return " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())


def run_python(ssh: Shell, out_dir: Path, exports: str, only: tuple[str, ...] = (),
               junit_name: str = "python.xml", guard: Guard = Guard()) -> SuiteRun:
    """The Python suite, or only these pytest node ids (test_x.py::test_y)."""
    targets = " ".join(shlex.quote(f"python/{n}") for n in only) or "python"
    py = ssh.run(f"cd {REMOTE} && {exports} python3 -m pytest {targets} -p no:cacheprovider "
                 f"-q -rs --junitxml={REMOTE}/{junit_name}", timeout=guard.timeout,
                 watch=guard.watch, limit=guard.output_limit)
    log = f"$ python suite {' '.join(only)} (exit {py.exit_status})\n{py.stdout}{py.stderr}"
    streamed = python_cases(py.stdout)
    if py.exit_status not in (0, 1):
        tail = " | ".join((py.stdout + py.stderr).strip().splitlines()[-3:])
        what = PYTEST_EXITS.get(py.exit_status, "unexpected")
        return SuiteRun(streamed, log, f"pytest exited {py.exit_status} ({what}): {tail}")
    try:
        ssh.get(f"{REMOTE}/{junit_name}", out_dir / junit_name)
        cases = tuple(from_junit(out_dir / junit_name, "python", guard.junit_limit))
    except (SSHError, JUnitError) as exc:
        return SuiteRun(streamed, log, f"python suite JUnit not usable: {exc}")
    if not cases:
        return SuiteRun((), log, "the python suite reported no test")
    return SuiteRun(cases, log, _truncated(py))


def run_c(ssh: Shell, exports: str, only: tuple[str, ...] = (),
          guard: Guard = Guard()) -> SuiteRun:
    """The C suite, or only these of its tests (by id, map_in_map::name)."""
    names = "".join(f" {shlex.quote(n.split('::')[-1])}" for n in only)
    c = ssh.run(f"cd {REMOTE} && {exports} ./c/bpf_map_in_map{names}", timeout=guard.timeout,
                watch=guard.watch, limit=guard.output_limit)
    tap = from_tap(c.stdout.splitlines(), "c", C_CLASS)
    log = f"$ C suite{names} (exit {c.exit_status})\n{c.stdout}{c.stderr}"
    problem = tap.problem()
    if not problem and c.exit_status not in (0, 1):
        problem = f"the C suite exited {c.exit_status}"
    return SuiteRun(tap.cases, log, problem or _truncated(c))


def _truncated(result: CommandResult) -> str:
    if not result.truncated:
        return ""
    return f"output cut: {result.truncated} bytes past limits.output_bytes were dropped"


_OUTCOMES = {"passed": Status.PASS, "failed": Status.FAIL, "skipped": Status.SKIP,
             "error": Status.ERROR}


def python_cases(stdout: str) -> tuple[Case, ...]:
    """The per-test lines the Python suite prints as each test ends; a line that
    does not parse is ignored (the JUnit file, or the missing result, says more)."""
    cases = []
    for line in stdout.splitlines():
        at = line.find(CASE_LINE)  # pytest's progress dots may come first on the line
        if at < 0:
            continue
        try:
            data = json.loads(line[at + len(CASE_LINE):])
            status = _OUTCOMES[str(data["outcome"])]
            case = case_of(str(data["test"]), "python", status, str(data.get("message", "")))
            cases.append(Case(case.suite, case.classname, case.name, status,
                              float(data.get("seconds", 0.0)), case.message))
        except (ValueError, KeyError, TypeError):
            continue
    return tuple(cases)


def partial_cases(suite: str, result: CommandResult | None) -> tuple[Case, ...]:
    """What a suite had reported before its command was cut short."""
    if result is None:
        return ()
    if suite == "python":
        return python_cases(result.stdout)
    return from_tap(result.stdout.splitlines(), "c", C_CLASS).cases


def blinded(cases: tuple[Case, ...]) -> tuple[str, ...]:
    """The tests a KASAN report earlier in the boot left blind, by test id."""
    return tuple(c.test_id for c in cases if c.status is Status.SKIP and BLINDED in c.message)


@dataclass(frozen=True)
class Pending:
    suite: str  # "python" or "c"
    only: tuple[str, ...] = ()  # () is the whole suite


@dataclass
class BootEnd:
    """How one boot's share of the suites ended: with work left, and why."""

    fault: str = ""  # the guest died or wedged: why
    progress: bool = True  # some test got a result on this boot


@dataclass
class Rounds:
    """The suites over as many boots as they need. KASAN reports once per boot, so once
    a test has tainted the kernel, the tests it left blind and whatever was still to run
    go to a fresh boot; a guest that dies or wedges during a test gets that test an
    error, and the rest a fresh boot. Every test of the catalogue ends with a result:
    one that never got one is an error saying why."""

    catalog: dict[str, tuple[str, ...]]  # suite -> the test ids it must report
    queue: list[Pending] = field(default_factory=list)
    cases: dict[str, Case] = field(default_factory=dict)
    logs: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # suite-level errors
    faults: list[str] = field(default_factory=list)
    boots: int = 0

    def __post_init__(self) -> None:
        self.queue = self.queue or [Pending(s) for s in self.catalog]

    def done(self) -> bool:
        return not self.queue

    def left(self) -> int:
        return sum(len(p.only) or len(self.catalog[p.suite]) for p in self.queue)

    def run(self, ssh: Shell, out_dir: Path, setup: Install, guard: Guard,
            running: Callable[[], str | None]) -> BootEnd:
        """One boot's share: install, then run queued work until done, tainted, or the
        guest is gone (`running` names the test the console says was running)."""
        self.boots += 1
        before = len(self.cases)
        try:
            exports = install(ssh, out_dir, setup)
            if self.boots > 1 and kasan_tainted(ssh):
                self.logs.append(f"$ boot {self.boots}: KASAN had reported before any test")
                return BootEnd(progress=False)
            while self.queue:
                item = self.queue.pop(0)
                try:
                    self._one(ssh, out_dir, exports, item, guard)
                except SSHError as exc:
                    return self._fault(item, exc, running())
                if self.queue and kasan_tainted(ssh):
                    break
            if "python" in self.catalog:
                self._final_scan(ssh, exports, guard)
        except SSHError as exc:
            self.faults.append(f"boot {self.boots}: {exc}")
            return BootEnd(str(exc), len(self.cases) > before)
        return BootEnd()

    def _one(self, ssh: Shell, out_dir: Path, exports: str, item: Pending,
             guard: Guard) -> None:
        if item.suite == "python":
            name = "python.xml" if self.boots == 1 else f"python-{self.boots}.xml"
            run = run_python(ssh, out_dir, exports, item.only, name, guard)
        else:
            run = run_c(ssh, exports, item.only, guard)
        self.logs.append(run.log)
        if run.error:
            self.problems.append(f"{item.suite}: {run.error}")
        self._take(run.cases)
        blind = blinded(run.cases)
        if blind and blind != item.only:
            self.queue.insert(0, Pending(item.suite, blind))

    def _final_scan(self, ssh: Shell, exports: str, guard: Guard) -> None:
        """kmemleak once more after this boot's tests (bpfkit/leaks.py): what it finds
        in BPF code goes to the kernel log, outside any test, so it is a report against
        the kernel's health (a leak no test claimed)."""
        done = ssh.run(f"cd {REMOTE}/python && {exports} python3 -m bpfkit.leaks",
                       timeout=min(guard.timeout, FINAL_SCAN_S), watch=guard.watch,
                       limit=guard.output_limit)
        self.logs.append(f"$ final kmemleak scan (exit {done.exit_status}, "
                         f"{done.seconds:.1f} s)\n{done.stdout}"
                         f"{done.stderr}")

    def _take(self, cases: tuple[Case, ...]) -> None:
        for case in cases:
            self.cases[case.test_id] = case

    def _fault(self, item: Pending, exc: SSHError, running: str | None) -> BootEnd:
        """The guest died or wedged during `item`: keep what it reported, blame the
        running test, queue the rest for a fresh boot."""
        why = str(exc)
        self.faults.append(f"boot {self.boots}: {why}")
        self.logs.append(f"$ {item.suite} suite cut short: {why}\n"
                         + (exc.partial.stdout if exc.partial else ""))
        before = len(self.cases)
        self._take(partial_cases(item.suite, exc.partial))
        wanted = item.only or self.catalog[item.suite]
        if running in wanted and running not in self.cases:
            self.cases[running] = case_of(running, item.suite, Status.ERROR,
                                          f"the guest died during this test: {why}")
        rest = tuple(t for t in wanted if t not in self.cases)
        if rest:
            self.queue.insert(0, Pending(item.suite, rest))
        return BootEnd(why, len(self.cases) > before)

    def result(self, why_missing: str) -> SuiteRun:
        """Every catalogued test's case; one without a result is an error naming why
        (`why_missing`: the boot budget ran out, a fresh boot did not come up, ...)."""
        missing = [(suite, t) for suite, ids in self.catalog.items() for t in ids
                   if t not in self.cases]
        reason = why_missing or (self.problems[-1] if self.problems else
                                 "the suite did not report it")
        out = list(self.cases.values())
        out += [case_of(t, suite, Status.ERROR, f"no result: {reason}") for suite, t in missing]
        out += [Case("lab", "lab", f"{p.split(':', 1)[0]}-suite", Status.ERROR, message=p)
                for p in self.problems]
        return SuiteRun(tuple(out), "\n".join(self.logs), "; ".join(self.problems))


def kasan_tainted(ssh: Shell) -> bool:
    """Taint bit 5: KASAN has reported in this boot (it reports once per boot)."""
    out = ssh.run("cat /proc/sys/kernel/tainted", timeout=30, check=True).stdout
    return bool(int(out.strip() or 0) & (1 << 5))
