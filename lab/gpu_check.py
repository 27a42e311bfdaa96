"""`scripts/gpu_check`: the CUDA path of the server half, checked on a machine with a GPU.

It builds the server half the way `coinfer server` does (`ServerHalf`, from the local checkpoint) on
the GPU in fp32 and bf16 and on the CPU, feeds all of them the same hidden states (the device half's,
computed here on the CPU) and reports how far the GPU answers are from the CPU ones per split point;
times forwards with torch.cuda.synchronize (median of N, batch 8 x 128 and 1 x 128) with NVML power,
energy and clocks read around each timed loop; tries to lock the GPU clocks through the same code the
server uses for a plan's cap (`FrequencyControl`), times the loop again at the lower clock, and always
resets them; and starts a real `coinfer server --device cuda` that a real `coinfer device` process
queries over 127.0.0.1.

Prints one JSON object and exits 0 in every case the machine decides: without a CUDA device (a
CPU-only torch build included) it prints {"gpu": false, "reason": ...}, with what NVML says where it
says anything. Every CUDA and NVML call is guarded; a section that fails reports its error and the
others still run. The whole run stays inside --budget-s (sections past it are reported as skipped).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time

DEFAULT_SPLITS = (0, 3)
SHAPES = ((8, 128), (1, 128))
DTYPES = ("fp32", "bf16")
# NVML clock ids (pynvml's NVML_CLOCK_*), spelled here so a binding without the constants still works
CLOCKS = {"graphics_mhz": 0, "sm_mhz": 1, "mem_mhz": 2}


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _guarded(fn, *args, **kwargs) -> dict:
    """fn's dict, or {"error": ...}: one failing section never ends the check."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - reported in the JSON, never a traceback
        return {"error": _error(exc)}


# --- NVML ----------------------------------------------------------------------------------------
def _query(fn, *args):
    """One NVML reading or None: a query the GPU or the binding does not support is absent, not fatal."""
    try:
        value = fn(*args)
    except Exception:  # noqa: BLE001 - NVMLError_NotSupported, a binding without the function, ...
        return None
    return value.decode() if isinstance(value, bytes) else value


class Nvml:
    """NVML for GPU `index` (pynvml, or the fake a test passes); `reason` when it cannot be used."""

    def __init__(self, index: int = 0, nvml=None):
        from coinfer.sysstats import NvmlUnavailable, open_nvml

        self.index, self.module, self.handle, self.reason = index, None, None, None
        try:
            self.module, self.handle = open_nvml(index, nvml)
        except NvmlUnavailable as exc:
            self.reason = str(exc)
        except Exception as exc:  # noqa: BLE001 - a broken binding is a reason too
            self.reason = _error(exc)

    @property
    def available(self) -> bool:
        return self.handle is not None

    def _call(self, name: str, *args):
        fn = getattr(self.module, name, None)
        return None if fn is None else _query(fn, self.handle, *args)

    def describe(self) -> dict:
        if not self.available:
            return {"available": False, "reason": self.reason}
        limit_mw = self._call("nvmlDeviceGetPowerManagementLimit")
        graphics = self.supported_graphics_mhz()
        return {"available": True, "index": self.index, "name": self._call("nvmlDeviceGetName"),
                "driver": _query(getattr(self.module, "nvmlSystemGetDriverVersion", lambda: None)),
                "power_limit_w": limit_mw / 1e3 if limit_mw is not None else None,
                "max_graphics_mhz": self._call("nvmlDeviceGetMaxClockInfo", CLOCKS["graphics_mhz"]),
                "supported_graphics_mhz": [min(graphics), max(graphics), len(graphics)] if graphics else None,
                "total_energy_counter": self._call("nvmlDeviceGetTotalEnergyConsumption") is not None}

    def supported_graphics_mhz(self) -> list[int]:
        mems = self._call("nvmlDeviceGetSupportedMemoryClocks") or []
        return sorted({c for mem in mems for c in (self._call("nvmlDeviceGetSupportedGraphicsClocks", mem) or [])})

    def read(self) -> dict:
        """Power (W, NVML's recent average), the total-energy counter (J since driver load), clocks (MHz),
        temperature (C); None for what is not available."""
        if not self.available:
            return {}
        power_mw = self._call("nvmlDeviceGetPowerUsage")
        energy_mj = self._call("nvmlDeviceGetTotalEnergyConsumption")
        out = {"power_w": power_mw / 1e3 if power_mw is not None else None,
               "energy_j": energy_mj / 1e3 if energy_mj is not None else None,
               "temperature_c": self._call("nvmlDeviceGetTemperature", 0)}
        out.update({name: self._call("nvmlDeviceGetClockInfo", clock) for name, clock in CLOCKS.items()})
        return out

    def close(self) -> None:
        if self.available:
            from coinfer.sysstats import close_nvml

            close_nvml(self.module)
            self.handle = None


