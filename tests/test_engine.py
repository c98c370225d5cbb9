"""The engine's decisions as plain data (which scheduler addresses are allowed, where
builds and guests go, what a worker offers), the kernel bundles that travel between
workers, and the local cluster every run without a scheduler uses."""

from __future__ import annotations

import json
import socket
from dataclasses import replace
from pathlib import Path

import pytest

from harness import engine, worker
from harness.build import cached_build, sha256_file
from harness.config import PROJECT, Variant, load_arches, load_lab, shared_cache
from harness.errors import LabError, UserError
from harness.model import Commit, Status, Target

ARCHES = {a.name: a for a in load_arches()}


@pytest.mark.parametrize("address", ["tcp://127.0.0.1:8786", "tcp://localhost:1",
                                     "tcp://[::1]:8786", "tls://10.1.2.3:8786",
                                     "tls://build-farm.example:8786"])
def test_loopback_tcp_and_any_tls_scheduler_are_accepted(address: str) -> None:
    engine.check_address(address, insecure=False)


def test_plain_tcp_beyond_loopback_is_refused_unless_the_user_says_insecure() -> None:
    with pytest.raises(UserError) as err:
        engine.check_address("tcp://10.1.2.3:8786", insecure=False)
    assert "tls://" in str(err.value) and "--insecure" in str(err.value)
    engine.check_address("tcp://10.1.2.3:8786", insecure=True)


@pytest.mark.parametrize("address", ["10.1.2.3:8786", "udp://127.0.0.1:1", "tcp://"])
def test_a_scheduler_address_without_a_known_scheme_is_refused(address: str) -> None:
    with pytest.raises(UserError, match="expected tcp://HOST:PORT or tls://HOST:PORT"):
        engine.check_address(address, insecure=True)


