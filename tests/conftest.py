"""Shared fixtures: a small real git history of a fake kernel tree, and lab files."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Callable

import pytest

DATA = Path(__file__).parent / "data"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--full", action="store_true",
                     help="also the end-to-end tests marked full (./lab test --full)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked full are deselected unless --full: ./lab test keeps a layer that
    touches every real component within CI's time, ./lab test --full runs the rest."""
    if config.getoption("--full"):
        return
    kept = [i for i in items if i.get_closest_marker("full") is None]
    if len(kept) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in kept])
        items[:] = kept
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "GIT_AUTHOR_DATE": "2023-01-01T00:00:00",
           "GIT_COMMITTER_DATE": "2023-01-01T00:00:00", "PATH": "/usr/bin:/bin"}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, env=GIT_ENV,
                          capture_output=True, text=True).stdout.strip()


@pytest.fixture
def fake_tree(tmp_path: Path) -> Path:
    """A fake kernel git tree: v1 (root), a map_in_map.c change, an arraymap.c change (v2),
    another map_in_map.c change (v3)."""
    repo = tmp_path / "linux"
    shutil.copytree(DATA / "fakekernel", repo)
    git(repo, "init", "-q", "-b", "master")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "initial tree")
    git(repo, "tag", "v1")
    for i, (path, tag) in enumerate([("map_in_map.c", ""), ("arraymap.c", "v2"),
                                     ("map_in_map.c", "v3")]):
        with open(repo / path, "a") as fh:
            fh.write(f"int change{i};\n")
        git(repo, "commit", "-q", "-am", f"bpf: change {i} in {path}")
        if tag:
            git(repo, "tag", tag)
    return repo


@pytest.fixture
def write_lab(tmp_path: Path) -> Callable[[str], Path]:
    def write(text: str, name: str = "lab.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path
    return write


@pytest.fixture(autouse=True)
def private_cache(request: pytest.FixtureRequest, tmp_path: Path,
                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit tests never touch the host's shared kernel cache; end-to-end tests use it
    (content-keyed: a hit never changes a result)."""
    if request.node.get_closest_marker("e2e") is None:
        monkeypatch.setenv("BPFLAB_CACHE", str(tmp_path / "shared-cache"))
