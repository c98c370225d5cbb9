"""bpflab's front door: parse flags, load the lab, call one harness function, and map
its result to an exit code: 0 as expected, 1 a test, build, boot or kernel report was
not, 2 the lab itself failed (or the input is wrong), 130 interrupted."""

from __future__ import annotations

import dataclasses
import shlex
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable

from invoke.collection import Collection
from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import task

from harness import main
from harness.config import DEFAULT_LAB, PROJECT, Lab, load_lab
from harness.errors import LabError, UserError
from harness.model import Selection, TaskResult, Verdict
from harness.guest import stop_all
from harness.ops import Ops

LAB_HELP = "lab file (default: the built-in lab.yaml)"
ENGINE_HELP = {"scheduler": "a Dask scheduler (tls://HOST:8786; README, Across machines); "
                            "default: a local cluster in this process",
               "insecure": "allow a plain tcp:// scheduler beyond loopback"}
EXIT = {Verdict.OK: 0, Verdict.FAILED: 1, Verdict.LAB: 2}


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM (CI timeouts, kill) unwinds like Ctrl-C: guests down


def _crash_log(lab: Lab | None) -> Path:
    """Where an unexpected failure's traceback goes: the lab's logs, else /tmp."""
    where = lab.workdir / "logs" if lab else Path(tempfile.gettempdir())
    try:
        where.mkdir(parents=True, exist_ok=True)
    except OSError:
        where = Path(tempfile.gettempdir())
    path = where / f"crash-{time.strftime('%Y%m%dT%H%M%S')}.log"
    path.write_text(traceback.format_exc())
    return path


def _run(lab: str, body: Callable[[main.Session], TaskResult | Verdict],
         scheduler: str = "", insecure: bool = False) -> None:
    """Run a task's body; every way it can end becomes one exit code and one line."""
    signal.signal(signal.SIGTERM, _terminate)
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # started in the background
        signal.signal(signal.SIGINT, signal.default_int_handler)
    loaded: Lab | None = None
    try:
        loaded = load_lab(Path(lab) if lab else DEFAULT_LAB)
        result = body(main.Session(loaded, Ops(), scheduler, insecure))
    except UserError as exc:
        raise Exit(f"error: {exc}", EXIT[Verdict.LAB]) from None
    except LabError as exc:
        raise Exit(f"lab error: {exc}", EXIT[Verdict.LAB]) from None
    except KeyboardInterrupt:
        raise Exit("interrupted", 130) from None
    except Exception as exc:  # a bug or the machine (disk full): never exit 1
        path = _crash_log(loaded)
        raise Exit(f"lab error: unexpected {type(exc).__name__}: {exc} (traceback in "
                   f"{path})", EXIT[Verdict.LAB]) from None
    finally:
        stop_all()  # no QEMU, make, git or apt outlives the task
    done = result if isinstance(result, TaskResult) else TaskResult(result)
    code = done.command_status if done.command_status is not None else EXIT[done.verdict]
    if code:
        raise Exit(code=code)


@task(help={"lab": LAB_HELP, "arch": "only this arch", "variant": "only this variant",
            "commit": "only this commit (tag or sha)"})
def plan(c: Context, lab: str = "", arch: str = "", variant: str = "", commit: str = "") -> None:
    """Print the targets (commit x arch x variant); changes and downloads nothing."""
    from harness.plan import plan_text

    def body(s: main.Session) -> Verdict:
        print(plan_text(s.lab, s.ops, Selection(arch or None, variant or None, commit or None)))
        return Verdict.OK
    _run(lab, body)


@task(help={"lab": LAB_HELP, "arch": "only this arch (x86_64, arm64)",
            "variant": "only this variant", "commit": "only this commit (tag or sha)",
            "force": "rebuild even when the kernel cache holds the kernel"})
def build(c: Context, lab: str = "", arch: str = "", variant: str = "",
          commit: str = "", force: bool = False) -> None:
    """Build kernels for the lab's targets (cached by content)."""
    selection = Selection(arch or None, variant or None, commit or None)
    _run(lab, lambda s: main.build(s, selection, force).verdict)


@task(help={"lab": LAB_HELP, "arch": "only this arch", "variant": "only this variant",
            "commit": "only this commit (tag or sha)",
            "force": "redo finished targets, kernel builds included",
            "run_dir": "result store (default: work/runs/<lab name>)", **ENGINE_HELP})