def test_tls_needs_the_certificate_directory(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(engine.TLS_ENV, raising=False)
    with pytest.raises(UserError, match="BPFLAB_TLS"):
        engine.security("tls://127.0.0.1:8786")
    (tmp_path / "ca.pem").write_text("x")
    monkeypatch.setenv(engine.TLS_ENV, str(tmp_path))
    with pytest.raises(UserError, match="missing: .*cert.pem, .*key.pem"):
        engine.security("tls://127.0.0.1:8786")
    assert engine.security("tcp://127.0.0.1:8786") is None


def w(name: str, **res: float) -> engine.WorkerInfo:
    return engine.WorkerInfo(f"tcp://127.0.0.1:{1000 + ord(name)}", name, dict(res))


def targets(arch: str, n: int, series: str = "6.1") -> list[Target]:
    return [Target(Commit(f"{arch[0]}{i:039d}", f"t{i}", f"{arch}-c{i}", "s", series=series),
                   ARCHES[arch], Variant("base", (), ())) for i in range(n)]


def placed_names(todo: list[Target], workers: list[engine.WorkerInfo]) -> list[str]:
    where = engine.place_builds(todo, lambda t: t.commit.series, workers)
    names = {x.address: x.name for x in workers}
    return [names[where[t]] if t in where else "-" for t in todo]


BOTH = {"build-x86_64": 1, "build-arm64": 1}


def test_a_history_walk_stays_on_one_builder_so_its_builds_stay_incremental() -> None:
    todo = targets("x86_64", 4) + targets("arm64", 4)
    assert placed_names(todo, [w("A", **BOTH)]) == ["A"] * 8
    # two builders: one arch each, never a mix
    assert placed_names(todo, [w("A", **BOTH), w("B", **BOTH)]) == ["A"] * 4 + ["B"] * 4


def test_an_idle_builder_takes_a_contiguous_piece_of_a_long_walk() -> None:
    todo = targets("x86_64", 6)
    assert placed_names(todo, [w("A", **BOTH), w("B", **BOTH)]) == ["A"] * 3 + ["B"] * 3


def test_each_series_is_its_own_walk() -> None:
    todo = targets("x86_64", 2, "6.1") + targets("x86_64", 2, "7.3")
    assert placed_names(todo, [w("A", **BOTH), w("B", **BOTH)]) == ["A", "A", "B", "B"]


def test_a_builder_gets_only_the_arches_it_can_build() -> None:
    todo = targets("x86_64", 2) + targets("arm64", 2)
    workers = [w("A", **{"build-x86_64": 1}), w("B", **{"build-x86_64": 1})]
    assert placed_names(todo, workers) == ["A", "A", "-", "-"]


def test_a_guest_goes_to_a_free_slot_kvm_first_then_a_worker_not_building() -> None:
    a = w("A", guest=1, **{"boot-x86_64": 1, "boot-arm64": 1})
    b = w("B", guest=1, **{"boot-x86_64": 1, "boot-arm64": 1})
    k = w("K", guest=1, **{"boot-x86_64": 1, "kvm": 1})
    pick = engine.pick_guest_worker
    assert pick("x86_64", [a, b, k], {}, {a.address}) == k.address
    assert pick("x86_64", [a, b, k], {}, {k.address}) == k.address  # KVM beside a build
    assert pick("x86_64", [a, b, k], {k.address: 1}, {a.address}) == b.address
    assert pick("arm64", [a, b, k], {}, {a.address}) == b.address
    assert pick("arm64", [a], {}, {a.address}) == a.address  # building, but free


def test_a_guest_never_queues_behind_a_busy_worker_while_a_capable_one_is_idle() -> None:
    a = w("A", guest=1, **{"boot-x86_64": 1})
    b = w("B", guest=2, **{"boot-x86_64": 1})
    pick = engine.pick_guest_worker
    # B (not building) is preferred while it has a slot; A builds but is idle
    assert pick("x86_64", [a, b], {b.address: 1}, {a.address}) == b.address
    assert pick("x86_64", [a, b], {b.address: 2}, {a.address}) == a.address
    assert pick("x86_64", [a, b], {a.address: 1, b.address: 2}, set()) == ""  # all busy
    assert pick("x86_64", [a, b], {a.address: 1}, set()) == b.address
    assert pick("x86_64", [w("C", **{"boot-x86_64": 1})], {}, set()) == ""  # no guest slot


def test_a_target_no_worker_can_build_or_boot_is_said_not_waited_for() -> None:
    t = targets("arm64", 1)[0]
    assert "no worker can build arm64" in engine._unservable(t, [w("A", **{"build-x86_64": 1})])
    why = engine._unservable(t, [w("A", **{"build-arm64": 1, "boot-x86_64": 1})])
    assert why == "no worker can boot arm64 (none declares boot-arm64)"


def test_a_worker_declares_the_arches_its_tools_serve(tmp_path: Path) -> None:
    arches = tuple(ARCHES.values())
    tools = {"gcc", "qemu-system-x86_64"}
    res = worker.capabilities(arches, 1, 2, tmp_path, which=lambda name: name in tools)
    assert res["build"] == 1 and res["guest"] == 2
    native = [a.name for a in arches if a.is_native]
    assert [k for k in res if k.startswith("build-")] == [f"build-{n}" for n in native]
    assert "boot-x86_64" in res and "boot-arm64" not in res
    assert "build" not in worker.capabilities(arches, 0, 1, tmp_path, which=lambda n: True)


def test_the_lab_moves_to_a_workers_checkout_and_keeps_what_is_outside_it(
        tmp_path: Path) -> None:
    lab = load_lab()
    moved = worker.relocate(lab, PROJECT, tmp_path / "elsewhere")
    assert moved.path == tmp_path / "elsewhere" / "lab.yaml"
    assert all(f.is_relative_to(tmp_path / "elsewhere") for f in moved.build.fragments)
    assert moved.arches[0].fragment.is_relative_to(tmp_path / "elsewhere")
    outside = replace(lab, workdir=Path("/srv/bpflab"))
    assert worker.relocate(outside, PROJECT, tmp_path).workdir == Path("/srv/bpflab")


def fake_kernel(key: str) -> Path:
    entry = shared_cache() / "kernels" / key
    entry.mkdir(parents=True)
    for name in ("image", "vmlinux", "config", "System.map", "build.log"):
        (entry / name).write_bytes(f"{name} of {key}\n".encode() * 100)
    (entry / "meta.json").write_text(json.dumps({"key": key, "kernel_release": "6.1.0-fake",
                                                 "sha256_image": sha256_file(entry / "image"),
                                                 "vmlinux_size": (entry / "vmlinux").stat()
                                                 .st_size}))
    return entry


def test_a_kernel_travels_whole_and_lands_in_the_cache_by_its_key() -> None:
    key = "x86_64-0123456789abcdef"
    entry = fake_kernel(key)
    bundle = worker.pack_kernel(key)
    original = {p.name: p.read_bytes() for p in entry.iterdir()}
    for p in entry.iterdir():
        p.unlink()
    entry.rmdir()
    worker.unpack_kernel(key, bundle)
    assert {p.name: p.read_bytes() for p in entry.iterdir()} == original
    target = targets("x86_64", 1)[0]
    found = cached_build(target, key)
    assert found is not None and found.status is Status.PASS and found.image == entry / "image"


def test_a_bundle_under_another_key_or_damaged_is_refused_and_leaves_nothing() -> None:
    bundle = worker.pack_kernel(fake_kernel("x86_64-aaaa").name)
    with pytest.raises(LabError, match="names another key"):
        worker.unpack_kernel("x86_64-bbbb", bundle)
    assert not list((shared_cache() / "kernels").glob("*bbbb*"))
    entry = fake_kernel("x86_64-cccc")
    (entry / "image").write_bytes(b"tampered")
    with pytest.raises(LabError, match="image sha256 differs"):
        worker.pack_kernel("x86_64-cccc")


def test_a_worker_refuses_work_from_other_bpflab_code() -> None:
    job = worker.Job(load_lab(), False, "f" * 64, str(PROJECT), {}, "run-1")
    with pytest.raises(LabError, match="other bpflab code than the coordinator"):
        worker.local(job)


def test_without_a_scheduler_the_lab_runs_its_own_cluster_on_loopback() -> None:
    eng = engine.engine()
    assert eng.local and eng.where.startswith("tcp://127.0.0.1:")
    [only] = eng.workers()
    assert only.resources["build"] == 1 and only.resources["guest"] == 1
    assert {f"boot-{a}" for a in ARCHES} <= set(only.resources)
    assert engine.engine() is eng  # one per process: nights and bisection steps share it


def test_a_scheduler_that_does_not_answer_is_one_lab_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again before the lab connects
    monkeypatch.setattr(engine, "CONNECT_S", 1.0)
    with pytest.raises(LabError, match=f"scheduler tcp://127.0.0.1:{port}: not reachable"):
        engine.engine(f"tcp://127.0.0.1:{port}")


def test_a_target_whose_workers_all_left_is_a_lab_error_after_a_grace(
        monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, str]] = []
    monkeypatch.setattr(engine, "record", lambda ctx, t, b, *rest: seen.append((t.label, str(b))))
    left = [w("A", **BOTH, **{"boot-x86_64": 1})]  # nobody boots arm64 any more
    arm, x86 = targets("arm64", 1)[0], targets("x86_64", 1)[0]
    pending = {"f1": arm, "f2": x86}
    orphaned: dict[object, float] = {}
    assert engine._orphans(left, None, pending, orphaned) == []  # type: ignore[arg-type]
    assert not seen  # a worker may be restarting: wait ORPHAN_S
    monkeypatch.setattr(engine, "ORPHAN_S", 0.0)
    assert engine._orphans(left, None, pending, orphaned) == ["f1"]  # type: ignore[arg-type]
    assert seen == [(arm.label, "no worker can boot arm64 (none declares boot-arm64) any "
                                "more: its workers left")]


