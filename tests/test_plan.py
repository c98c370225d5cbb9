"""invoke plan: the targets, without changing anything on disk or downloading."""

from __future__ import annotations

from pathlib import Path

from harness.config import load_lab
from harness.model import Selection
from harness.ops import Ops
from harness.plan import plan_text


class NoCommands(Ops):
    """Plan of a Debian lab that imported nothing yet must run no command at all."""

    def run(self, *args: object, **kwargs: object) -> object:  # type: ignore[override]
        raise AssertionError(f"plan ran a command: {args}")


def test_plan_of_a_fresh_debian_lab_says_what_it_would_fetch_and_writes_nothing(
        tmp_path: Path) -> None:
    lab = tmp_path / "lab.yaml"
    lab.write_text(f"workdir: {tmp_path / 'work'}\n"
                   "source: {debian: {versions: ['6.1.190', '7.3-rc7']}}\n"
                   "arches: [x86_64, arm64]\n")
    text = plan_text(load_lab(lab), NoCommands(verbose=False), Selection("x86_64"))
    assert text.splitlines()[0] == "2 targets (commit x arch x variant):"
    assert "linux-source-6.1 6.1.190" in text and "linux-source-7.3 7.3-rc7" in text
    assert "v7.3-rc7" in text
    assert not (tmp_path / "work").exists()


def test_plan_of_a_git_lab_lists_its_commits_in_history_order(fake_tree: Path,
                                                               tmp_path: Path) -> None:
    lab = tmp_path / "lab.yaml"
    lab.write_text(f"workdir: {tmp_path / 'work'}\nsource: {{git: {fake_tree}, "
                   "range: v1..v3, paths: [map_in_map.c]}\narches: [x86_64]\n")
    text = plan_text(load_lab(lab), Ops(verbose=False), Selection())
    assert [line.split()[0] for line in text.splitlines()[1:]] == [
        line.split()[0] for line in text.splitlines()[1:]]
    assert len(text.splitlines()) == 3 and "change 2" in text.splitlines()[-1]
    assert not (tmp_path / "work").exists()
