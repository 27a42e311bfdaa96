"""scripts/gpu_check (coinfer.lab.gpu_check): "no GPU" here is an answer, not a failure; locked clocks are
always reset; the energy arithmetic. NVML is the stand-in of tests/fakes.py (no GPU on these machines),
and the half checks run with the CPU standing in for the GPU."""
import json
import subprocess
import sys
import time

import pytest
import torch

from coinfer.lab import gpu_check
from fakes import FakeNvml


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is here: scripts/gpu_check runs the real check")
def test_without_a_gpu_it_exits_0_with_gpu_false_and_the_reason():
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "coinfer.lab.gpu_check"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1  # one JSON object, nothing else on stdout
    report = json.loads(lines[0])
    assert report["gpu"] is False and report["reason"]
    assert "available" in report["nvml"]
    assert time.monotonic() - started < 20


def test_locked_clocks_are_reset_after_the_workload():
    nvml = FakeNvml()
    seen = []
    out = gpu_check.try_locked_clocks(0, nvml, workload=lambda: seen.append(nvml.locked) or {"ran": True})
    assert out["permitted"] is True and out["reset"] is True and out["under_lock"] == {"ran": True}
    assert seen == [(300, 900)]  # the workload ran locked: lowest supported .. ~60 % of the top clock
    assert nvml.calls == ["lock 300 900", "reset"] and nvml.locked is None
    assert nvml.inits == 0  # every nvmlInit matched by a shutdown


def test_a_failing_workload_still_resets_the_clocks():
    nvml = FakeNvml()

    def boom():
        raise RuntimeError("CUDA out of memory")

    out = gpu_check.try_locked_clocks(0, nvml, workload=boom)
    assert out["permitted"] is True and "CUDA out of memory" in out["under_lock"]["error"]
    assert nvml.calls[-1] == "reset" and nvml.locked is None and nvml.inits == 0


@pytest.mark.parametrize("error", [FakeNvml.NVMLError_NoPermission, FakeNvml.NVMLError_NotSupported])
def test_a_refused_lock_is_reported_and_nothing_is_left_to_reset(error):
    nvml = FakeNvml(lock_error=error)
    out = gpu_check.try_locked_clocks(0, nvml, workload=lambda: pytest.fail("ran without the lock"))
    assert out["permitted"] is False and "nvmlDeviceSetGpuLockedClocks" in out["reason"]
    assert nvml.calls == ["lock 300 900"] and nvml.locked is None and nvml.inits == 0


def test_missing_nvml_is_a_reason():
    out = gpu_check.try_locked_clocks(0, FakeNvml(init_error=FakeNvml.NVMLError_LibraryNotFound))
    assert out["permitted"] is False and "NVML" in out["reason"]
    described = gpu_check.Nvml(0, FakeNvml(init_error=FakeNvml.NVMLError_LibraryNotFound)).describe()
    assert described["available"] is False and "nvmlInit" in described["reason"]


def test_energy_per_forward_comes_from_the_counter_around_the_loop():
    nvml = FakeNvml()
    gpu = gpu_check.Nvml(0, nvml)

    def forward():  # each forward costs 2 J on the counter (millijoules)
        nvml.energy_mj += 2000

    out = gpu_check.timed_loop(forward, lambda: None, gpu, repeats=5, min_s=0.0)
    gpu.close()
    assert out["forwards"] == 5 and out["energy_j_per_forward"] == pytest.approx(2.0)
    assert out["nvml_before"]["power_w"] == 70.0 and nvml.inits == 0


def test_half_checks_compare_and_time_each_dtype(tiny_bert):
    """The GPU path's logic with the CPU as the device: fp32 equals the CPU answer, bf16 is close."""
    nvml = FakeNvml()
    gpu = gpu_check.Nvml(0, nvml)
    out = gpu_check.half_checks(tiny_bert, (0, 1), "cpu", gpu, repeats=1, min_s=0.0,
                                deadline=time.monotonic() + 60)
    gpu.close()
    for k in ("k=0", "k=1"):
        row = out[k]
        assert row["fp32"]["fixed_8x128"]["max_abs_diff"] == 0.0
        assert row["bf16"]["padded_samples"]["min_cosine"] > 0.99
        assert row["bf16"]["time_1x128"]["median_ms"] > 0 and "energy_j_per_forward" in row["fp32"]["time_8x128"]
