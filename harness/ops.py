"""The one place where the lab runs outside programs: argv lists, echoed, logged,
each in its own process group that never outlives the lab."""

from __future__ import annotations

import ctypes
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Mapping, Sequence

from harness.errors import LabError

PR_SET_PDEATHSIG = 1
GRACE = 3.0  # seconds a child group gets between SIGTERM and SIGKILL
ROOT = Path(__file__).resolve().parents[1]

Child = subprocess.Popen[str]
# Live child groups by leader pid. Reentrant: a signal handler in the main thread
# may call terminate_children() while that thread is starting a child.
_live: dict[int, Child] = {}
_live_lock = threading.RLock()
# The run each live child works for, and the runs called off: a worker serves several
# runs at once, and calling one off must end its children and refuse it new ones,
# leaving the others' alone. A thread says which run it works for with working_for().
_owner: dict[int, str] = {}
_called_off: set[str] = set()
_working = threading.local()


@contextmanager
def working_for(run: str) -> Iterator[None]:
    """What this thread starts from here on belongs to run (a Dask thread is reused)."""
    before = current_run()
    _working.run = run
    try:
        yield
    finally:
        _working.run = before


def current_run() -> str:
    return str(getattr(_working, "run", ""))


EVERY_RUN = "*"  # called off when the process itself is going (a worker stopped)


def refuse_if_called_off() -> None:
    run = current_run()
    if run and (run in _called_off or EVERY_RUN in _called_off):
        raise LabError(f"run {run[:12]} was called off")


def mark_called_off(run: str) -> None:
    with _live_lock:
        _called_off.add(run)


@dataclass(frozen=True)
class Completed:
    argv: tuple[str, ...]
    returncode: int
    stdout: str


def echo(argv: Sequence[str], cwd: Path | None = None) -> None:
    where = f"(cd {shlex.quote(str(cwd))}) " if cwd else ""
    print(f"+ {where}{shlex.join(argv)}", file=sys.stderr, flush=True)


def terminate_children(grace: float = GRACE, run: str | None = None) -> list[int]:
    """End every live child group (or only run's), whichever thread waits on it:
    SIGTERM, then SIGKILL once its leader is gone or after grace. Returns the leaders'
    pids. For the main thread on Ctrl-C or SIGTERM, while a background thread waits on
    make."""
    with _live_lock:
        procs = {pid: c for pid, c in _live.items() if run is None or _owner.get(pid) == run}
    _end_groups(list(procs), lambda pid: procs[pid].poll() is None, grace)
    return sorted(procs)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass  # the whole group is gone already


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _end_groups(pgids: Sequence[int], running: Callable[[int], bool], grace: float) -> None:
    """SIGTERM to each group (make then deletes half-written targets), SIGKILL to
    each once its leader is gone or grace is up (for what ignored SIGTERM)."""
    for pgid in pgids:
        _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(running(pgid) for pgid in pgids):
        time.sleep(0.05)
    for pgid in pgids:
        _signal_group(pgid, signal.SIGKILL)


@cache
def _prctl() -> Callable[..., Any]:
    # Resolved in the parent: dlopen between fork and exec may deadlock on a lock
    # another thread held at fork time.
    return ctypes.CDLL(None, use_errno=True).prctl


def _dies_with(parent: int) -> Callable[[], None]:
    """Runs in the child before exec: a SIGKILLed lab takes the child with it."""
    prctl = _prctl()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))
        if os.getppid() != parent:  # the lab died before prctl took effect
            os.kill(os.getpid(), signal.SIGKILL)
    return preexec