def test_kvm_is_not_offered_where_the_lab_saw_kvm_guests_hang(tmp_path: Path) -> None:
    arches = tuple(ARCHES.values())
    (tmp_path / "accel.json").write_text(json.dumps({
        f"{socket.gethostname()}|QEMU 7.2|6.1|x86_64": {
            "accel": "tcg", "reason": "KVM guest printed nothing in 12 s (hangs)"}}))
    assert "kvm" not in worker.capabilities(arches, 0, 1, tmp_path, which=lambda n: True)


def test_errors_raised_on_a_worker_reach_the_coordinator_whole() -> None:
    import pickle
    from harness.errors import ConfigError
    err = pickle.loads(pickle.dumps(ConfigError("lab.yaml", "variants[0].patches[0]", "a patch")))
    assert isinstance(err, ConfigError) and err.key == "variants[0].patches[0]"
    assert str(err) == "lab.yaml: variants[0].patches[0]: a patch"
    assert str(pickle.loads(pickle.dumps(LabError("QEMU missing")))) == "QEMU missing"


def test_calling_a_run_off_ends_its_qemus_and_refuses_it_new_ones_leaving_other_runs(
        tmp_path: Path) -> None:
    import threading
    from harness.errors import LabError
    from harness.guest import Guest, call_off
    from harness.ops import Ops, working_for
    pids: dict[str, int] = {}
    started = {r: threading.Event() for r in ("run-a", "run-b")}
    ended: dict[str, str] = {}

    def drive(run: str) -> None:  # a worker thread in run's guest task, a stand-in QEMU
        with working_for(run):
            with Guest(["sleep", "60"], tmp_path / run, tmp_path / f"{run}.qmp", False) as g:
                assert g.proc is not None
                pids[run] = g.proc.pid
                started[run].set()
                g.proc.wait()
            try:  # the guest died: the task's thread would boot a fresh one
                with Guest(["sleep", "60"], tmp_path / f"{run}-2", tmp_path / "q2", False):
                    ended[run] = "booted again"
            except LabError as exc:
                ended[run] = str(exc)
    threads = [threading.Thread(target=drive, args=(r,), daemon=True) for r in started]
    for t in threads:
        t.start()
    assert all(e.wait(10) for e in started.values())
    assert call_off("run-a") == [pids["run-a"]]
    threads[0].join(10)
    assert ended == {"run-a": "run run-a was called off"}
    assert Path(f"/proc/{pids['run-b']}").exists()  # the other run's guest goes on
    with working_for("run-a"), pytest.raises(LabError, match="called off"):
        Ops(verbose=False).run(["true"])  # nor does it start a make or a git
    assert Ops(verbose=False).run(["true"]).returncode == 0  # outside the run: allowed
    assert call_off("run-b") == [pids["run-b"]]
    threads[1].join(10)
    assert ended["run-b"] == "run run-b was called off"


