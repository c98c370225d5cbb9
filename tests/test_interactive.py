"""invoke boot / invoke ssh: how a person reaches a guest, and the errors when none runs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from harness import interactive
from harness.config import load_lab
from harness.errors import UserError
from harness.main import Session
from harness.ops import Ops


def reach(tmp_path: Path, pid: int = os.getpid()) -> interactive.Reach:
    host_key = tmp_path / "ssh_host_ed25519_key.pub"
    host_key.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFake bpflab-guest\n")
    return interactive.Reach("x86_64", "x86_64 v6.1.192 base", 40123, tmp_path / "id",
                             host_key, tmp_path / "known_hosts", pid, tmp_path / "console.log")


def test_the_openssh_command_trusts_only_the_pinned_host_key_and_the_lab_key(
        tmp_path: Path) -> None:
    argv = interactive.ssh_argv(reach(tmp_path), "uname -r")
    assert argv[:5] == ["ssh", "-p", "40123", "-i", str(tmp_path / "id")]
    assert f"UserKnownHostsFile={tmp_path / 'known_hosts'}" in argv
    assert "StrictHostKeyChecking=yes" in argv and "PasswordAuthentication=no" in argv
    assert argv[-2:] == ["root@127.0.0.1", "uname -r"]


def test_the_known_hosts_line_names_the_forwarded_port(tmp_path: Path) -> None:
    line = interactive.known_hosts_line(40123, reach(tmp_path).host_key)
    assert line == "[127.0.0.1]:40123 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFake\n"


@pytest.fixture
def session(tmp_path: Path) -> Session:
    lab = tmp_path / "lab.yaml"
    lab.write_text(f"workdir: {tmp_path / 'work'}\nsource: {{debian: {{versions: [6.1.192]}}}}\n")
    return Session(load_lab(lab), Ops(verbose=False))


def record(session: Session, r: interactive.Reach) -> None:
    where = interactive.guests_dir(session)
    where.mkdir(parents=True, exist_ok=True)
    (where / f"{r.arch}.json").write_text(json.dumps(
        {k: str(v) if isinstance(v, Path) else v for k, v in r.__dict__.items()}))


def test_ssh_without_a_running_guest_says_how_to_start_one(session: Session) -> None:
    with pytest.raises(UserError, match="no running guest.*./lab boot --arch"):
        interactive.load_reach(session, None)


def test_a_recorded_guest_whose_qemu_is_gone_is_reported_and_forgotten(
        session: Session, tmp_path: Path) -> None:
    record(session, reach(tmp_path, pid=2**22 + 12345))  # above pid_max: never running
    with pytest.raises(UserError, match="is gone: QEMU pid"):
        interactive.load_reach(session, "x86_64")
    assert not (interactive.guests_dir(session) / "x86_64.json").exists()


def test_a_running_guest_is_found_and_several_need_an_arch(session: Session,
                                                          tmp_path: Path) -> None:
    record(session, reach(tmp_path))
    assert interactive.load_reach(session, None).port == 40123
    other = interactive.Reach(**{**reach(tmp_path).__dict__, "arch": "arm64"})
    record(session, other)
    with pytest.raises(UserError, match="several guests.*--arch"):
        interactive.load_reach(session, None)
    assert interactive.load_reach(session, "arm64").arch == "arm64"
