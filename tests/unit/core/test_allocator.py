"""The malloc thresholds coinfer sets keep a forward's buffers in the process (counted in page faults,
not timed, so the test does not depend on the machine's noise)."""
import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")

# A forward in a worker thread, as the server's batcher runs it; prints the page faults of the last one.
FORWARD_FAULTS = r"""
import json, resource, threading
import torch
import coinfer
from coinfer.lab.bench.common import fixed_tokens
from coinfer.models import resolve_model
from coinfer.lab.monolithic import WholeModel

src = resolve_model("minilm")
ids, mask = fixed_tokens(src, 8, 128)
whole = WholeModel(src)
faults = []

def forwards():
    for _ in range(3):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        whole(ids, mask)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)

worker = threading.Thread(target=forwards)
worker.start()
worker.join()
print(json.dumps({"tuned": coinfer.MALLOC_TUNED, "faults": faults[-1]}))
"""


def _last_forward_faults(tuning: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env["COINFER_MALLOC_TUNING"] = tuning
    done = subprocess.run([sys.executable, "-c", FORWARD_FAULTS], env=env, capture_output=True, text=True,
                          timeout=300, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_tuned_forward_page_faults_a_fraction_of_glibc_defaults():
    tuned, default = _last_forward_faults("1"), _last_forward_faults("0")
    if not tuned["tuned"]:
        pytest.skip("mallopt is not available (not glibc)")
    assert default["tuned"] is False
    assert tuned["faults"] * 5 < default["faults"], (tuned, default)