class FakeFuture:
    def __init__(self, workers: list[str]) -> None:
        self.workers, self.cancelled = workers, False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClient:
    def __init__(self) -> None:
        self.submitted: list[FakeFuture] = []

    def submit(self, fn: object, *args: object, **kw: object) -> FakeFuture:
        assert kw["allow_other_workers"] is False  # pinned: never a worker without the resources
        future = FakeFuture(list(kw["workers"]))  # type: ignore[call-overload]
        self.submitted.append(future)
        return future


def test_a_build_whose_builder_left_goes_to_the_least_loaded_other_builder() -> None:
    a, b, c = (w(n, build=1, **{"build-x86_64": 1}) for n in "ABC")
    eng = type("E", (), {"client": FakeClient()})()
    d = engine._Dispatch(eng, None, None, 3)  # type: ignore[arg-type]
    first, second, third = targets("x86_64", 3)
    d.build(first, a.address, 3)
    d.build(second, a.address, 2)
    d.build(third, b.address, 1)
    d._requeue_lost([b, c])  # A is gone
    client = eng.client
    assert [f.cancelled for f in client.submitted[:3]] == [True, True, False]
    # C had nothing, then one; B already had one: they share A's walk
    assert [f.workers for f in client.submitted[3:]] == [[c.address], [b.address]]
    assert sorted(t.commit.name for t, _ in d.builds.values()) == ["x86_64-c0", "x86_64-c1",
                                                                   "x86_64-c2"]
