"""Map-in-map suite fixtures: kernel identity, declared commits, kmsg markers, taint.

Kernel markers (for tying a KASAN report on the console to a test). Around every test
one line each is written to /dev/kmsg, at level 5 (KERN_NOTICE, so they reach a serial
console whose loglevel is 6 or more, e.g. the default 7; with `quiet` they are only in
dmesg), ASCII only, in exactly this form:

    bpflab: begin <nodeid>
    bpflab: end <nodeid> <outcome>

<nodeid> is pytest's node id; pytest.ini here makes this directory the rootdir, so it
reads test_map_in_map_jit.py::test_inlined_inner_array_lookup_reads_the_requested_element
wherever the suite is copied. Every character outside printable ASCII, and every space,
is written as \\xNN (\\uNNNN above U+00FF), cut at 900 characters, so the node id never
contains a space (bpfkit/markers.py). <outcome> is passed, failed, skipped, or error
(setup failed). The lines carry the KERN_NOTICE prefix <5> when written.
A KASAN report printed between the begin and end lines of one node id belongs to it.

Environment: BPFLAB_HAS_COMMITS=<file> lists commit ids (one per line, '#' comments)
that the kernel under test contains; when set, it replaces the release-number logic
for every @introduced commit (commits not listed count as absent).
BPFLAB_SKIP_SLOW=1 skips tests marked slow.
"""

from __future__ import annotations

import os
from typing import Any, Generator, Iterator

import pytest

from bpfkit.expect import Commit, Declared, Kernel, kernel_under_test
from bpfkit.markers import kmsg_line, write_kmsg
from bpfkit.taint import KASAN_EXPECTED, TAINT_BAD_PAGE, read_taint
_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "introduced(commit): the upstream commit that "
                            "brought the checked behaviour (bpfkit.expect.introduced)")
    config.addinivalue_line("markers", "slow: long under TCG+KASAN; BPFLAB_SKIP_SLOW=1 skips")


def pytest_sessionstart(session: pytest.Session) -> None:
    if os.geteuid() != 0:
        raise pytest.UsageError("the map-in-map suite runs as root: bpf(), /dev/kmsg, "
                                "userfaultfd for kernel faults, capability drops")


def pytest_report_header(config: pytest.Config) -> str:
    k = kernel_under_test()
    return f"bpflab: kernel {k.version.release}, expectations by {k.source()}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A test that names no commit cannot say which kernel it expects what from.
    for item in items:
        if item.get_closest_marker("introduced") is None:
            raise pytest.UsageError(f"{item.nodeid}: no @introduced commit declared")
        if item.get_closest_marker("slow") and os.environ.get("BPFLAB_SKIP_SLOW") == "1":
            item.add_marker(pytest.mark.skip(reason="slow test, BPFLAB_SKIP_SLOW=1"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item,
                               call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    item.stash.setdefault(_REPORTS, {})[report.when] = report


@pytest.fixture(scope="session")
def kernel() -> Kernel:
    return kernel_under_test()


@pytest.fixture
def commits(request: pytest.FixtureRequest, kernel: Kernel) -> Declared:
    marks = list(request.node.iter_markers("introduced"))
    declared: list[Commit] = [m.args[0] for m in marks]
    return Declared(kernel, declared)


def node_outcome(item: pytest.Item) -> str:
    reports = item.stash.get(_REPORTS, {})
    setup, call = reports.get("setup"), reports.get("call")
    if setup is not None and setup.outcome != "passed":
        return "skipped" if setup.skipped else "error"
    return call.outcome if call is not None else "error"


@pytest.fixture(autouse=True)
def kernel_markers(request: pytest.FixtureRequest) -> Iterator[None]:
    """Bracket the test with kmsg markers; fail it if KASAN tainted the kernel meanwhile."""
    item = request.node
    write_kmsg(kmsg_line("begin", item.nodeid))
    before = read_taint()
    yield
    after = read_taint()
    outcome = node_outcome(item)
    write_kmsg(kmsg_line("end", item.nodeid, outcome))
    # A test that failed already said why; a UAF reproducer on a kernel without the
    # fix expects the report (expect_kasan) and judged it itself.
    expected = item.stash.get(KASAN_EXPECTED, False)
    if after & TAINT_BAD_PAGE and not before & TAINT_BAD_PAGE and outcome != "failed" \
            and not expected:
        pytest.fail(f"kernel taint bit 5 (TAINT_BAD_PAGE: KASAN or bad page) appeared during "
                    f"this test: see the console between the bpflab markers ({before} -> {after})")


@pytest.fixture(scope="session")
def jit_enabled() -> Iterator[None]:
    """Inlined map lookups (elem_size, index masking) exist only for JITed programs."""
    path = "/proc/sys/net/core/bpf_jit_enable"
    try:
        with open(path) as f:
            old = f.read().strip()
    except OSError:
        pytest.skip("no BPF JIT (CONFIG_BPF_JIT unset): inlined lookups are JIT-only")
    if old == "0":
        try:
            with open(path, "w") as f:
                f.write("1")
        except OSError as e:
            pytest.skip(f"BPF JIT is off and cannot be switched on ({e}): lookups not inlined")
    yield
    if old == "0":
        with open(path, "w") as f:
            f.write(old)
