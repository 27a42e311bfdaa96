"""What the operating system and the GPU driver report about this machine, read without ever raising.

`sample()` is the per-request snapshot the device and server attach to their telemetry (psutil: CPU
frequency, utilisation, process memory). `open_nvml()` is the one guarded way into NVML, shared by the
energy meters and the frequency control: it either returns a device handle or says why there is none.
"""
from __future__ import annotations

import os
import threading
from types import ModuleType

import psutil

# psutil.cpu_percent(interval=None) reports utilisation since its previous call; priming it here
# makes the first sample() mean "since import" rather than a meaningless 0.0.
psutil.cpu_percent(interval=None)

_procs: dict[int, psutil.Process] = {}  # one Process per pid, so per-process CPU % has a previous call
_procs_lock = threading.Lock()


def _process(pid: int) -> tuple[psutil.Process, bool]:
    """The cached Process for pid, and whether it was just created (its CPU % not yet meaningful)."""
    with _procs_lock:
        proc = _procs.get(pid)
        if proc is not None and proc.is_running():
            return proc, False
        proc = _procs[pid] = psutil.Process(pid)
        proc.cpu_percent(interval=None)  # prime: the first real figure comes at the next sample
        return proc, True


def sample(pid: int | None = None) -> dict:
    """A snapshot for telemetry; every field is None when psutil cannot tell (never raises).

    cpu_freq_hz   current CPU clock as the OS reports it (None where psutil has no figure)
    cpu_util_pct  machine-wide CPU utilisation since the previous call (all processes: the machine is shared)
    proc_cpu_pct  CPU % of `pid` since the previous sample of it (None on the first); can exceed 100 on >1 core
    rss_bytes     resident memory of `pid` (this process by default)
    cpu_count     logical CPUs
    """
    out: dict = {"cpu_freq_hz": None, "cpu_util_pct": None, "proc_cpu_pct": None, "rss_bytes": None,
                 "cpu_count": None}
    try:
        freq = psutil.cpu_freq()
        # psutil reports MHz; 0.0 means "unknown" on some platforms
        out["cpu_freq_hz"] = freq.current * 1e6 if freq is not None and freq.current > 0 else None
    except Exception:  # noqa: BLE001 — a probe of the OS, reported absent rather than raised
        pass
    try:
        out["cpu_util_pct"] = float(psutil.cpu_percent(interval=None))
    except Exception:  # noqa: BLE001
        pass
    try:
        out["cpu_count"] = psutil.cpu_count(logical=True)
    except Exception:  # noqa: BLE001
        pass
    try:
        proc, fresh = _process(os.getpid() if pid is None else pid)
        out["rss_bytes"] = int(proc.memory_info().rss)
        if not fresh:
            out["proc_cpu_pct"] = float(proc.cpu_percent(interval=None))
    except Exception:  # noqa: BLE001 — e.g. the pid is gone
        with _procs_lock:
            _procs.pop(pid if pid is not None else os.getpid(), None)
    return out


class NvmlUnavailable(Exception):
    """NVML cannot be used here; str() is the reason, for reports."""


def load_nvml(nvml: ModuleType | object | None = None):
    """The NVML binding to use: the one passed in (tests pass a fake), else pynvml."""
    if nvml is not None:
        return nvml
    try:
        import pynvml
    except ImportError as exc:  # nvidia-ml-py is a dependency; guard anyway
        raise NvmlUnavailable(f"pynvml not importable: {exc}") from exc
    return pynvml


def open_nvml(device_index: int = 0, nvml=None):
    """nvmlInit and the handle of GPU `device_index`: returns (nvml, handle).

    Raises NvmlUnavailable (with the reason) when there is no library, no driver or no such GPU; on
    success the caller owns one nvmlInit and must call close_nvml(nvml) when done (NVML counts inits).
    """
    nvml = load_nvml(nvml)
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:
        raise NvmlUnavailable(f"nvmlInit failed: {exc}") from exc
    try:
        return nvml, nvml.nvmlDeviceGetHandleByIndex(device_index)
    except nvml.NVMLError as exc:
        close_nvml(nvml)
        raise NvmlUnavailable(f"no GPU {device_index}: {exc}") from exc


def close_nvml(nvml) -> None:
    try:
        nvml.nvmlShutdown()
    except nvml.NVMLError:
        pass
