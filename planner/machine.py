"""The planner's starting beliefs when no system file says otherwise: this machine, measured.

`coinfer planner` used to start from the paper's hypothetical hardware (a 2 GHz device doing 16 FLOPs a
cycle, a 0.4 J budget), and its first plans slowed a real deployment down to save energy that machine
did not have. Now the starting system is measured where it can be and labelled where it cannot:

* both processors: F from cpufreq's cpuinfo_max_freq or /proc/cpuinfo, C (FLOPs per cycle) from a
  short matrix-multiply run here (the nodes usually start on this machine or one like it; telemetry
  replaces C with what each node measures within `warmup` samples, F with what a node with a real
  clock control reports);
* power: modelled, not measured (kappa for MODELLED_POWER_W at F, P = kappa f^3); RAPL / NVML energy in
  the nodes' telemetry replaces it;
* channel: a wired or loopback link (LINK_BANDWIDTH_HZ at LINK_SPECTRAL_EFFICIENCY bit/s/Hz) until the
  device's measured upload rate gives the gain;
* QoS: DEFAULT_QOS, a delay limit any interactive use tolerates and an energy limit that only binds when
  an operator sets one (--max-energy-j).

A system file (--system) overrides any value it names (`merged`).
"""
from __future__ import annotations

import copy
import os
import re
import time
from pathlib import Path

from coinfer.radio import dbm_per_hz_to_w_per_hz
from coinfer.system import DEFAULT_SYSTEM

MODELLED_POWER_W = 15.0            # a laptop/edge-server CPU package under load (modelled, not measured)
LINK_BANDWIDTH_HZ = 1e9
LINK_SPECTRAL_EFFICIENCY = 4.0     # 4 Gbit/s at full power: loopback and LAN are faster than any radio
NOISE_DBM_PER_HZ = -174.0
DEFAULT_QOS = {"max_delay_s": 0.6, "max_energy_j": 10.0}
FALLBACK_FREQ_HZ = 2.0e9


def cpu_max_freq_hz(sysfs_root: str | Path = "/sys", cpuinfo: str | Path = "/proc/cpuinfo") -> float:
    """The CPU's maximum clock: cpufreq's cpuinfo_max_freq, else the highest 'cpu MHz', else 2 GHz."""
    try:
        return int((Path(sysfs_root) / "devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text()) * 1e3
    except (OSError, ValueError):
        pass
    try:
        mhz = [float(m) for m in re.findall(r"^cpu MHz\s*:\s*([\d.]+)", Path(cpuinfo).read_text(), re.M)]
        if mhz and max(mhz) > 0:
            return max(mhz) * 1e6
    except OSError:
        pass
    return FALLBACK_FREQ_HZ


def measured_flops_per_second(n: int = 384, seconds: float = 0.2) -> float:
    """Sustained fp32 matmul FLOP/s with torch's threads, the best of repeated runs for `seconds`."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)  # warm-up: thread pool, allocator
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        for _ in range(4):
            torch.mm(a, b)
        dt = time.perf_counter() - t0
        best = max(best, 4 * 2 * n ** 3 / dt)
    return best


def machine_system(flops_per_second: float | None = None, max_freq_hz: float | None = None) -> dict:
    """The starting system as a plain dict (the layout of a system file): this machine for both sides."""
    f = max_freq_hz or cpu_max_freq_hz()
    flops = flops_per_second or measured_flops_per_second()
    processor = {"max_freq_hz": f, "flops_per_cycle": max(flops / f, 1e-3), "pue": 1.0,
                 "power_coeff": MODELLED_POWER_W / f ** 3}
    d = copy.deepcopy(DEFAULT_SYSTEM)
    n0 = dbm_per_hz_to_w_per_hz(NOISE_DBM_PER_HZ)
    p_max = d["device"]["max_tx_power_w"]
    snr = 2.0 ** LINK_SPECTRAL_EFFICIENCY - 1.0
    d["device"] = dict(processor, max_tx_power_w=p_max)
    d["server"] = dict(processor)
    d["channel"] = {"bandwidth_hz": LINK_BANDWIDTH_HZ, "noise_psd_w_per_hz": n0,
                    "gain": snr * n0 * LINK_BANDWIDTH_HZ / p_max}
    d["qos"] = dict(DEFAULT_QOS)
    return d


def merged(base: dict, override: dict | None) -> dict:
    """base with every value `override` names replaced (nested mappings merged key by key)."""
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def describe(system) -> str:
    """One line for the planner's start-up log: what it assumes (a System) until telemetry says otherwise."""
    dev, ch, qos = system.device, system.channel, system.qos
    return (f"starting system: F = {dev.max_freq_hz / 1e9:.2f} GHz, C = {dev.flops_per_cycle:.1f} FLOPs/cycle "
            f"(this machine, {os.cpu_count()} CPUs, unless --system says otherwise), power coefficient "
            f"{dev.power_coeff:.3g} (modelled until RAPL/NVML energy arrives), channel gain {ch.gain:.3g} over "
            f"{ch.bandwidth_hz:.3g} Hz until the rate is measured, QoS {qos.max_delay_s:g} s / {qos.max_energy_j:g} J")
