"""The tests a target must run, known on the host before any boot: the Python suite's
node ids (pytest's own collection) and the C suite's tests (c/tests.def, read as data),
each named as its kmsg markers name it."""

from __future__ import annotations

import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from harness.config import PROJECT
from harness.errors import LabError
from harness.ops import Ops

SUITES = PROJECT / "bpf_tests"
C_CLASS = "map_in_map"  # as harness/suites.py: the C suite's markers say map_in_map::<name>
_HINT = "it must need neither root, nor BPF, nor a guest"
_COMMENT = re.compile(r"/\*.*?\*/", re.S)
_ENTRY = re.compile(r'(TEST|USES)\(\s*([A-Za-z_]\w*)\s*,\s*"([0-9a-f]{7,40})"\s*'
                    r'(?:,\s*([A-Za-z_]\w*)\s*)?\)')


@dataclass(frozen=True)
class CEntry:
    """One line of tests.def: a TEST (name, commit, function) or a USES (name, commit)."""

    kind: str
    name: str
    commit: str
    function: str = ""


def python_tests(root: Path = SUITES, ops: Ops | None = None) -> tuple[str, ...]:
    """pytest node ids relative to root/python, escaped as the kmsg markers write them
    (test_x.py::test_y[param]), by pytest's collection in a child process."""
    ops = ops or Ops(verbose=False)
    with tempfile.TemporaryDirectory(prefix="bpflab-catalog-") as tmp:
        listing = Path(tmp) / "tests"
        argv = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p",
                "no:cacheprovider", "--bpflab-list", str(listing)]
        # Host plugins and options must not change what the guest's pytest would collect.
        env = {"PYTHONDONTWRITEBYTECODE": "1", "PYTEST_ADDOPTS": "",
               "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
        done = ops.run(argv, cwd=root / "python", env=env, check=False, quiet=True)
        if done.returncode != 0 or not listing.exists():
            raise LabError(f"collecting the Python suite failed (exit {done.returncode}; "
                           f"{_HINT}):\n{done.stdout.strip()}")
        return tuple(line for line in listing.read_text().splitlines() if line)


def c_entries(root: Path = SUITES) -> tuple[CEntry, ...]:
    """tests.def line by line; anything but TEST/USES lines and comments is an error."""
    path = root / "c" / "tests.def"
    try:
        text = path.read_text()
    except OSError as exc:
        raise LabError(f"{path}: cannot read the C suite's tests ({exc})") from exc
    # Comments go, but keep their newlines so the line numbers stay right.
    text = _COMMENT.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    entries: list[CEntry] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = _ENTRY.fullmatch(line.strip())
        if not m or (m[1] == "TEST") != bool(m[4]):
            raise LabError(f'{path}:{number}: expected TEST(name, "id", function) or '
                           f'USES(name, "id"), got {line.strip()!r}')
        entries.append(CEntry(m[1], m[2], m[3], m[4] or ""))
    tests = [e.name for e in entries if e.kind == "TEST"]
    for e in entries:
        if e.kind == "TEST" and tests.count(e.name) > 1:
            raise LabError(f"{path}: test {e.name} is defined twice")
        if e.kind == "USES" and e.name not in tests:
            raise LabError(f"{path}: USES names {e.name}, which no TEST defines")
    return tuple(entries)


def c_tests(root: Path = SUITES) -> tuple[str, ...]:
    """map_in_map::<name> for each TEST line of tests.def, in order."""
    return tuple(f"{C_CLASS}::{e.name}" for e in c_entries(root) if e.kind == "TEST")