# --- locked clocks -------------------------------------------------------------------------------
def try_locked_clocks(index: int = 0, nvml=None, workload=None, fraction: float = 0.6) -> dict:
    """Lock the GPU's graphics clock to about `fraction` of its highest supported clock (the range from
    the lowest supported clock up to it, as a plan's cap is set), run `workload` (a callable returning a
    dict) under it, and reset the clocks whatever happens. Reports whether NVML permitted the lock."""
    from coinfer.frequency import FrequencyControl

    probe = Nvml(index, nvml)
    try:
        if not probe.available:
            return {"permitted": False, "reason": f"NVML unavailable ({probe.reason})"}
        clocks = probe.supported_graphics_mhz()
        default = probe.read()
    finally:
        probe.close()
    if not clocks:
        return {"permitted": False, "reason": "the GPU lists no supported graphics clocks"}
    top = max(clocks)
    target = max([c for c in clocks if c <= fraction * top] or [min(clocks)])
    out = {"target_mhz": target, "max_supported_mhz": top, "clocks_before": default}
    control = FrequencyControl("gpu", top * 1e6, device_index=index, nvml=nvml)
    locked = False
    try:
        if control.mode != "nvml":
            return {**out, "permitted": False, "reason": control.reason}
        control.set_cap(target * 1e6)
        locked = control.mode == "nvml"  # a refusal falls back to "fixed" with the reason
        out.update(permitted=locked, reason=None if locked else control.reason)
        if locked and workload is not None:
            out["under_lock"] = _guarded(workload)
    finally:
        if locked:
            control.reset()  # never leave the GPU changed
            out["reset"] = control.reason is None  # reset() leaves its failure as the reason
            if control.reason is not None:
                out["reset_error"] = control.reason
        control.close()
    if locked:
        after = Nvml(index, nvml)
        out["clocks_after_reset"] = after.read()
        after.close()
    return out


# --- CUDA ----------------------------------------------------------------------------------------
def cuda_probe(index: int) -> tuple[bool, str | None]:
    """Whether torch can compute on CUDA device `index`, else why not."""
    try:
        import torch
    except Exception as exc:  # noqa: BLE001
        return False, f"torch not importable: {_error(exc)}"
    if torch.version.cuda is None:
        return False, (f"torch {torch.__version__} is a CPU-only build (torch.version.cuda is None); "
                       "install a CUDA build of torch to run the GPU half")
    try:
        if not torch.cuda.is_available():
            return False, f"torch.cuda.is_available() is False (torch {torch.__version__}, CUDA {torch.version.cuda})"
        count = torch.cuda.device_count()
        if index >= count:
            return False, f"no CUDA device {index} ({count} visible)"
        torch.zeros(1, device=f"cuda:{index}")  # the driver really answers
    except Exception as exc:  # noqa: BLE001 - a driver/runtime mismatch shows up here
        return False, f"CUDA initialisation failed: {_error(exc)}"
    return True, None


def cuda_description(index: int) -> dict:
    import torch

    props = torch.cuda.get_device_properties(index)
    return {"device": torch.cuda.get_device_name(index), "capability": list(torch.cuda.get_device_capability(index)),
            "memory_gib": round(props.total_memory / 2**30, 1), "torch": torch.__version__,
            "torch_cuda": torch.version.cuda, "bf16_supported": torch.cuda.is_bf16_supported(),
            # fp32 on the GPU is real fp32 only with TF32 matmuls off (torch's default): say which held
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32}


