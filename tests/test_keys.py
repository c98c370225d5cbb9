"""The lab's SSH key pair: made once with the real ssh-keygen, kept private, reused."""

from __future__ import annotations

import stat
from pathlib import Path

import paramiko

from harness.keys import ensure_lab_key
from harness.ops import Ops


def test_a_new_lab_gets_an_ed25519_pair_readable_by_root_only(tmp_path: Path) -> None:
    key = ensure_lab_key(tmp_path, Ops(verbose=False))
    assert key.public_text().startswith("ssh-ed25519 ")
    assert stat.S_IMODE(key.private.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700
    loaded = paramiko.Ed25519Key.from_private_key_file(str(key.private))
    assert key.public_text().split()[1] == loaded.get_base64()


def test_the_key_pair_is_reused_not_regenerated(tmp_path: Path) -> None:
    first = ensure_lab_key(tmp_path, Ops(verbose=False)).public_text()
    assert ensure_lab_key(tmp_path, Ops(verbose=False)).public_text() == first


def test_a_half_missing_pair_is_replaced_whole(tmp_path: Path) -> None:
    key = ensure_lab_key(tmp_path, Ops(verbose=False))
    old = key.public_text()
    key.public.unlink()
    again = ensure_lab_key(tmp_path, Ops(verbose=False))
    assert again.public.exists() and again.public_text() != old
