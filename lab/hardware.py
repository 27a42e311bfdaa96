"""What machine this is, recorded with every benchmark result so results from different hardware
can be compared. Every probe is guarded: a missing GPU, NVML library or RAPL counter is reported as
absent (with the reason), never raised."""
from __future__ import annotations

import os
import platform
from pathlib import Path

def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def rapl_status() -> dict:
    """Whether a RAPL package energy counter is readable (CPU energy measured, not modelled)."""
    from coinfer.energy import rapl_probe

    return rapl_probe()


def cpufreq_status() -> dict:
    """Whether the CPU frequency cap can be set for real (otherwise coinfer emulates it)."""
    from coinfer.frequency import cpufreq_probe

    return cpufreq_probe()


def nvml_status() -> dict:
    """NVML (pynvml) and the GPUs it sees: name, driver, power limit."""
    try:
        import pynvml
    except ImportError as exc:  # nvidia-ml-py is a dependency; guard anyway
        return {"available": False, "reason": f"pynvml not importable: {exc}"}
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return {"available": False, "reason": f"nvmlInit failed: {exc}"}
    try:
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(handle)
            gpus.append({"index": i, "name": name.decode() if isinstance(name, bytes) else name})
        driver = pynvml.nvmlSystemGetDriverVersion()
        return {"available": True, "driver": driver.decode() if isinstance(driver, bytes) else driver, "gpus": gpus}
    except pynvml.NVMLError as exc:
        return {"available": False, "reason": f"NVML query failed: {exc}"}
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass


def describe() -> dict:
    """The machine, as one JSON-ready dict."""
    import psutil
    import torch

    cuda = torch.cuda.is_available()
    return {
        "hostname": platform.node(),
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": {"available": cuda, "device": torch.cuda.get_device_name(0) if cuda else None,
                 "reason": None if cuda else "torch.cuda.is_available() is False"},
        "nvml": nvml_status(),
        "rapl": rapl_status(),
        "cpufreq": cpufreq_status(),
    }
