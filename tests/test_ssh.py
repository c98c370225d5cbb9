"""SSH client pieces that need no guest: host key pinning and command quoting."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from harness.keys import ensure_lab_key
from harness.ops import Ops
from harness.ssh import Endpoint, GuestSSH, SSHError, command_text, pinned_host_keys


@pytest.fixture
def endpoint(tmp_path: Path) -> Endpoint:
    key = ensure_lab_key(tmp_path, Ops(verbose=False))
    return Endpoint("127.0.0.1", 2222, "root", key.private, key.public)


def test_the_pinned_key_is_filed_under_the_bracketed_host_and_port(endpoint: Endpoint) -> None:
    keys = pinned_host_keys(endpoint)
    assert list(keys.keys()) == ["[127.0.0.1]:2222"]
    key = keys.lookup("[127.0.0.1]:2222")
    assert key is not None
    assert key["ssh-ed25519"].get_base64() == endpoint.host_key_file.read_text().split()[1]


def test_a_list_command_is_quoted_word_by_word() -> None:
    assert command_text(["echo", "a b", "$HOME"]) == "echo 'a b' '$HOME'"
    assert command_text("echo $HOME") == "echo $HOME"


def test_nobody_listening_is_a_clear_ssh_error_not_a_paramiko_one(endpoint: Endpoint) -> None:
    ssh = GuestSSH(endpoint)
    with pytest.raises(SSHError, match="ssh root@127.0.0.1:2222"):
        ssh.connect(timeout=1)


def test_retrying_stops_at_the_deadline(endpoint: Endpoint) -> None:
    started = time.monotonic()
    with pytest.raises(SSHError):
        GuestSSH(endpoint).connect_until(time.monotonic() + 1.0, lambda: True, pause=0.1)
    assert time.monotonic() - started < 3


def test_retrying_stops_when_the_guest_is_gone(endpoint: Endpoint) -> None:
    started = time.monotonic()
    with pytest.raises(SSHError):
        GuestSSH(endpoint).connect_until(time.monotonic() + 60, lambda: False)
    assert time.monotonic() - started < 1


def test_running_without_a_connection_is_a_dropped_guest(endpoint: Endpoint) -> None:
    with pytest.raises(SSHError, match="not connected"):
        GuestSSH(endpoint).run("true")

