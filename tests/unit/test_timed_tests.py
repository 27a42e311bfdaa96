"""tests/conftest.py's TIMED_TESTS names real files and tests: a misspelt name would quietly move a
timed test into the parallel workers, where another test's load would decide whether it passes."""
import ast
from pathlib import Path

from conftest import ALL, TIMED_TESTS

SYSTEM = Path(__file__).resolve().parents[1] / "system"


def test_every_timed_file_and_test_exists():
    for name, tests in TIMED_TESTS.items():
        path = SYSTEM / name
        assert path.is_file(), f"TIMED_TESTS names {name}, which tests/system lacks"
        if tests is ALL:
            continue
        defined = {node.name for node in ast.walk(ast.parse(path.read_text()))
                   if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}
        assert tests, name
        assert not tests - defined, f"{name} has no test named {sorted(tests - defined)}"
