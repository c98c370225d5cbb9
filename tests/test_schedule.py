"""The scheduling the README tells a team to install, checked with the tools made for
them: systemd-analyze verify for the service and timer, the GitHub workflow schema
(vendored in check-jsonschema, offline) for the CI example; and the bpf-next lab they
run is a valid lab file."""

from __future__ import annotations

import subprocess
from pathlib import Path

from harness.config import load_lab

PROJECT = Path(__file__).resolve().parent.parent
SCHEDULE = PROJECT / "schedule"


def test_the_systemd_service_and_timer_verify(tmp_path: Path) -> None:
    # installed, /opt/bpflab is the project: here the project is where it is
    for name in ("bpflab-nightly.service", "bpflab-nightly.timer"):
        text = (SCHEDULE / name).read_text().replace("/opt/bpflab", str(PROJECT))
        (tmp_path / name).write_text(text)
    done = subprocess.run(["systemd-analyze", "verify", "--man=no",
                           str(tmp_path / "bpflab-nightly.timer"),
                           str(tmp_path / "bpflab-nightly.service")],
                          capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout + done.stderr == "", done.stderr


def test_a_broken_unit_is_caught_by_the_same_check(tmp_path: Path) -> None:
    text = (SCHEDULE / "bpflab-nightly.timer").read_text().replace("OnCalendar=", "OnCalender=")
    (tmp_path / "bpflab-nightly.timer").write_text(text)
    done = subprocess.run(["systemd-analyze", "verify", "--man=no",
                           str(tmp_path / "bpflab-nightly.timer")], capture_output=True,
                          text=True)
    assert done.returncode != 0 and "Unknown key 'OnCalender'" in done.stderr


def check_workflow(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(PROJECT / ".venv/bin/check-jsonschema"), "--builtin-schema",
                           "vendor.github-workflows", str(path)], capture_output=True,
                          text=True)


def test_the_ci_workflow_example_is_a_valid_github_workflow(tmp_path: Path) -> None:
    done = check_workflow(SCHEDULE / "github-nightly.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    broken = tmp_path / "broken.yml"
    broken.write_text((SCHEDULE / "github-nightly.yml").read_text().replace("runs-on:",
                                                                           "run-on:"))
    assert check_workflow(broken).returncode != 0


def test_the_bpf_next_lab_follows_bpf_next_master() -> None:
    lab = load_lab(PROJECT / "labs" / "bpf-next.yaml")
    assert (lab.source.branch, lab.source.paths) == ("master", ("kernel/bpf/map_in_map.c",))
    assert lab.source.remote and lab.source.remote.endswith("/bpf/bpf-next.git")
    assert lab.source.git == PROJECT / "work" / "src" / "bpf-next.git"
