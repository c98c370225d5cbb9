"""The BPF test suites on a guest: copy them in, run them, bring their results back
as cases. The Python suite writes JUnit; the C suite (when built) prints TAP."""

from __future__ import annotations

import hashlib
import io
import re
import shlex
import tarfile
from dataclasses import dataclass
from pathlib import Path

from harness.config import PROJECT
from harness.junit import Case, from_junit, from_tap
from harness.ops import Ops
from harness.results import Status
from harness.ssh import GuestSSH, SSHError

SUITES = PROJECT / "bpf_tests"
REMOTE = "/root/bpf_tests"
SUITE_TIMEOUT = 900.0
C_CLASS = "map_in_map"  # JUnit classname c.map_in_map; kmsg markers map_in_map::<test>
# In a skip reason of either suite: an earlier KASAN report of this boot left the test
# blind (KASAN reports once per boot). The lab reruns such tests on a fresh boot.
BLINDED = "taint bit 5 was already set"


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


@dataclass(frozen=True)
class SuiteRun:
    cases: tuple[Case, ...]
    log: str  # what the suites printed
    error: str = ""  # why the suites could not run or report, if so


def run_suites(ssh: GuestSSH, out_dir: Path, env: dict[str, str],
               c_binary: Path | None = None, has_commits: list[str] | None = None) -> SuiteRun:
    """Copy the suites in, run the Python suite (and the C one when given). With
    has_commits, the suites judge by that list of present upstream commits."""
    exports = install(ssh, out_dir, env, c_binary, has_commits)
    python = run_python(ssh, out_dir, exports)
    if python.error or not c_binary:
        return python
    return combine(python, run_c(ssh, exports))


def install(ssh: GuestSSH, out_dir: Path, env: dict[str, str], c_binary: Path | None = None,
            has_commits: list[str] | None = None) -> str:
    """Copy the suites (and the C binary) to the guest; returns the env exports."""
    out_dir.mkdir(parents=True, exist_ok=True)
    extra = {"c/bpf_map_in_map": c_binary} if c_binary else {}
    env = dict(env)
    if has_commits is not None:
        listing = out_dir / "has_commits.txt"
        listing.write_text("".join(f"{c}\n" for c in has_commits))
        extra["has_commits.txt"] = listing
        env["BPFLAB_HAS_COMMITS"] = f"{REMOTE}/has_commits.txt"
    tarball = out_dir / "bpf_tests.tar.gz"
    tarball.write_bytes(suites_tarball(extra=extra))
    ssh.run(f"rm -rf {REMOTE} && mkdir -p {REMOTE}", check=True)
    ssh.put(tarball, f"{REMOTE}.tar.gz")
    ssh.run(f"tar -xzf {REMOTE}.tar.gz -C {REMOTE}", check=True)
    return " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())


def run_python(ssh: GuestSSH, out_dir: Path, exports: str, only: tuple[str, ...] = (),
               junit_name: str = "python.xml") -> SuiteRun:
    """The Python suite, or only these pytest node ids (python/test_x.py::test_y)."""
    targets = " ".join(shlex.quote(n) for n in only) or "python"
    py = ssh.run(f"cd {REMOTE} && {exports} python3 -m pytest {targets} -p no:cacheprovider "
                 f"-q -rs --junitxml={REMOTE}/{junit_name}", timeout=SUITE_TIMEOUT)
    log = f"$ python suite {' '.join(only)} (exit {py.exit_status})\n{py.stdout}{py.stderr}"
    try:
        ssh.get(f"{REMOTE}/{junit_name}", out_dir / junit_name)
    except SSHError as exc:
        return SuiteRun((), log, f"python suite left no JUnit: {exc}")
    return SuiteRun(tuple(from_junit(out_dir / junit_name, "python")), log)


def run_c(ssh: GuestSSH, exports: str, only: tuple[str, ...] = ()) -> SuiteRun:
    """The C suite, or only these of its tests (by name)."""
    names = "".join(f" {shlex.quote(n)}" for n in only)
    c = ssh.run(f"cd {REMOTE} && {exports} ./c/bpf_map_in_map{names}", timeout=SUITE_TIMEOUT)
    cases = from_tap(c.stdout.splitlines(), "c", C_CLASS)
    if c.exit_status not in (0, 1):
        cases.append(Case("c", C_CLASS, "suite-exit", Status.ERROR,
                          message=f"C suite exited {c.exit_status}"))
    return SuiteRun(tuple(cases),
                    f"$ C suite{names} (exit {c.exit_status})\n{c.stdout}{c.stderr}")


