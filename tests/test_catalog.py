"""The tests a target must run, listed on the host before any boot, named as the
suites' kmsg markers name them."""

from __future__ import annotations

import ast
import shutil
from math import prod
from pathlib import Path

import pytest

from harness import catalog
from harness.errors import LabError

SUITES = Path(__file__).resolve().parents[1] / "bpf_tests"
C_NAMES = ["spin_lock_in_inner_map", "timer_in_inner_map", "kptr_in_inner_map",
           "sleepable_uaf_inner_map_free", "race_kprobe_inner_map_free",
           "race_sleepable_fentry_inner_map_free"]


def parameter_count(func: ast.FunctionDef) -> int:
    """How many node ids a test function gives: the product of its parametrize lists."""
    counts = [len(d.args[1].elts) for d in func.decorator_list
              if isinstance(d, ast.Call) and ast.unparse(d.func).endswith("parametrize")
              and isinstance(d.args[1], (ast.List, ast.Tuple))]
    return prod(counts)


def counted_in_source() -> dict[str, int]:
    """Node ids per test file, counted from the source without pytest."""
    counts = {}
    for path in sorted((SUITES / "python").glob("test_*.py")):
        tree = ast.parse(path.read_text())
        counts[path.name] = sum(parameter_count(f) for f in tree.body
                                if isinstance(f, ast.FunctionDef) and f.name.startswith("test_"))
    return counts


@pytest.fixture(scope="module")
def python_ids() -> tuple[str, ...]:
    return catalog.python_tests()


def test_the_python_catalog_holds_every_test_of_the_suite(python_ids: tuple[str, ...]) -> None:
    assert "test_map_in_map_jit.py::test_inlined_inner_array_lookup_reads_the_requested_element" \
        in python_ids
    assert "test_map_in_map_basic.py::test_cgroup_storage_maps_are_refused_as_inner_maps" \
        "[percpu]" in python_ids
    per_file = {name: sum(1 for i in python_ids if i.startswith(f"{name}::"))
                for name in counted_in_source()}
    assert per_file == counted_in_source()
    assert len(python_ids) == sum(per_file.values()) == len(set(python_ids)) == 25


def test_the_python_catalog_is_the_same_every_time(python_ids: tuple[str, ...]) -> None:
    assert catalog.python_tests() == python_ids
    assert all(" " not in i and i.startswith("test_map_in_map_") for i in python_ids)


def suite_copy(tmp_path: Path) -> Path:
    root = tmp_path / "bpf_tests"
    shutil.copytree(SUITES / "python", root / "python",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return root


def test_python_ids_are_escaped_as_the_kmsg_markers_write_them(tmp_path: Path) -> None:
    root = suite_copy(tmp_path)
    (root / "python" / "test_zz_escape.py").write_text(
        "import pytest\nfrom bpfkit.expect import introduced\n\n\n"
        "@introduced(\"8766733641\")\n"
        "@pytest.mark.parametrize(\"x\", [\"a b\", \"\\u00e9\"])\n"
        "def test_y(x):\n    pass\n")
    ids = catalog.python_tests(root)
    assert ids[-2:] == ("test_zz_escape.py::test_y[a\\x20b]",
                        "test_zz_escape.py::test_y[\\xe9]")


def test_a_collection_error_is_a_lab_error_showing_pytests_words(tmp_path: Path) -> None:
    root = suite_copy(tmp_path)
    (root / "python" / "test_zz_broken.py").write_text("def test_x(:\n    pass\n")
    with pytest.raises(LabError, match="collecting the Python suite failed") as err:
        catalog.python_tests(root)
    assert "test_zz_broken.py" in str(err.value) and "SyntaxError" in str(err.value)


def test_the_c_catalog_lists_every_test_line_in_order() -> None:
    assert catalog.c_tests() == tuple(f"map_in_map::{n}" for n in C_NAMES)
    source = (SUITES / "c" / "tests.def").read_text()
    assert len(catalog.c_tests()) == source.count("\nTEST(")
    uses = [e for e in catalog.c_entries() if e.kind == "USES"]
    assert uses == [catalog.CEntry("USES", "kptr_in_inner_map", "03b77e17ae")]
    assert catalog.c_entries()[0] == catalog.CEntry("TEST", "spin_lock_in_inner_map",
                                                    "b7ff97925b", "test_spin_lock")


@pytest.mark.parametrize("text, complaint", [
    ('TEST(a, "8766733641", f)\nint x;\n', r"tests.def:2: expected TEST\(name"),
    ('/* one\n two */\nTEST(a, "8766733641")\n', r"tests.def:3: expected TEST\(name"),
    ('TEST(a, "HEAD", f)\n', r"tests.def:1: expected"),
    ('TEST(a, "8766733641", f)\nTEST(a, "8766733641", g)\n', "test a is defined twice"),
    ('TEST(a, "8766733641", f)\nUSES(b, "8766733641")\n', "USES names b, which no TEST"),
])
def test_a_malformed_test_table_is_refused(tmp_path: Path, text: str, complaint: str) -> None:
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "tests.def").write_text(text)
    with pytest.raises(LabError, match=complaint):
        catalog.c_tests(tmp_path)