class _Watchdog:
    """A helper process for the one case the lab cannot handle itself: its own SIGKILL.
    PDEATHSIG ends only the direct child (kbuild's top make); its sub-makes would go
    on. The watchdog learns each group as it starts and ends; when its pipe from the
    lab closes, which only the lab's exit does, it ends the groups still listed."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._broken = False

    def tell(self, line: str) -> None:
        with self._lock:
            if self._broken:
                return
            try:
                self._proc = self._proc or self._start()
                assert self._proc.stdin is not None
                self._proc.stdin.write(f"{line}\n".encode())
                self._proc.stdin.flush()
            except OSError as exc:
                self._broken = True
                print(f"warning: no child watchdog ({exc}); relying on PDEATHSIG",
                      file=sys.stderr, flush=True)

    @staticmethod
    def _start() -> subprocess.Popen[bytes]:
        code = ("import sys; sys.path.insert(0, sys.argv[1]); "
                "from harness.ops import watchdog_main; watchdog_main(sys.stdin.buffer)")
        # Its own session: Ctrl-C at the terminal is for the lab, not for it.
        return subprocess.Popen([sys.executable, "-I", "-S", "-c", code, str(ROOT)],
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                start_new_session=True)


_watchdog = _Watchdog()


def watchdog_main(lines: IO[bytes], grace: float = GRACE) -> None:
    """The watchdog process: "+pgid" and "-pgid" lines until end of input, then end
    the groups left."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    groups: set[int] = set()
    for raw in lines:
        text = raw.decode().strip()
        if text.startswith("+"):
            groups.add(int(text[1:]))
        elif text.startswith("-"):
            groups.discard(int(text[1:]))
    _end_groups(sorted(groups), _group_alive, grace)


def _start(argv: Sequence[str], cwd: Path | None, env: Mapping[str, str]) -> Child:
    try:
        return subprocess.Popen(list(argv), cwd=cwd, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                text=True, errors="replace", bufsize=1,
                                start_new_session=True, preexec_fn=_dies_with(os.getpid()))
    except FileNotFoundError as exc:
        raise LabError(f"{argv[0]}: not installed (run ./lab setup)") from exc


@contextmanager
def _child(argv: Sequence[str], cwd: Path | None, env: Mapping[str, str]) -> Iterator[Child]:
    """argv running in its own process group, listed while it lives; an exception in
    the caller (an error, Ctrl-C) ends the whole group before it propagates."""
    with _live_lock:
        refuse_if_called_off()
        proc = _start(argv, cwd, env)
        _live[proc.pid] = proc
        _owner[proc.pid] = current_run()
    try:
        with proc:  # on the way out: close the pipe, wait for the leader
            try:
                _watchdog.tell(f"+{proc.pid}")
                yield proc
            except BaseException:
                _end_groups([proc.pid], lambda _: proc.poll() is None, GRACE)
                raise
    finally:
        with _live_lock:
            _live.pop(proc.pid, None)
            _owner.pop(proc.pid, None)
        _watchdog.tell(f"-{proc.pid}")


TIMED_OUT = 124  # Ops.run's exit status for a command ended at its timeout


@dataclass
class Ops:
    """Runs commands. Tests replace this object, and only this one, with a fake."""

    verbose: bool = True
    env: Mapping[str, str] = field(default_factory=dict)

    def _env(self, extra: Mapping[str, str] | None) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.env)
        env.update(extra or {})
        return env

    def run(self, argv: Sequence[str], cwd: Path | None = None,
            env: Mapping[str, str] | None = None, check: bool = True,
            quiet: bool = False, timeout: float | None = None) -> Completed:
        """Run argv to completion and capture its output (stderr folded in). Past
        timeout seconds its process group is ended: exit status 124, as timeout(1)."""
        if self.verbose and not quiet:
            echo(argv, cwd)
        with _child(argv, cwd, self._env(env)) as proc:
            try:
                stdout, _ = proc.communicate(timeout=timeout)
                code = proc.returncode
            except subprocess.TimeoutExpired:
                _end_groups([proc.pid], lambda _: proc.poll() is None, GRACE)
                stdout, _ = proc.communicate()
                stdout += f"\n(ended after {timeout:g} s)\n"
                code = TIMED_OUT
        done = Completed(tuple(argv), code, stdout)
        if check and code != 0:
            tail = "\n".join(stdout.splitlines()[-15:])
            raise LabError(f"command failed ({code}): {shlex.join(argv)}\n{tail}")
        return done

    def stream(self, argv: Sequence[str], log: Path, cwd: Path | None = None,
               env: Mapping[str, str] | None = None,
               on_line: Callable[[str], None] | None = None) -> int:
        """Run argv with its output going line by line to a log file (and a callback)."""
        if self.verbose:
            echo(argv, cwd)
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a", encoding="utf-8", buffering=1) as out:
            out.write(f"+ {shlex.join(argv)}\n")
            out.flush()
            with _child(argv, cwd, self._env(env)) as proc:
                assert proc.stdout is not None
                for line in proc.stdout:
                    out.write(line)
                    if on_line:
                        on_line(line.rstrip("\n"))
        return proc.returncode
