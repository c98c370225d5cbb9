"""Kconfig fragments and .config files: parse, merge in order, check what survived."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

SET_RE = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
UNSET_RE = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")


def parse(lines: Iterable[str]) -> dict[str, str]:
    """Option -> value; 'n' for '# CONFIG_X is not set'. Later lines win."""
    options: dict[str, str] = {}
    for raw in lines:
        line = raw.strip()
        m = SET_RE.match(line)
        if m:
            options[m.group(1)] = m.group(2)
            continue
        m = UNSET_RE.match(line)
        if m:
            options[m.group(1)] = "n"
    return options


def requested(fragments: Iterable[Path]) -> dict[str, str]:
    """What the fragments ask for, merged in order as merge_config.sh does."""
    wanted: dict[str, str] = {}
    for frag in fragments:
        wanted.update(parse(frag.read_text().splitlines()))
    return wanted


@dataclass(frozen=True)
class Mismatch:
    option: str
    wanted: str
    got: str  # 'n' when the option is absent or not set

    def __str__(self) -> str:
        verb = "dropped" if self.got == "n" else f"changed to {self.got}"
        return f"{self.option}={self.wanted} {verb}"


def check(wanted: dict[str, str], final: dict[str, str]) -> list[Mismatch]:
    """Every requested option must hold in the final .config, named when it does not."""
    bad = []
    for option, value in wanted.items():
        got = final.get(option, "n")
        if got != value:
            bad.append(Mismatch(option, value, got))
    return bad


def fingerprint(paths: Iterable[Path], extra: Iterable[str] = ()) -> str:
    """A hash of files' contents (and names of what they mean), for cache keys."""
    h = hashlib.sha256()
    for path in paths:
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    for item in extra:
        h.update(item.encode() + b"\0")
    return h.hexdigest()[:16]