def combine(*runs: SuiteRun) -> SuiteRun:
    return SuiteRun(tuple(c for r in runs for c in r.cases), "\n".join(r.log for r in runs),
                    "; ".join(r.error for r in runs if r.error))


def blinded(cases: tuple[Case, ...]) -> tuple[str, ...]:
    """The tests a KASAN report earlier in the boot left blind, as the suite selects
    them: pytest node ids for Python (classname test_x.Cls -> python/test_x.py::Cls),
    names for C."""
    out = []
    for c in cases:
        if c.status is not Status.SKIP or BLINDED not in c.message:
            continue
        if c.suite == "python":
            module, *classes = c.classname.split(".")
            out.append("::".join([f"python/{module}.py", *classes, c.name]))
        else:
            out.append(c.name)
    return tuple(out)


@dataclass(frozen=True)
class Pending:
    suite: str  # "python" or "c"
    only: tuple[str, ...] = ()  # () is the whole suite


class Rounds:
    """The suites over as many boots as KASAN needs. It reports once per boot, so once
    a test has tainted the kernel, the tests it left blind and whatever was still to
    run go to a fresh boot. A fresh boot KASAN tainted while booting runs nothing
    (the caller bounds the boots). A rerun that leaves the same tests blind is not
    repeated: they stay skipped with the reason."""

    def __init__(self, with_c: bool) -> None:
        self.queue = [Pending("python")] + ([Pending("c")] if with_c else [])
        self.cases: dict[tuple[str, str], Case] = {}
        self.logs: list[str] = []
        self.errors: list[str] = []
        self.boots = 0

    def done(self) -> bool:
        return not self.queue

    def run(self, ssh: GuestSSH, out_dir: Path, env: dict[str, str],
            c_binary: Path | None = None, has_commits: list[str] | None = None) -> None:
        """One boot's share: install, then run queued work until done or tainted."""
        self.boots += 1
        exports = install(ssh, out_dir, env, c_binary, has_commits)
        if self.boots > 1 and kasan_tainted(ssh):
            # KASAN reported while the kernel booted: useless for the reruns
            self.logs.append(f"$ boot {self.boots}: KASAN had reported before any test")
            return
        while self.queue:
            item = self.queue.pop(0)
            if item.suite == "python":
                name = "python.xml" if self.boots == 1 else f"python-{self.boots}.xml"
                run = run_python(ssh, out_dir, exports, item.only, name)
            else:
                run = run_c(ssh, exports, item.only)
            self.logs.append(run.log)
            if run.error:
                self.errors.append(run.error)
            for case in run.cases:
                self.cases[(case.suite, case.nodeid)] = case
            blind = blinded(run.cases)
            if blind and blind != item.only:
                self.queue.insert(0, Pending(item.suite, blind))
            if self.queue and kasan_tainted(ssh):
                return

    def result(self) -> SuiteRun:
        return SuiteRun(tuple(self.cases.values()), "\n".join(self.logs),
                        "; ".join(self.errors))


def kasan_tainted(ssh: GuestSSH) -> bool:
    """Taint bit 5: KASAN has reported in this boot (it reports once per boot)."""
    out = ssh.run("cat /proc/sys/kernel/tainted", timeout=30, check=True).stdout
    return bool(int(out.strip() or 0) & (1 << 5))


DECLARED_RE = re.compile(r'introduced\("([0-9a-f]{7,40})"')


def declared_commits(root: Path = SUITES) -> list[str]:
    """Upstream commit ids the suites' tests declare (@introduced("...") in Python)."""
    ids: set[str] = set()
    for path in root.rglob("*.py"):
        ids.update(DECLARED_RE.findall(path.read_text(errors="replace")))
    return sorted(ids)


def present_commits(ops: Ops, repo: Path, sha: str, ids: list[str]) -> list[str] | None:
    """For a git tree that knows the upstream ids: those that are ancestors of sha.
    None when the tree lacks them (Debian's imported releases): the suites then
    decide from the kernel release and the stable backport table."""
    present, known = [], 0
    for cid in ids:
        full = ops.run(["git", "-C", str(repo), "rev-parse", "--verify", "--quiet",
                        f"{cid}^{{commit}}"], check=False, quiet=True).stdout.strip()
        if not full:
            continue
        known += 1
        anc = ops.run(["git", "-C", str(repo), "merge-base", "--is-ancestor", full, sha],
                      check=False, quiet=True)
        if anc.returncode == 0:
            present.append(cid)
    return present if known else None