def _inputs(src, batch: int, seq_len: int, split: int):
    """Hidden states after block `split` (token ids at 0) from the CPU device half, and the mask."""
    from coinfer.lab.bench.common import fixed_tokens
    from coinfer.split import DevicePart

    ids, mask = fixed_tokens(src, batch, seq_len)
    return DevicePart(src, split)(ids, mask), mask


def _padded_inputs(src, split: int):
    """The sample sentences as one padded batch: the mask matters here, unlike in the fixed batch."""
    from coinfer.samples import SENTENCES
    from coinfer.split import DevicePart

    ids, mask = src.tokenize(list(SENTENCES), src.max_seq_length)
    return DevicePart(src, split)(ids, mask), mask


def compare(gpu_out, cpu_out) -> dict:
    import torch

    a, b = gpu_out.double(), cpu_out.double()
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    return {"max_abs_diff": float((a - b).abs().max()), "min_cosine": float(cos.min())}


def timed_loop(fn, sync, gpu: Nvml | None, repeats: int, min_s: float, max_s: float = 20.0) -> dict:
    """Median forward time over at least `repeats` forwards and `min_s` seconds (so the energy counter,
    which NVML updates every few ms, has moved well), each between two synchronizes; NVML readings
    before and after give energy per forward and mean power (gpu None: a CPU loop, times only)."""
    for _ in range(3):
        fn()
    sync()
    before = gpu.read() if gpu is not None else {}
    times = []
    started = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - started < min_s:
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - started > max_s:
            break
    elapsed = time.perf_counter() - started
    times.sort()
    out = {"forwards": len(times), "median_ms": round(statistics.median(times) * 1e3, 4),
           "p10_ms": round(times[len(times) // 10] * 1e3, 4),
           "p90_ms": round(times[(len(times) * 9) // 10] * 1e3, 4), "seconds": round(elapsed, 3)}
    if gpu is None:
        return out
    after = gpu.read()
    out.update(nvml_before=before, nvml_after=after)
    if before.get("energy_j") is not None and after.get("energy_j") is not None:
        joules = after["energy_j"] - before["energy_j"]
        out.update(energy_j_per_forward=round(joules / len(times), 6), mean_power_w=round(joules / elapsed, 2))
    else:
        out["energy"] = "no NVML total-energy counter" if gpu.available else f"NVML unavailable ({gpu.reason})"
    return out


def synchronizer(device: str):
    """What waits for `device` to finish its queued work (nothing to wait for on the CPU)."""
    import torch

    if device.startswith("cuda"):
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def half_checks(src, splits, device: str, gpu: Nvml | None, repeats: int, min_s: float, deadline: float) -> dict:
    """Per split point: the fp32/bf16 answers of the half on `device` (cuda:N; the tests pass cpu)
    against the CPU's fp32 ones on the same hidden states, and timings."""
    import torch

    from coinfer.server.half import ServerHalf
    from coinfer.split import GenerationOptions

    sync = synchronizer(device)
    results = {}
    for k in splits:
        if time.monotonic() > deadline:
            results[f"k={k}"] = {"skipped": "time budget spent"}
            continue
        row: dict = {}
        cpu = ServerHalf(src, k, device="cpu")
        checks = {"fixed_8x128": _inputs(src, 8, 128, k), "padded_samples": _padded_inputs(src, k)}
        expected = {name: cpu.run(cpu.state, x, m, GenerationOptions())[0] for name, (x, m) in checks.items()}
        x8, m8 = checks["fixed_8x128"]
        row["cpu_fp32_8x128_median_ms"] = timed_loop(lambda: cpu.state.part(x8, m8), lambda: None, None,
                                                     3, 0.0)["median_ms"]  # what the GPU is compared with
        for dtype in DTYPES:
            entry: dict = {}
            try:
                half = ServerHalf(src, k, device=device, dtype=dtype)
                for name, (x, m) in checks.items():
                    entry[name] = compare(half.run(half.state, x, m, GenerationOptions())[0], expected[name])
                part, target = half.state.part, half.dtype
                for batch, seq_len in SHAPES:
                    x, m = _inputs(src, batch, seq_len, k)
                    x = x.to(device, target) if x.is_floating_point() else x.to(device)
                    m = m.to(device)
                    entry[f"time_{batch}x{seq_len}"] = timed_loop(lambda: part(x, m), sync, gpu, repeats, min_s)
            except Exception as exc:  # noqa: BLE001 - e.g. out of memory, a missing kernel
                entry["error"] = _error(exc)
            finally:
                half = part = None  # noqa: F841 - the GPU memory of one half at a time
                try:
                    torch.cuda.empty_cache()
                except Exception:  # noqa: BLE001
                    pass
            row[dtype] = entry
        results[f"k={k}"] = row
    return results


def serve_check(model: str, split: int, device: str, timeout_s: float = 120.0) -> dict:
    """A real `coinfer server --device DEVICE` (cuda:N) on 127.0.0.1 and one `coinfer device --json` request
    to it; the answer against the same split computed here on the CPU. Both processes are stopped."""
    import numpy as np
    import torch

    from coinfer.lab.launch import ServiceProcess
    from coinfer.models import resolve_model
    from coinfer.server.half import ServerHalf
    from coinfer.split import DevicePart, GenerationOptions

    sentence = "The edge server finishes what the device started."
    started = time.perf_counter()
    with ServiceProcess(["--log-level", "INFO", "server", "--model", model, "--split", str(split),
                         "--device", device, "--listen", "127.0.0.1:0"], "gpu-check-server",
                        ready_timeout_s=timeout_s, stderr=subprocess.STDOUT) as server:
        ready_s = time.perf_counter() - started
        left_s = max(10.0, timeout_s - ready_s)  # one budget for both processes
        done = subprocess.run([sys.executable, "-m", "coinfer", "device", "--model", model, "--server", server.address,
                               "--split", str(split), "--json", "--timeout-s", str(left_s), sentence],
                              capture_output=True, text=True, timeout=left_s + 30)
        log = server.output()
        code = server.stop()
    out = {"server_ready_s": round(ready_s, 2), "server_exit": code, "device_exit": done.returncode,
           # the server's INFO line says where the half runs: a CUDA request that fell back to the CPU shows here
           "server_on_device": f" on {device}" in log}
    if done.returncode != 0:
        return {**out, "ok": False, "device_stderr": done.stderr[-800:]}
    record = json.loads(done.stdout.splitlines()[0])
    got = torch.tensor(record["output"])
    src = resolve_model(model)
    ids, mask = src.tokenize([sentence], src.max_seq_length)
    cpu = ServerHalf(src, split, device="cpu")
    expected = cpu.run(cpu.state, DevicePart(src, split)(ids, mask), mask, GenerationOptions())[0][0]
    out.update(compare(got[None], expected[None]), end_to_end_ms=record["end_to_end_ms"],
               answer_norm=float(np.linalg.norm(np.asarray(record["output"]))))
    out["ok"] = out["server_on_device"] and code == 0 and out["min_cosine"] > 0.999
    return out


# --- the check -----------------------------------------------------------------------------------
def check(model: str = "minilm", splits=DEFAULT_SPLITS, index: int = 0, repeats: int = 30, min_s: float = 2.0,
          serve: bool = True, budget_s: float = 240.0, nvml=None) -> dict:
    """The whole check as one JSON-ready dict (see the module's doc)."""
    started = time.monotonic()
    deadline = started + budget_s
    gpu = Nvml(index, nvml)
    report: dict = {"gpu": False, "nvml": gpu.describe()}
    try:
        ok, reason = cuda_probe(index)
        if not ok:
            nvml_note = "" if gpu.available else f"; NVML: {gpu.reason}"
            report["reason"] = reason + nvml_note
            if gpu.available:  # NVML needs no torch: the clock lock can still be tried
                gpu.close()
                report["locked_clocks"] = _guarded(try_locked_clocks, index, nvml)
            return report
        report.update(gpu=True, cuda=_guarded(cuda_description, index))
        from coinfer.models import resolve_model

        src = resolve_model(model)
        report["model"] = src.name
        device = f"cuda:{index}"
        report["server_half"] = _guarded(half_checks, src, splits, device, gpu, repeats, min_s, deadline)
        gpu.close()
        if time.monotonic() < deadline:
            report["locked_clocks"] = _guarded(try_locked_clocks, index, nvml,
                                               workload=lambda: locked_workload(src, max(splits), device, index,
                                                                                repeats, min_s, nvml))
        else:
            report["locked_clocks"] = {"skipped": "time budget spent"}
        if not serve:
            report["serve"] = {"skipped": "--no-serve"}
        elif time.monotonic() + 60 < deadline:
            report["serve"] = _guarded(serve_check, model, max(splits), device,
                                       timeout_s=max(30.0, deadline - time.monotonic()))
        else:
            report["serve"] = {"skipped": "time budget spent"}
    finally:
        gpu.close()
        report["seconds"] = round(time.monotonic() - started, 1)
    return report


def locked_workload(src, split: int, device: str, index: int, repeats: int, min_s: float, nvml=None) -> dict:
    """The bf16 8 x 128 forward timed under locked clocks: what the lock does to time and energy."""
    from coinfer.server.half import ServerHalf

    half = ServerHalf(src, split, device=device, dtype="bf16")
    x, m = _inputs(src, 8, 128, split)
    x = x.to(device, half.dtype) if x.is_floating_point() else x.to(device)
    m = m.to(device)
    gpu = Nvml(index, nvml)
    try:
        return {"k": split, "dtype": "bf16", "shape": "8x128",
                **timed_loop(lambda: half.state.part(x, m), synchronizer(device), gpu, repeats, min_s)}
    finally:
        gpu.close()


def _interrupt(signum, frame):
    """SIGTERM unwinds like Ctrl-C, so the finally that resets locked clocks runs."""
    raise KeyboardInterrupt


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/gpu_check",
        description="The server half on a CUDA GPU: fp32 and bf16 answers against the CPU's, forward times "
                    "(torch.cuda.synchronize), NVML power and energy per forward, whether the clocks can be "
                    "locked (always reset), and a real `coinfer server --device cuda` answering a `coinfer "
                    "device`. Prints one JSON object; exits 0 with {\"gpu\": false, \"reason\": ...} where "
                    "there is no CUDA GPU.")
    parser.add_argument("--model", default="minilm", help="default: %(default)s (the embedded all-MiniLM-L6-v2)")
    parser.add_argument("--splits", default=",".join(map(str, DEFAULT_SPLITS)),
                        help="split points k, comma-separated (default: %(default)s)")
    parser.add_argument("--device-index", type=int, default=0, help="CUDA / NVML device (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=30, help="timed forwards at least (default: %(default)s)")
    parser.add_argument("--min-seconds", type=float, default=2.0,
                        help="each timed loop lasts at least this long, for the energy counter (default: %(default)s)")
    parser.add_argument("--no-serve", action="store_true", help="skip the server/device process check")
    parser.add_argument("--budget-s", type=float, default=240.0,
                        help="sections that would start after this are skipped (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        splits = tuple(int(k) for k in args.splits.split(",") if k.strip())
    except ValueError:
        parser.error(f"--splits {args.splits!r}: expected integers like 0,3")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model is local; never a hub
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        report = check(args.model, splits, args.device_index, args.repeats, args.min_seconds, not args.no_serve,
                       args.budget_s)
    except KeyboardInterrupt:
        report = {"gpu": None, "reason": "interrupted (clocks reset where they were locked)"}
    except Exception as exc:  # noqa: BLE001 - one JSON object, never a traceback
        report = {"gpu": None, "reason": f"gpu_check failed: {_error(exc)}"}
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