def matrix(c: Context, lab: str = "", arch: str = "", variant: str = "", commit: str = "",
           force: bool = False, run_dir: str = "", scheduler: str = "",
           insecure: bool = False) -> None:
    """Build, boot and test every target; JUnit, kernel reports, the matrix report."""
    from harness.matrix import matrix as run_matrix
    selection = Selection(arch or None, variant or None, commit or None)
    _run(lab, lambda s: run_matrix(s, Path(run_dir) if run_dir else None, force,
                                   selection).verdict, scheduler, insecure)


@task(help={"lab": LAB_HELP, "fix": "only this fix (an id of bpf_tests/commits.yaml)",
            "commit": "only this commit (tag or sha)", "arch": "only this arch",
            "force": "redo finished targets, kernel builds included",
            "run_dir": "result store (default: work/runs/<lab name>-backports)", **ENGINE_HELP})
def backports(c: Context, lab: str = "", fix: str = "", commit: str = "", arch: str = "",
              force: bool = False, run_dir: str = "", scheduler: str = "",
              insecure: bool = False) -> None:
    """Per fix of the table, kernel and arch: is it there (with evidence), and does it
    fix the bug (its reproducers as is, and with it taken out)?"""
    from harness.backports import backports as run_backports
    selection = Selection(arch or None, None, commit or None)
    _run(lab, lambda s: run_backports(s, Path(run_dir) if run_dir else None, force,
                                      selection, fix).verdict, scheduler, insecure)


@task(help={"lab": "a lab whose source names the branch to follow (source.remote, "
                   "source.branch); see README, Nightly",
            "force": "redo finished targets, kernel builds included",
            "run_dir": "result store (default: work/runs/<lab name>-nightly)", **ENGINE_HELP})
def nightly(c: Context, lab: str = "", force: bool = False, run_dir: str = "",
            scheduler: str = "", insecure: bool = False) -> None:
    """Fetch the followed branch, test what landed since the last night, classify it
    against that night; exit 1 on a regression confirmed on a fresh boot."""
    from harness.nightly import nightly as run_nightly

    def body(s: main.Session) -> Verdict:
        result = run_nightly(s, Path(run_dir) if run_dir else None, force)
        print(result.summary, flush=True)
        return result.verdict
    _run(lab, body, scheduler, insecure)


@task(help={"lab": LAB_HELP, "good": "a commit where the test passes",
            "bad": "a commit where it fails", "test": "the test id (test_x.py::test_y, "
            "map_in_map::name, lab.lab::kernel-health)", "arch": "x86_64 or arm64",
            "variant": "the variant (default base)",
            "repeat": "runs per step (2 or more for an unstable test)",
            "run_dir": "result store (default: work/runs/<lab>-bisect/<test>)", **ENGINE_HELP})
def bisect(c: Context, good: str, bad: str, test: str, arch: str, lab: str = "",
           variant: str = "base", repeat: int = 1, run_dir: str = "", scheduler: str = "",
           insecure: bool = False) -> None:
    """Bisect a test between a good and a bad commit over every commit; verify the
    culprit by reverting it on the bad one. Exit 0 culprit verified, 1 otherwise."""
    from harness.bisect import bisect as run_bisect

    def body(s: main.Session) -> Verdict:
        found = run_bisect(s, good, bad, test, arch, variant, max(1, repeat),
                           Path(run_dir) if run_dir else None)
        print(found.text(), flush=True)
        return Verdict.OK if found.verification == "verified" else Verdict.FAILED
    _run(lab, body, scheduler, insecure)


@task(help={"lab": LAB_HELP})
def history(c: Context, lab: str = "") -> None:
    """Print the lab's nights (the history database), oldest first."""
    from harness.nightly import nights_text

    def body(s: main.Session) -> Verdict:
        print(nights_text(s))
        return Verdict.OK
    _run(lab, body)


@task(help={"lab": LAB_HELP, "arch": "x86_64 or arm64",
            "commit": "commit (tag or sha; default: the newest of the lab's history)",
            "variant": "variant (default: base)", "init": "lean or systemd (default: the lab's guest.init)",
            "accel": "tcg or kvm (default: the lab's guest.accel; auto probes once per host)",
            "run": "run this command in the guest, print its output, power off",
            "wait": "no shell: keep the guest up until Ctrl-C (for ./lab ssh)"})
def boot(c: Context, arch: str, lab: str = "", commit: str = "", variant: str = "base",
         init: str = "", accel: str = "", run: str = "", wait: bool = False) -> None:
    """Build (cached) and boot one kernel; a shell in the guest, then power off."""
    from harness.interactive import boot_task

    def body(s: main.Session) -> TaskResult:
        settings = dataclasses.replace(s.lab.guest, accel=accel or s.lab.guest.accel,
                                       init=init or s.lab.guest.init)
        return boot_task(s, arch, commit or None, variant, settings, run, wait)
    _run(lab, body)


