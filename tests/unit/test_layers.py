"""The import layers (pyproject.toml's import-linter contracts) hold, and the check really bites; the
radio's formulas are written once, in core/radio.py."""
from __future__ import annotations

import ast
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "lint_layers"
PRODUCT = ("core", "protos", "channel", "server", "device", "planner", "lab")


def lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), "--root", str(root)], capture_output=True, text=True, timeout=300)


@pytest.fixture
def copy_of_repo(tmp_path):
    """The product folders and pyproject.toml, copied: a tree to break on purpose."""
    for folder in PRODUCT:
        shutil.copytree(REPO / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_layer_contracts_hold():
    done = lint(REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 kept, 0 broken" in done.stdout


def append(path: Path, line: str) -> None:
    path.write_text(path.read_text() + "\n" + line + "\n")


@pytest.mark.parametrize("file, line, broken", [
    # core reaching up into a process package
    ("core/codecs.py", "from coinfer.server import batcher", "layers"),
    # a process package using another one
    ("server/metrics.py", "from coinfer.planner import scenario", "layers"),
    # anything importing lab
    ("planner/sweep.py", "from coinfer.lab import demo", "layers"),
    # a cycle inside core
    ("core/errors.py", "from coinfer import security", "no import cycles"),
])
def test_a_violation_made_on_purpose_breaks_the_check(copy_of_repo, file, line, broken):
    assert lint(copy_of_repo).returncode == 0  # the untouched copy passes: what fails below is the change
    append(copy_of_repo / file, line)
    done = lint(copy_of_repo)
    assert done.returncode != 0
    assert f"{broken}" in done.stdout and "BROKEN" in done.stdout, done.stdout


def test_a_new_core_module_must_be_given_a_layer(copy_of_repo):
    (copy_of_repo / "core" / "newcomer.py").write_text('"""in no layer yet"""\n')
    done = lint(copy_of_repo)
    assert done.returncode != 0 and "newcomer" in done.stdout, done.stdout


# --- the radio's formulas, once -----------------------------------------------------------------
RADIO = Path("core") / "radio.py"


def _radio_formulas(tree: ast.AST):
    """(line, which) of each radio formula written in this module's code (docstrings and comments, which
    may quote a formula, are not code):
      shannon     log2(1 + x): R(p) = B log2(1 + g p / (B N0)) or its spectral efficiency;
      path loss   d ** (-alpha): a power to a negated variable exponent;
      dB          10 ** (x / 10): dB (or dBm) to linear."""
    def is_const(node, value):
        return isinstance(node, ast.Constant) and not isinstance(node.value, bool) and node.value == value

    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "log2":
            arg = node.args[0] if node.args else None
            if isinstance(arg, ast.BinOp) and isinstance(arg.op, ast.Add) and (is_const(arg.left, 1)
                                                                              or is_const(arg.right, 1)):
                yield node.lineno, "shannon"
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
            exp = node.right
            if (isinstance(exp, ast.UnaryOp) and isinstance(exp.op, ast.USub)
                    and isinstance(exp.operand, (ast.Name, ast.Attribute))):
                yield node.lineno, "path loss"
            if (is_const(node.left, 10) and isinstance(exp, ast.BinOp) and isinstance(exp.op, ast.Div)
                    and is_const(exp.right, 10)):
                yield node.lineno, "dB"


def test_the_radio_formulas_are_written_once_in_core_radio():
    found: dict[str, list[str]] = {"shannon": [], "path loss": [], "dB": []}
    for folder in ("core", "channel", "server", "device", "planner", "lab"):
        for path in sorted((REPO / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
            for line, which in _radio_formulas(tree):
                found[which].append(f"{path.relative_to(REPO)}:{line}")
    for which, sites in found.items():
        elsewhere = [s for s in sites if not s.startswith(f"{RADIO}:")]
        assert not elsewhere, f"the {which} formula is written outside {RADIO} (call coinfer.radio): {elsewhere}"
        assert sites, f"no {which} formula found in {RADIO}: the scan no longer sees it"


def test_the_radio_scan_sees_each_spelling():
    """The scan above bites: each formula, as one might write it again, is found; its words in a
    docstring are not."""
    source = '''
"""R(p) = B log2(1 + g p / (B N0)), g = PL0 d ** (-alpha), 10 ** (x / 10)"""
rate = bandwidth * math.log2(1.0 + gain * p / (bandwidth * n0))
rate = b * np.log2(snr + 1)
gain = 10 ** (ref_db / 10) * distance_m ** (-exponent)
gain = d ** -self.alpha
scale = head_dim ** (-0.5)
phi = 2.0 ** (-q * rho)
'''
    assert [which for _, which in sorted(_radio_formulas(ast.parse(source)))] == \
        ["shannon", "shannon", "dB", "path loss", "path loss"]
