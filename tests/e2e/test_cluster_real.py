"""End to end on a real Dask cluster: `./lab scheduler` and two `./lab worker`
processes on this host, over TLS with a certificate made here, each worker with its
own workdir and kernel cache; real kernels (6.1.192 x86_64), real guests.

A builds and boots (the project's work/ and the shared cache: the machine the lab was
set up on); B only boots, from an empty workdir and cache (a fresh machine: its own
rootfs, C suite and kernels, fetched from A). B is killed while it runs a guest; the
matrix still completes, with every target once."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from harness.config import load_lab

pytestmark = pytest.mark.e2e
PROJECT = Path(__file__).resolve().parents[2]
LAB = PROJECT / "lab"
UAF_TEST = ("test_map_in_map_free.py::test_inner_map_replaced_under_a_parked_sleepable_"
            "program_is_not_used_after_free")
VARIANTS = f"""variants:
  - name: quick-a
    tests: ["test_map_in_map_basic.py::test_syscall_lookup_on_an_outer_map_returns_the_inner_map_id",
            "test_map_in_map_basic.py::test_hash_inner_maps_may_differ_in_max_entries",
            "map_in_map::spin_lock_in_inner_map"]
  - name: quick-b
    tests: ["test_map_in_map_basic.py::test_outer_maps_and_prog_arrays_are_refused_as_inner_maps",
            "map_in_map::timer_in_inner_map"]
  - name: uaf
    patches: ["kernels/patches/reverts/{{series}}/8766733641.patch"]
    reverts: ["8766733641"]
    tests: ["{UAF_TEST}"]
    expect_reports:
      - test: {UAF_TEST}
        signatures: ["KASAN: use-after-free Read in array_map_update_elem"]