@task(help={"lab": LAB_HELP, "arch": "the guest's arch (needed when several run)",
            "command": "run this command instead of opening a shell"})
def ssh(c: Context, lab: str = "", arch: str = "", command: str = "") -> None:
    """Log into a guest that ./lab boot keeps running (pinned host key, lab key)."""
    from harness.interactive import ssh_task
    _run(lab, lambda s: ssh_task(s, arch or None, command))


@task(help={"run_dir": "a run directory (work/runs/<lab name>)", "lab": LAB_HELP})
def report(c: Context, run_dir: str, lab: str = "") -> None:
    """Rebuild a run's table, summary.json and index.html from its store."""
    from harness import report as rep

    def body(s: main.Session) -> Verdict:
        table, page = rep.rebuild(Path(run_dir))
        print(f"{table}\n\nreport: {page}")
        return Verdict.OK
    _run(lab, body)


@task(help={"fast": "unit tests only (seconds); the default also runs the end-to-end "
                    "tests against real kernels and guests",
            "full": "also the slower end-to-end tests (the whole default lab, backports, systemd "
                    "boots, the suites' finer checks): run before resolving an issue",
            "k": "only tests matching this pytest -k expression"})
def test(c: Context, fast: bool = False, full: bool = False, k: str = "") -> None:
    """Run the test suite: unit tests (seconds), then end to end (real kernels, guests)."""
    failed = 0
    for marks in (["not e2e"] if fast else ["not e2e", "e2e"]):
        argv = [sys.executable, "-m", "pytest", str(PROJECT / "tests"), "-m", marks]
        argv += ["--durations=20"] if marks == "e2e" else []
        argv += ["--full"] if full else []
        argv += ["-k", k] if k else []
        result = c.run(shlex.join(argv), pty=False, warn=True)
        code = result.exited if result is not None else 2
        failed = failed or (0 if code == 5 else code)  # 5: nothing selected by -k
    if failed:
        raise Exit(code=failed)


@task(name="bench-build", help={"arch": "only this arch", "cold": "also time a cold build",
                                "lab": LAB_HELP})
def bench_build(c: Context, arch: str = "", cold: bool = False, lab: str = "") -> None:
    """Print build times: cold, no-op, incremental, warm ccache, cache hit."""
    argv = [sys.executable, str(PROJECT / "benchmarks/bench_build.py")]
    argv += ["--arch", arch] if arch else []
    argv += ["--cold"] if cold else []
    argv += ["--lab", lab] if lab else []
    c.run(shlex.join(argv), pty=False)


@task(help={"scheduler": "the scheduler to serve (tls://HOST:8786, or tcp:// on loopback)",
            "workdir": "this worker's own workdir (default: work/ of this checkout)",
            "build_slots": "kernel builds at a time (0: this worker builds nothing)",
            "guest_slots": "guests at a time (0: this worker boots nothing)",
            "name": "the worker's name in progress lines (default: host name)",
            "insecure": ENGINE_HELP["insecure"]})
def worker(c: Context, scheduler: str, workdir: str = "", build_slots: int = 1,
           guest_slots: int = 1, name: str = "", insecure: bool = False) -> None:
    """Serve a scheduler: build kernels and run guests for the lab's runs, declaring
    which arches this host can build and boot (README, Across machines)."""
    from harness.cluster import serve_worker
    _run("", lambda s: serve_worker(scheduler, Path(workdir) if workdir else s.lab.workdir,
                                    build_slots, guest_slots, name, insecure))


@task(help={"host": "the address to listen on (default 127.0.0.1)",
            "port": "the port (default 8786)", "insecure": ENGINE_HELP["insecure"],
            "tls": "serve tls:// with the certificates in $BPFLAB_TLS"})
def scheduler(c: Context, host: str = "127.0.0.1", port: int = 8786, tls: bool = False,
              insecure: bool = False) -> None:
    """Run a Dask scheduler for workers and runs on other machines to meet at."""
    from harness.cluster import serve_scheduler
    _run("", lambda s: serve_scheduler(host, port, tls, insecure))


@task
def setup(c: Context) -> None:
    """Install what the lab needs on the host (Debian packages, venv); idempotent."""
    c.run(shlex.join([sys.executable, str(PROJECT / "harness/bootstrap.py")]), pty=False)
    print("setup: host packages and venv are in place")


ns = Collection(setup, plan, build, boot, ssh, matrix, backports, nightly, bisect, history,
                report, test, worker, scheduler,
                bench_build)
