"""One running QEMU: started, its console stamped with host time into console.log,
and always torn down (QMP 'quit' first, then SIGKILL to its own pid only)."""

from __future__ import annotations

import ctypes
import json
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Iterable, Sequence

from harness.console import ConsoleReport, ConsoleWatch
from harness.errors import LabError
from harness.ops import current_run, echo, mark_called_off, refuse_if_called_off, \
    terminate_children

PR_SET_PDEATHSIG = 1
CONSOLE_LIMIT = 64 << 20  # bytes of console.log per boot (limits.console_bytes)
TRUNCATED = "[bpflab: console truncated"


def _die_with_parent() -> None:
    """Runs in the child before exec: if the harness dies without cleaning up
    (SIGKILL, a crash), the kernel kills QEMU too, so no guest outlives its owner.
    (start_new_session keeps Ctrl-C away from QEMU: the harness gets it and quits
    QEMU in order.)"""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def stamp(started_wall: float, started_mono: float, now_mono: float, line: str) -> str:
    wall = started_wall + (now_mono - started_mono)
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(wall)) + f".{int(wall % 1 * 1000):03d}Z"
    return f"{iso} +{now_mono - started_mono:8.3f} | {line}"


class Qmp:
    """The few QMP commands the lab needs, over QEMU's unix socket."""

    def __init__(self, path: Path, timeout: float = 2.0) -> None:
        self.path = path
        self.timeout = timeout

    def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(self.timeout)
            s.connect(str(self.path))
            stream: BinaryIO = s.makefile("rwb")  # type: ignore[assignment]
            json.loads(stream.readline())  # greeting
            for msg in ({"execute": "qmp_capabilities"},
                        {"execute": command, "arguments": arguments or {}}):
                stream.write(json.dumps(msg).encode() + b"\n")
                stream.flush()
                reply = self._reply(stream)
            return reply

    @staticmethod
    def _reply(stream: BinaryIO) -> Any:
        while True:  # skip asynchronous events
            line = stream.readline()
            if not line:
                return None  # QEMU closed the socket, as it does on 'quit'
            msg = json.loads(line)
            if "return" in msg or "error" in msg:
                return msg


