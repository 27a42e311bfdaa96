"""One OpenMP pool per process: threads that only prepare work give theirs back or never start one.
Counted in OS threads (libgomp's workers are threads of the process), in a fresh interpreter each."""
import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="libgomp and /proc are Linux's")

PRELUDE = r"""
import json, os, threading
import torch
from coinfer.openmp import release_thread_pool, single_threaded_here, _libgomp

def threads():
    return len(os.listdir("/proc/self/task"))

big = torch.randn(4_000_000)  # far above ATen's grain size: its ops run in parallel regions
if _libgomp() is None or torch.get_num_threads() < 2:
    print(json.dumps({"skip": "libgomp not in use or only one torch thread"}))
    raise SystemExit
"""


def _run(body: str) -> dict:
    done = subprocess.run([sys.executable, "-c", PRELUDE + body], capture_output=True, text=True, timeout=300,
                          check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if "skip" in result:
        pytest.skip(result["skip"])
    return result


def test_release_gives_the_calling_threads_workers_back():
    result = _run(r"""
before = threads()
torch.isfinite(big).all()
with_pool = threads()
released = release_thread_pool()
after = threads()
torch.isfinite(big).all()  # computing again starts the pool again
print(json.dumps({"before": before, "with_pool": with_pool, "released": released, "after": after,
                  "again": threads()}))
""")
    assert result["released"] is True
    assert result["with_pool"] > result["before"]
    assert result["after"] == result["before"]
    assert result["again"] == result["with_pool"]


def test_single_threaded_thread_starts_no_pool_and_leaves_others_theirs():
    result = _run(r"""
out = {}
def prepare():
    out["single"] = single_threaded_here()
    start = threads()
    torch.isfinite(big).all(); (big * 2).sum()
    out["added_by_single"] = threads() - start
    out["single_threads"] = torch.get_num_threads()
worker = threading.Thread(target=prepare)
worker.start(); worker.join()
# join() returns before the OS thread has gone from /proc; it must not be counted as the main's worker
for _ in range(500):
    if not os.path.exists(f"/proc/self/task/{worker.native_id}"):
        break
    threading.Event().wait(0.01)
start = threads()
torch.isfinite(big).all()
out["added_by_main"] = threads() - start
out["main_threads"] = torch.get_num_threads()
print(json.dumps(out))
""")
    assert result["single"] is True
    assert result["added_by_single"] == 0 and result["single_threads"] == 1
    assert result["added_by_main"] > 0 and result["main_threads"] >= 2


def test_server_half_keeps_no_pool_on_the_thread_that_built_it():
    # Loading starts threads of other kinds too; what counts is that giving back this thread's pool
    # afterwards finds nothing left to give back.
    result = _run(r"""
from coinfer.models import resolve_model
from coinfer.server.half import ServerHalf
half = ServerHalf(resolve_model("minilm"), 1)
after_build = threads()
release_thread_pool()
after_build_released = threads()
half.apply(1, 1, 0.5, "magnitude")  # re-pruning runs parallel ops too
after_apply = threads()
release_thread_pool()
print(json.dumps({"after_build": after_build, "after_build_released": after_build_released,
                  "after_apply": after_apply, "after_apply_released": threads()}))
""")
    assert result["after_build_released"] == result["after_build"]
    assert result["after_apply_released"] == result["after_apply"] == result["after_build"]
