"""The import layers (pyproject.toml's import-linter contracts) hold, and the check really bites."""
from __future__ import annotations

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