"""
TESTS = {"quick-a": 3, "quick-b": 2, "uaf": 1}


def write_lab(path: Path, max_boots: int) -> Path:
    """The default lab on 6.1.192 x86_64 only, with the variants above."""
    lab = yaml.safe_load((PROJECT / "lab.yaml").read_text())
    lab.update(workdir=str(load_lab().workdir), arches=["x86_64"],
               variants=yaml.safe_load(VARIANTS)["variants"])
    lab["source"]["debian"]["versions"] = ["6.1.192"]
    lab["guest"]["max_boots"] = max_boots
    path.write_text(yaml.safe_dump(lab, sort_keys=False))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def certificates(where: Path) -> Path:
    """A self-signed certificate for 127.0.0.1, its own CA: $BPFLAB_TLS for all three."""
    where.mkdir()
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(where / "key.pem"), "-out", str(where / "cert.pem"),
                    "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True)
    (where / "ca.pem").write_bytes((where / "cert.pem").read_bytes())
    return where


class Procs:
    """Processes this test starts, each in its own group, ended by pid."""

    def __init__(self, tmp: Path) -> None:
        self.tmp, self.procs = tmp, {}  # type: tuple[Path, dict[str, subprocess.Popen[bytes]]]

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> Path:
        log = self.tmp / f"{name}.log"
        with log.open("wb") as fh:
            self.procs[name] = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT,
                                                env={**os.environ, **env},
                                                start_new_session=True)
        return log

    def kill(self, name: str, sig: int = signal.SIGKILL, wait: float = 60) -> None:
        proc = self.procs[name]
        if proc.poll() is None:
            os.killpg(proc.pid, sig)
        proc.wait(timeout=wait)

    def stop_all(self) -> None:
        """The last started first (runs, workers, then the scheduler); what does not
        end on SIGTERM in 60 s is killed, so a failed test leaves nothing running."""
        for name in reversed(list(self.procs)):
            try:
                self.kill(name, signal.SIGTERM)
            except subprocess.TimeoutExpired:
                self.kill(name)


def wait_for(log: Path, pattern: str, seconds: float, procs: Procs, name: str) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = re.search(pattern, log.read_text(errors="replace"))
        if found:
            return found[0]
        assert procs.procs[name].poll() is None, log.read_text(errors="replace")[-3000:]
        time.sleep(0.5)
    raise AssertionError(f"{name}: no {pattern!r} in {seconds:.0f} s:\n"
                         f"{log.read_text(errors='replace')[-3000:]}")


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    p = Procs(tmp_path)
    try:
        yield p
    finally:
        p.stop_all()


def test_a_matrix_on_a_scheduler_and_two_workers_survives_losing_one(
        tmp_path: Path, procs: Procs) -> None:
    tls = {"BPFLAB_TLS": str(certificates(tmp_path / "tls"))}
    port = free_port()
    log = procs.start("scheduler", [str(LAB), "scheduler", "--port", str(port), "--tls"], tls)
    address = wait_for(log, r"tls://127\.0\.0\.1:\d+", 120, procs, "scheduler")
    a = procs.start("A", [str(LAB), "worker", "--scheduler", address, "--name", "A"], tls)
    b_home, b_cache = tmp_path / "B", tmp_path / "B-cache"
    b = procs.start("B", [str(LAB), "worker", "--scheduler", address, "--name", "B",
                          "--build-slots", "0", "--workdir", str(b_home)],
                    {**tls, "BPFLAB_CACHE": str(b_cache)})
    wait_for(a, "worker A: tls://", 120, procs, "A")
    wait_for(b, "worker B: tls://", 120, procs, "B")
    run_dir = tmp_path / "run"

    # Both workers up: A builds every kernel, B boots while A builds (and takes the
    # first guest: it is not building), so B's kernels travel from A as bundles.
    text = matrix(procs, "first", write_lab(tmp_path / "cluster.yaml", max_boots=10),
                  address, run_dir, tls)
    lines = placed_lines(text)
    assert all(builder == "A" for _, builder, _ in lines), lines
    assert any(guests == "B" for _, _, guests in lines), lines  # built on A, booted on B
    assert list((b_cache / "kernels").glob("x86_64-*/image")), "no kernel moved to B"
    all_passed(run_dir)

    # Again with another guest setting (the cached kernels, every guest anew); B takes
    # the first guest (A is still building the others, from its cache) and is killed
    # while it runs it: that target runs again on A, and every target is recorded once.
    out = procs.start("second", [str(LAB), "matrix", "--lab",
                                 str(write_lab(tmp_path / "cluster2.yaml", max_boots=9)),
                                 "--scheduler", address, "--run-dir", str(run_dir)], tls)
    deadline = time.monotonic() + 600
    while not list((b_home / "engine").glob("*/guest/console.log")) and \
            time.monotonic() < deadline:
        assert procs.procs["second"].poll() is None, out.read_text()[-3000:]
        time.sleep(0.5)
    running = [p.parent.parent.name for p in (b_home / "engine").glob("*/guest/console.log")]
    assert running, f"B ran no guest in 600 s:\n{out.read_text()[-3000:]}"
    procs.kill("B")
    code = procs.procs["second"].wait(timeout=1800)
    text = out.read_text(errors="replace")
    assert code == 0, text[-5000:]
    lines = placed_lines(text)
    [name] = running  # what B was running when it died ran again on A, whole
    variant = name.split("__")[2].rsplit("-", 1)[0]
    assert (variant, "A") in [(v, g) for v, _, g in lines], (name, lines)
    assert "its guest worker left; starting it again" in text
    all_passed(run_dir)
    leftover = subprocess.run(["pgrep", "-f", str(b_home)], capture_output=True, text=True)
    assert leftover.stdout.strip() == "", f"B's QEMU outlived B: {leftover.stdout}"

    # Ctrl-C on the coordinator while A runs a guest: A ends that QEMU, A lives on, and
    # the result the store held for that target is still there. (Another guest setting,
    # so the target runs again on its cached kernel.)
    before = (run_dir / "targets" / "v6.1.192__x86_64__quick-b" / "metadata.json").read_text()
    lab3 = write_lab(tmp_path / "cluster3.yaml", max_boots=8)
    again = procs.start("again", [str(LAB), "matrix", "--lab", str(lab3), "--scheduler",
                                  address, "--run-dir", str(run_dir), "--variant", "quick-b"],
                        tls)
    qemu = wait_for_qemu(procs.procs["A"].pid, 300)
    os.kill(procs.procs["again"].pid, signal.SIGINT)
    assert procs.procs["again"].wait(timeout=120) == 130, again.read_text()[-3000:]
    deadline = time.monotonic() + 60
    while Path(f"/proc/{qemu}").exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not Path(f"/proc/{qemu}").exists(), "A's QEMU outlived the interrupted run"
    assert procs.procs["A"].poll() is None, "the worker itself went down"
    after = (run_dir / "targets" / "v6.1.192__x86_64__quick-b" / "metadata.json").read_text()
    assert after == before
    # the cancelled task's thread on A saw its guest die: it must not boot a fresh one
    time.sleep(20)
    assert not qemus_under(procs.procs["A"].pid), "A booted again for the called-off run"

    # SIGTERM on a worker: it ends promptly and leaves no QEMU behind
    procs.kill("A", signal.SIGTERM, wait=30)
    assert "worker A: stopped" in a.read_text(errors="replace")


def matrix(procs: Procs, name: str, lab: Path, address: str, run_dir: Path,
           env: dict[str, str]) -> str:
    """./lab matrix on the cluster to its end: its output, after checking it passed."""
    out = procs.start(name, [str(LAB), "matrix", "--lab", str(lab), "--scheduler", address,
                             "--run-dir", str(run_dir)], env)
    code = procs.procs[name].wait(timeout=3600)
    text = out.read_text(errors="replace")
    assert code == 0, text[-5000:]
    return text


def placed_lines(text: str) -> list[tuple[str, str, str]]:
    """(variant, builder, guest worker) per recorded target; each target exactly once."""
    lines = re.findall(r"== \[\d/3\] x86_64 v6\.1\.192 (\S+): built on (\w+)[^,]*, "
                       r"guests on (\w+)", text)
    assert sorted(v for v, _, _ in lines) == sorted(TESTS), lines
    return lines


def all_passed(run_dir: Path) -> None:
    """Every target passed every test it ran, and the merged JUnit has each case once."""
    merged = (run_dir / "junit.xml").read_text()
    assert merged.count("<testcase ") == sum(TESTS.values()) + len(TESTS)  # + kernel-health
    for variant, tests in TESTS.items():
        meta = json.loads((run_dir / "targets" / f"v6.1.192__x86_64__{variant}" /
                           "metadata.json").read_text())
        assert meta["counts"]["pass"] == meta["counts"]["total"] == tests + 1, meta
    assert not list(run_dir.glob(".incoming/*")), "the coordinator left files half-recorded"


def wait_for_qemu(parent: int, seconds: float) -> int:
    """The pid of a QEMU started under the process tree of parent."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = qemus_under(parent)
        if found:
            return found[0]
        time.sleep(0.5)
    raise AssertionError(f"no QEMU under {parent} in {seconds:.0f} s")


def qemus_under(parent: int) -> list[int]:
    return [int(pid) for pid in subprocess.run(["pgrep", "-f", "qemu-system-x86_64"],
                                               capture_output=True, text=True).stdout.split()
            if descends(int(pid), parent)]


def descends(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return False
