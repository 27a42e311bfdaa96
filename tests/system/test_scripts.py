"""Every script in scripts/ works as on a fresh clone: nothing activated, called from anywhere.

Each is a bash script that sources scripts/_env.sh (which makes .venv when it is missing and puts it
on PATH), so it needs neither an activated .venv nor the repository as its working folder. Here the
scripts run with .venv/bin off PATH, without VIRTUAL_ENV, from a temporary folder.
"""
import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = sorted(p.name for p in (REPO / "scripts").iterdir() if p.is_file() and not p.name.startswith("_"))


def bare_env() -> dict:
    """This environment as a new shell on a fresh clone has it: no virtual environment on PATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if p and not (Path(p) / "activate").exists())  # no virtualenv's bin/
    return env


def run_script(name: str, *args: str, cwd: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(REPO / "scripts" / name), *args], cwd=cwd, env=bare_env(), capture_output=True,
                          text=True, timeout=timeout)


def test_the_bare_environment_has_no_coinfer_on_path(tmp_path):
    """The check bites: a plain `python3` from this PATH cannot import coinfer."""
    env = bare_env()
    assert str(REPO / ".venv" / "bin") not in env["PATH"].split(os.pathsep) and "VIRTUAL_ENV" not in env
    probe = subprocess.run(["python3", "-c", "import coinfer"], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=60)
    assert probe.returncode != 0 and "No module named 'coinfer'" in probe.stderr


def test_every_script_sets_up_its_environment():
    assert {"demo", "test", "reproduce_paper", "gen_protos", "load_test", "device_memory"} <= set(SCRIPTS)
    for name in SCRIPTS:
        text = (REPO / "scripts" / name).read_text()
        assert text.startswith("#!/usr/bin/env bash\n"), name
        assert 'source "$(dirname "$0")/_env.sh"' in text, name
        assert os.access(REPO / "scripts" / name, os.X_OK), name


@pytest.mark.parametrize("name", SCRIPTS)
def test_help(name, tmp_path):
    done = run_script(name, "--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "usage:" in done.stdout


def test_reproduce_paper_writes_relative_to_the_caller(tmp_path):
    """A real run (one cheap part of the quick reproduction), --out relative to where it is called."""
    done = run_script("reproduce_paper", "--quick", "--only", "fig6", "--out", "paper", cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "paper"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["quick"] is True and list(summary["figures"]) == ["fig6_split"]
    assert (out / "fig6_split.csv").stat().st_size > 0 and (out / "fig6_split.png").stat().st_size > 10_000
    assert "written to paper in " in done.stdout and "holds" in done.stdout
