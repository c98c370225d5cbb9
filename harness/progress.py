"""A one-line progress display: stage, elapsed time, a count. Rewritten in place on a
terminal, a line every 30 s elsewhere (CI logs)."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import TextIO


def fmt_secs(secs: float) -> str:
    secs = int(secs)
    return f"{secs // 60}m{secs % 60:02d}s" if secs >= 60 else f"{secs}s"


@dataclass
class Progress:
    label: str
    out: TextIO = sys.stderr
    every: float = 0.0
    stage: str = "start"
    count: int = 0
    started: float = field(default_factory=time.monotonic)
    _shown: float = 0.0

    def __post_init__(self) -> None:
        if not self.every:
            self.every = 1.0 if self.out.isatty() else 30.0

    def line(self) -> str:
        elapsed = fmt_secs(time.monotonic() - self.started)
        return f"[{self.label}] {self.stage} {elapsed}, {self.count} objects compiled"

    def set_stage(self, stage: str) -> None:
        self.stage = stage
        self.show(force=True)

    def tick(self, n: int = 1) -> None:
        self.count += n
        self.show()

    def show(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._shown < self.every:
            return
        self._shown = now
        if self.out.isatty():
            self.out.write("\r\033[K" + self.line())
        else:
            self.out.write(self.line() + "\n")
        self.out.flush()

    def finish(self, verdict: str) -> None:
        end = "\r\033[K" if self.out.isatty() else ""
        self.out.write(f"{end}[{self.label}] {verdict} in "
                       f"{fmt_secs(time.monotonic() - self.started)}\n")
        self.out.flush()
