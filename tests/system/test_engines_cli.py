"""`--engine` on real processes: a `coinfer server --engine onnxruntime` and a `coinfer device --engine
onnxruntime` answer as the eager halves do, and a missing onnxruntime stops either command at start
with the install hint (the packages made unimportable by a sitecustomize, as tests/system/
test_base_install.py does)."""
import json
import os
import subprocess
import sys

import pytest
import torch

from coinfer.lab.launch import ServiceProcess
from coinfer.split import DevicePart, ServerPart

pytest.importorskip("onnxruntime")

SENTENCES = ["The device runs the first blocks.", "Short one.",
             "Hidden states cross the link to the edge server, which finishes the job."]
MODEL, SPLIT = "random:bert-tiny", 2


@pytest.fixture
def env(tmp_path):
    return {**os.environ, "COINFER_ONNX_CACHE": str(tmp_path / "onnx"), "HF_HUB_OFFLINE": "1"}


def test_onnxruntime_halves_answer_as_eager(env, tiny_bert):
    ids, mask = tiny_bert.tokenize(SENTENCES)
    expected = ServerPart(tiny_bert, SPLIT)(DevicePart(tiny_bert, SPLIT)(ids, mask), mask)
    with ServiceProcess(["server", "--model", MODEL, "--split", str(SPLIT), "--engine", "onnxruntime",
                         "--listen", "127.0.0.1:0"], "server", env=env, stderr=subprocess.STDOUT) as server:
        assert any("engine: onnxruntime (plain)" in line for line in server.lines), server.lines
        done = subprocess.run([sys.executable, "-m", "coinfer", "device", "--model", MODEL, "--split", str(SPLIT),
                               "--engine", "onnxruntime", "--server", server.address, "--json", *SENTENCES],
                              capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    got = torch.tensor([json.loads(line)["output"] for line in done.stdout.splitlines()])
    assert float(torch.nn.functional.cosine_similarity(got, expected).min()) >= 0.99999
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert len(os.listdir(env["COINFER_ONNX_CACHE"])) == 2  # one export per half, in the cache given


@pytest.mark.parametrize("command", ["server", "device"])
def test_missing_onnxruntime_fails_at_start(command, env, tmp_path):
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['onnxruntime'] = None\n")
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), *filter(None, [env.get("PYTHONPATH")])])
    args = ["--listen", "127.0.0.1:0"] if command == "server" else ["--server", "127.0.0.1:9", "hello"]
    done = subprocess.run([sys.executable, "-m", "coinfer", command, "--model", MODEL, "--engine", "onnxruntime",
                           *args], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "pip install 'coinfer[onnx]'" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("flag, value, others", [
    ("--max-batch-size", "0", ["--max-batch-tokens", "--max-queue-delay-ms"]),
    ("--max-batch-tokens", "0", ["--max-batch-size", "--max-queue-delay-ms"]),
    ("--max-queue-delay-ms", "-1", ["--max-batch-size", "--max-batch-tokens"]),
])
def test_a_bad_batching_flag_is_named_alone(flag, value, others, env):
    done = subprocess.run([sys.executable, "-m", "coinfer", "server", "--model", MODEL, "--listen", "127.0.0.1:0",
                           flag, value], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2, done.stderr
    assert flag in done.stderr and value in done.stderr and "Traceback" not in done.stderr
    assert not any(other in done.stderr for other in others), done.stderr
