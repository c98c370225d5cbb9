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


def suites_fingerprint(root: Path = SUITES) -> str:
    """Hash of every suite file: a changed test means a target is redone."""
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and _shipped(p)):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def _shipped(path: Path) -> bool:
    return "__pycache__" not in path.parts and ".pytest_cache" not in path.parts \
        and path.suffix not in (".pyc", ".o")


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
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    cases: list[Case] = []
    logs: list[str] = []
    py = ssh.run(f"cd {REMOTE} && {exports} python3 -m pytest python -p no:cacheprovider "
                 f"-q -rs --junitxml={REMOTE}/python.xml", timeout=SUITE_TIMEOUT)
    logs.append(f"$ python suite (exit {py.exit_status})\n{py.stdout}{py.stderr}")
    try:
        ssh.get(f"{REMOTE}/python.xml", out_dir / "python.xml")
        cases += from_junit(out_dir / "python.xml", "python")
    except SSHError as exc:
        return SuiteRun(tuple(cases), "\n".join(logs), f"python suite left no JUnit: {exc}")
    if c_binary:
        c = ssh.run(f"cd {REMOTE} && {exports} ./c/bpf_map_in_map", timeout=SUITE_TIMEOUT)
        logs.append(f"$ C suite (exit {c.exit_status})\n{c.stdout}{c.stderr}")
        cases += from_tap(c.stdout.splitlines(), "c", C_CLASS)
        if c.exit_status not in (0, 1):
            cases.append(Case("c", C_CLASS, "suite-exit", Status.ERROR,
                              message=f"C suite exited {c.exit_status}"))
    return SuiteRun(tuple(cases), "\n".join(logs))


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
