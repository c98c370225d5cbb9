"""End to end: the static HTML report opened in Debian's headless Chromium renders the
matrix, the transitions and the KASAN signatures, and its log links resolve."""

from __future__ import annotations

import subprocess
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path

import pytest

from harness import report
from harness.results import Status
from harness.store import Store
from tests.test_report import outcome, put

pytestmark = pytest.mark.e2e
CHROMIUM = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"]
SIG = "KASAN: use-after-free in bpf_map_fd_put_ptr"


class Tables(HTMLParser):
    """Rows of cells per table id, and every href, from the DOM Chromium dumps."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.hrefs: list[str] = []
        self._table: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table":
            self._table = a.get("id") or ""
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "a" and a.get("href"):
            self.hrefs.append(str(a["href"]))

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._table is not None:
            self.tables[self._table][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


@pytest.fixture
def page(tmp_path: Path) -> Path:
    store = Store(tmp_path / "run")
    put(store, outcome("v6.1.190", 0, "x86_64"), {"test_a": Status.PASS, "test_b": Status.PASS})
    put(store, outcome("v6.1.190", 0, "arm64"), {"test_a": Status.PASS, "test_b": Status.FAIL})
    put(store, outcome("v6.1.190", 0, "x86_64", "uaf-inject", (SIG,)),
        {"test_a": Status.PASS, "test_b": Status.PASS})
    put(store, outcome("v6.1.192", 1, "x86_64"), {"test_a": Status.PASS, "test_b": Status.PASS})
    put(store, outcome("v6.1.192", 1, "arm64"), {"test_a": Status.PASS, "test_b": Status.PASS})
    return report.write_all(store)[1]


def chromium(*args: str, cwd: Path) -> str:
    done = subprocess.run([*CHROMIUM, f"--user-data-dir={cwd / 'profile'}", *args],
                          capture_output=True, text=True, timeout=120, cwd=cwd)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_chromium_renders_the_matrix_transitions_and_reports(page: Path, tmp_path: Path) -> None:
    parsed = Tables()
    parsed.feed(chromium("--dump-dom", page.as_uri(), cwd=tmp_path))
    matrix = parsed.tables["matrix"]
    assert matrix[0] == ["commit", "arm64/base", "x86_64/base", "x86_64/uaf-inject"]
    assert [row[0].split()[0] for row in matrix[1:]] == ["v6.1.190", "v6.1.192"]
    assert "1 bad" in matrix[1][1] and "2/2" in matrix[2][1]
    assert any(r[:4] == ["t.py::test_b", "arm64/base", "v6.1.190", "v6.1.192"]
               for r in parsed.tables["transitions"][1:])
    assert parsed.tables["reports"][1][0] == SIG
    local = [h for h in parsed.hrefs if not h.startswith(("http", "#"))]
    assert local and all((page.parent / h).exists() for h in local), local


def test_chromium_paints_the_page(page: Path, tmp_path: Path) -> None:
    shot = tmp_path / "report.png"
    chromium(f"--screenshot={shot}", "--window-size=1200,800", page.as_uri(), cwd=tmp_path)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 5000


HOSTILE = "<img src=x onerror=\"document.body.setAttribute('data-pwned','1')\">"


def test_hostile_names_and_report_text_run_no_script_in_chromium(tmp_path: Path) -> None:
    store = Store(tmp_path / "run")
    o = outcome(f"v1{HOSTILE}", 0, "x86_64", "base", (f"KASAN: {HOSTILE}",),
                test=f"test_x.py::test_{HOSTILE}")
    o = replace(o, reason=f"error: {HOSTILE}", subject=HOSTILE)
    put(store, o, {f"test_{HOSTILE}": Status.FAIL})
    page = report.write_all(store)[1]
    dom = chromium("--dump-dom", page.as_uri(), cwd=tmp_path)
    assert "data-pwned=" not in dom  # the attribute the payload would set on <body>
    assert "<img" not in dom and "&lt;img src=x" in dom  # shown, as text
