"""Set the host up for the lab: Debian packages, then the Python venv. Idempotent.

Standard library only: it runs before the venv exists."""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
PACKAGES = PROJECT / "harness" / "host-packages.txt"
REQUIREMENTS = PROJECT / "requirements.txt"
VENV = PROJECT / ".venv"


def wanted_packages() -> list[str]:
    lines = PACKAGES.read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def missing_packages(packages: list[str]) -> list[str]:
    proc = subprocess.run(["dpkg-query", "-W", "-f=${Package} ${db:Status-Abbrev}\n",
                           *packages], capture_output=True, text=True)
    installed = {line.split()[0] for line in proc.stdout.splitlines()
                 if len(line.split()) > 1 and line.split()[1] == "ii"}
    return [p for p in packages if p not in installed]


def install_packages(missing: list[str]) -> None:
    if os.geteuid() != 0:
        sys.exit("bpflab needs these Debian packages; as root, run:\n"
                 f"  apt-get install --no-install-recommends {' '.join(missing)}")
    print(f"setup: installing {len(missing)} Debian packages: {' '.join(missing)}", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
                   check=True, env=env)


def ensure_venv() -> None:
    if venv_current():
        return
    print(f"setup: Python venv in {VENV}", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run([str(VENV / "bin/pip"), "install", "-q", "--disable-pip-version-check",
                    "-r", str(REQUIREMENTS)], check=True)
    (VENV / ".requirements.sha256").write_text(requirements_digest())


def main() -> None:
    if not missing_packages(wanted_packages()) and venv_current():
        return  # the common case: no lock, no wait
    # ./lab commands started together on a new host (a scheduler and its workers) set
    # it up once, one after the other, instead of fighting over dpkg's lock and the venv
    with open(PROJECT / ".setup.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        set_up()


def venv_current() -> bool:
    stamp = VENV / ".requirements.sha256"
    return stamp.exists() and stamp.read_text() == requirements_digest()


def requirements_digest() -> str:
    return hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()


def set_up() -> None:
    missing = missing_packages(wanted_packages())
    if missing:
        install_packages(missing)
        still = missing_packages(missing)
        if still:
            sys.exit(f"setup: still missing after apt-get install: {' '.join(still)}")
    ensure_venv()


if __name__ == "__main__":
    main()
