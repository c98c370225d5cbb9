"""The lab's own SSH key pair (client side), made once per workdir and never committed."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from harness.errors import LabError
from harness.ops import Ops


@dataclass(frozen=True)
class LabKey:
    private: Path
    public: Path

    def public_text(self) -> str:
        return self.public.read_text().strip()


def keygen_argv(private: Path) -> list[str]:
    return ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bpflab", "-f", str(private)]


def ensure_lab_key(workdir: Path, ops: Ops) -> LabKey:
    """<workdir>/keys/id_ed25519{,.pub}: generated when missing, reused otherwise."""
    keys = workdir / "keys"
    key = LabKey(keys / "id_ed25519", keys / "id_ed25519.pub")
    if key.private.exists() and key.public.exists():
        return key
    keys.mkdir(parents=True, exist_ok=True)
    os.chmod(keys, 0o700)
    # a half-made pair (one file lost) is useless: start over rather than prompt
    key.private.unlink(missing_ok=True)
    key.public.unlink(missing_ok=True)
    ops.run(keygen_argv(key.private), quiet=True)
    if not key.public.exists():
        raise LabError(f"ssh-keygen left no {key.public}")
    os.chmod(key.private, 0o600)
    return key
