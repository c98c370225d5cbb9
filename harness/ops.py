"""The one place where the lab runs outside programs: argv lists, echoed, logged."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

from harness.errors import LabError


@dataclass(frozen=True)
class Completed:
    argv: tuple[str, ...]
    returncode: int
    stdout: str


def echo(argv: Sequence[str], cwd: Path | None = None) -> None:
    where = f"(cd {shlex.quote(str(cwd))}) " if cwd else ""
    print(f"+ {where}{shlex.join(argv)}", file=sys.stderr, flush=True)


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
            quiet: bool = False) -> Completed:
        """Run argv to completion and capture its output (stderr folded in)."""
        if self.verbose and not quiet:
            echo(argv, cwd)
        try:
            proc = subprocess.run(list(argv), cwd=cwd, env=self._env(env),
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, text=True, errors="replace")
        except FileNotFoundError as exc:
            raise LabError(f"{argv[0]}: not installed (run ./lab setup)") from exc
        done = Completed(tuple(argv), proc.returncode, proc.stdout)
        if check and proc.returncode != 0:
            tail = "\n".join(proc.stdout.splitlines()[-15:])
            raise LabError(f"command failed ({proc.returncode}): {shlex.join(argv)}\n{tail}")
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
            try:
                proc = subprocess.Popen(list(argv), cwd=cwd, env=self._env(env),
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, text=True,
                                        errors="replace", bufsize=1)
            except FileNotFoundError as exc:
                raise LabError(f"{argv[0]}: not installed (run ./lab setup)") from exc
            assert proc.stdout is not None
            try:
                for line in proc.stdout:
                    out.write(line)
                    if on_line:
                        on_line(line.rstrip("\n"))
            finally:
                if proc.poll() is None:
                    proc.terminate()
                proc.wait()
        return proc.returncode