class Guest:
    """A QEMU process. The constructor only records; start() launches."""

    def __init__(self, argv: Sequence[str], run_dir: Path, qmp_socket: Path,
                 verbose: bool = True, console_limit: int = CONSOLE_LIMIT) -> None:
        self.argv = list(argv)
        self.run_dir = run_dir
        self.console_log = run_dir / "console.log"
        self.qemu_log = run_dir / "qemu.log"
        self.qmp = Qmp(qmp_socket)
        self.verbose = verbose
        self.started_mono = 0.0
        self.proc: subprocess.Popen[bytes] | None = None
        self.console_limit = console_limit
        self._watch = ConsoleWatch()
        self._lock = threading.Lock()
        self._reader: threading.Thread | None = None
        self.run = ""  # the run it works for (ops.working_for), once entered

    def start(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.verbose:
            echo(self.argv)
        self.started_mono = time.monotonic()
        started_wall = time.time()
        with open(self.qemu_log, "wb") as err:
            try:
                self.proc = subprocess.Popen(
                    self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                    stderr=err, start_new_session=True, preexec_fn=_die_with_parent)
            except FileNotFoundError as exc:
                raise LabError(f"{self.argv[0]}: not installed") from exc
        try:  # called off while starting: call_off() may have missed this one
            refuse_if_called_off()
        except LabError:
            self.proc.kill()
            self.proc.wait()
            raise
        self._reader = threading.Thread(target=self._read, args=(started_wall,),
                                        name=f"console-{self.proc.pid}", daemon=True)
        self._reader.start()

    def _read(self, started_wall: float) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        self._pump(self.proc.stdout, started_wall)

    def _pump(self, lines: Iterable[bytes], started_wall: float) -> None:
        """Stamp and save each console line, up to console_limit bytes on disk; past
        it the guest is still drained (QEMU must never block on a full pipe) and
        followed, and the file says where it was cut."""
        written, cut = 0, False
        with open(self.console_log, "w", encoding="utf-8") as log:
            for raw in lines:
                text = raw.decode("utf-8", errors="replace").rstrip("\r\n").replace("\r", "")
                line = stamp(started_wall, self.started_mono, time.monotonic(), text)
                with self._lock:
                    self._watch.feed(line)
                if written + len(line) + 1 > self.console_limit:
                    if not cut:
                        log.write(f"{TRUNCATED} at {written} bytes (limits.console_bytes)\n")
                        log.flush()
                    cut = True
                    continue
                log.write(line + "\n")
                log.flush()
                written += len(line) + 1

    def report(self) -> ConsoleReport:
        """The console's facts as they stand now (first output, release, bug, tail)."""
        with self._lock:
            return self._watch.report()

    def running_test(self) -> tuple[str, float | None] | None:
        """The test whose begin marker has no end marker yet, with its host time."""
        with self._lock:
            return self._watch.running

    def ended_tests(self) -> dict[str, str]:
        with self._lock:
            return dict(self._watch.ended)

    def elapsed(self) -> float:
        return time.monotonic() - self.started_mono

    def console_closed(self) -> bool:
        """QEMU's stdout reached EOF and every line is in: QEMU is gone."""
        return self._reader is not None and not self._reader.is_alive()

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise LabError("QEMU was not started")
        return self.proc.pid

    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def ended_why(self) -> str:
        """Why the console ended, in words for a verdict."""
        code = self.returncode()
        return f"QEMU exited ({'signal ' + str(-code) if code and code < 0 else code})"

    def qemu_errors(self) -> str:
        try:
            return self.qemu_log.read_text(errors="replace").strip()
        except OSError:
            return ""

    def stop(self, grace: float = 3.0) -> int | None:
        """QMP quit, then SIGKILL after `grace` s. Safe to call twice, or unstarted."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            try:
                self.qmp.execute("quit")
                asked = True
            except (OSError, ValueError):
                asked = False  # no QMP (not up yet, or wedged): straight to the kill
            try:
                proc.wait(grace if asked else 0.1)
            except subprocess.TimeoutExpired:
                proc.kill()  # our child, by its pid: never a name-based kill
                proc.wait()
        if self._reader is not None:
            self._reader.join(5)
        if proc.stdout is not None:
            proc.stdout.close()
        return proc.returncode

    def sysrq(self, commands: str = "wl", settle: float = 2.0) -> None:
        """Alt+SysRq+<c> via QMP for each command (w: blocked tasks, l: all CPUs'
        backtraces), so a hung guest leaves its stacks in console.log before the
        kill. Needs a keyboard in the guest (i8042 on q35); a no-op without one."""
        for c in commands:
            keys = [{"type": "qcode", "data": k} for k in ("alt", "sysrq", c)]
            try:
                self.qmp.execute("send-key", {"keys": keys})
            except (OSError, ValueError):
                return
        time.sleep(settle)

    def __enter__(self) -> "Guest":
        self.run = current_run()
        with _running_lock:
            refuse_if_called_off()
            _running.add(self)
        try:
            self.start()
        except BaseException:
            with _running_lock:
                _running.discard(self)
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            self.stop()
        finally:
            with _running_lock:
                _running.discard(self)


# Guests running in this process, for a run that is called off (Ctrl-C on a
# coordinator, a worker told to stop): their QEMUs go, and the threads driving them see
# the guest gone and end their tasks.
_running: set[Guest] = set()
_running_lock = threading.Lock()


def stop_all() -> list[int]:
    """End every QEMU and child (make, git) of this process: the process is going."""
    return kill_guests() + terminate_children()


def call_off(run: str) -> list[int]:
    """End run's QEMUs and children (make, git) in this process, and refuse it new
    ones: a cancelled task's thread, seeing its guest gone, must not boot another.
    Other runs this worker serves go on."""
    mark_called_off(run)
    return kill_guests(run) + terminate_children(run=run)


def kill_guests(run: str | None = None) -> list[int]:
    """SIGKILL every QEMU this process runs (or only run's); returns their pids."""
    with _running_lock:
        guests = [g for g in _running if run is None or g.run == run]
    pids = []
    for g in guests:
        if g.proc is not None and g.proc.poll() is None:
            g.proc.kill()  # our child, by its pid
            pids.append(g.proc.pid)
    return pids
