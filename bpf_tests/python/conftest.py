"""Map-in-map suite fixtures: declared commits (the commits file), kmsg markers, taint.

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

Environment: BPFLAB_COMMITS=<file> says which declared upstream commits the kernel
under test carries ('<id> present|absent <why>' lines, written by the lab's
harness/commits.py; bpfkit/expect.py). It is required, and must list every id a
selected test declares with @introduced. BPFLAB_SKIP_SLOW=1 skips tests marked slow.

`pytest --collect-only` needs neither root, nor BPF, nor the commits file: the lab
lists the tests on the host (harness/catalog.py, with --bpflab-list FILE).
"""

from __future__ import annotations

import json
import os
from typing import Any, Generator, Iterator

import pytest

from bpfkit.expect import ENV, CommitsFile, Declared, commits_from_env, missing
from bpfkit.markers import escape, kmsg_line, write_kmsg
from bpfkit.taint import KASAN_EXPECTED, TAINT_BAD_PAGE, read_taint

_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()
_COMMITS = pytest.StashKey[CommitsFile]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--bpflab-list", metavar="FILE",
                     help="with --collect-only: write the selected node ids to FILE, one a "
                          "line, as the kmsg markers write them (harness/catalog.py)")


def pytest_collection_finish(session: pytest.Session) -> None:
    path = session.config.getoption("--bpflab-list")
    if path:
        with open(path, "w", encoding="ascii") as f:
            f.writelines(f"{escape(item.nodeid)}\n" for item in session.items)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "introduced(commit): the upstream commit that "
                            "brought the checked behaviour (bpfkit.expect.introduced)")
    config.addinivalue_line("markers", "slow: long under TCG+KASAN; BPFLAB_SKIP_SLOW=1 skips")


def pytest_sessionstart(session: pytest.Session) -> None:
    if session.config.option.collectonly:
        return  # listing the tests touches neither the kernel nor the commits file
    if os.geteuid() != 0:
        raise pytest.UsageError("the map-in-map suite runs as root: bpf(), /dev/kmsg, "
                                "userfaultfd for kernel faults, capability drops")
    session.config.stash[_COMMITS] = commits_from_env()


def pytest_report_header(config: pytest.Config) -> list[str]:
    commits = config.stash.get(_COMMITS, None)
    if commits is None:
        return []
    return [f"bpflab: kernel {os.uname().release}, commits from {ENV}={commits.path}",
            *(f"bpflab: {note}" for note in commits.notes if ":" in note)]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # A test that names no commit cannot say which kernel it expects what from.
    commits = config.stash.get(_COMMITS, None)
    for item in items:
        declared = [m.args[0] for m in item.iter_markers("introduced")]
        if not declared:
            raise pytest.UsageError(f"{item.nodeid}: no @introduced commit declared")
        absent = missing(commits, declared) if commits is not None else []
        if absent:
            raise pytest.UsageError(
                f"{item.nodeid} declares {', '.join(absent)}, which {ENV}={commits.path} "
                f"does not list: every id in bpf_tests/commits.yaml needs a line there")
        if item.get_closest_marker("slow") and os.environ.get("BPFLAB_SKIP_SLOW") == "1":
            item.add_marker(pytest.mark.skip(reason="slow test, BPFLAB_SKIP_SLOW=1"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item,
                               call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    item.stash.setdefault(_REPORTS, {})[report.when] = report


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item,
                            nextitem: pytest.Item | None) -> Generator[None, Any, None]:
    """After each test, one line on stdout with its result (`bpflab-case {json}`): the
    lab keeps what a guest printed before it died, where the JUnit file (written at the
    end of the session) would be lost with the guest."""
    yield
    reporter = item.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    outcome, message, seconds = case_result(item.stash.get(_REPORTS, {}))
    line = json.dumps({"test": item.nodeid, "outcome": outcome, "message": message[:2000],
                       "seconds": round(seconds, 3)}, ensure_ascii=True)
    reporter.write_line(f"bpflab-case {line}")


def case_result(reports: dict[str, pytest.TestReport]) -> tuple[str, str, float]:
    """(passed|failed|skipped|error, message, seconds) from a test's phase reports."""
    seconds = sum(r.duration for r in reports.values())
    for when in ("setup", "call", "teardown"):
        r = reports.get(when)
        if r is None or r.passed:
            continue
        if r.skipped:
            reason = r.longrepr[2] if isinstance(r.longrepr, tuple) else str(r.longrepr)
            return "skipped", str(reason), seconds
        text = getattr(r.longrepr, "reprcrash", None)
        message = text.message if text is not None else str(r.longrepr)[-2000:]
        return ("failed" if when == "call" else "error"), message, seconds
    return ("passed" if "call" in reports else "error"), "", seconds


@pytest.fixture
def commits(request: pytest.FixtureRequest) -> Declared:
    """The declared commits of this test, as the commits file says for this kernel."""
    declared = [m.args[0] for m in request.node.iter_markers("introduced")]
    return Declared(request.config.stash[_COMMITS], os.uname().release, declared)


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
