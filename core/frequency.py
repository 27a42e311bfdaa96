"""The clock-frequency cap a plan sets on the device CPU or the server GPU: real where permitted,
fixed where not (the cap is ignored and reported so, with the reason), emulated only on request.

* cpufreq — writes the cap, in kHz, to `scaling_max_freq` of every CPU (`<sysfs>/devices/system/cpu/
  cpuN/cpufreq/`); reset() writes back what was there.
* nvml — `nvmlDeviceSetGpuLockedClocks(lowest supported, cap)` in MHz; reset() unlocks the clocks.
* fixed — the clock cannot be set here (no cpufreq, no NVML, no permission): a cap is ignored (logged
  once), the compute runs at full speed, cap_hz and effective_freq_hz() stay F and stretch() is 0.
* emulated — only with `emulate=True` (the nodes' --emulate-frequency, for experiments and the paper
  reproduction): the compute runs at whatever clock the machine gives it, and `stretch()` then sleeps
  busy_s * (F/f - 1), so the measured compute time is what it would be at the cap (T = rho W / (C f)).

A real mode that the hardware refuses (no permission, not supported, a write that fails) falls back to
fixed (emulated, with emulate=True) for good, with the reason. `knobs()` says which mode is in force
and the clock range measured, for the planner. Nothing here raises for missing hardware; bad caps
raise ValueError.
"""
from __future__ import annotations

import logging
import math
import os
import re
import threading
import time
from pathlib import Path

from coinfer.sysstats import NvmlUnavailable, close_nvml, open_nvml

log = logging.getLogger("coinfer.plan")  # an ignored cap is part of applying a plan: shown by default

CLOCK_MODES = ("cpufreq", "nvml", "emulated", "fixed")
_CPU_DIR = re.compile(r"^cpu\d+$")
_REL_TOL = 1e-9  # a solver's f = F (1 + 1e-12) is F, not an error


def cpufreq_dirs(sysfs_root: str | Path = "/sys") -> list[Path]:
    """Every CPU's cpufreq folder that has a scaling_max_freq."""
    base = Path(sysfs_root) / "devices" / "system" / "cpu"
    try:
        cpus = sorted((p for p in base.iterdir() if _CPU_DIR.match(p.name)), key=lambda p: int(p.name[3:]))
    except OSError:
        return []
    return [p / "cpufreq" for p in cpus if (p / "cpufreq" / "scaling_max_freq").is_file()]


def cpufreq_probe(sysfs_root: str | Path = "/sys") -> dict:
    """Whether the CPU frequency cap can be set for real (read-only: writes nothing).

    {"available": bool, "reason": str | None, "cpus": n, "max_freq_hz": cpuinfo_max_freq of cpu0 or None}
    """
    dirs = cpufreq_dirs(sysfs_root)
    if not dirs:
        where = Path(sysfs_root) / "devices" / "system" / "cpu" / "cpu*" / "cpufreq" / "scaling_max_freq"
        return {"available": False, "reason": f"{where} absent", "cpus": 0, "max_freq_hz": None}
    try:
        max_hz = int((dirs[0] / "cpuinfo_max_freq").read_text()) * 1e3
    except (OSError, ValueError):
        max_hz = None
    # root passes os.access on sysfs; FrequencyControl checks for real with a no-op write
    unwritable = [str(d) for d in dirs if not os.access(d / "scaling_max_freq", os.W_OK)]
    reason = f"scaling_max_freq not writable in {', '.join(unwritable)}" if unwritable else None
    return {"available": not unwritable, "reason": reason, "cpus": len(dirs), "max_freq_hz": max_hz}


def _read_khz_hz(path: Path) -> float:
    """A cpufreq file (kHz) in Hz; 0.0 when unreadable."""
    try:
        return int(path.read_text()) * 1e3
    except (OSError, ValueError):
        return 0.0


def _khz(freq_hz: float) -> int:
    return max(1, int(freq_hz / 1e3 + 1e-6))  # floor (a cap must not exceed f), immune to 1.5e9 -> 1499999.99


def _mhz(freq_hz: float) -> int:
    return max(1, int(freq_hz / 1e6 + 1e-6))


class FrequencyControl:
    """The frequency cap of one processor: kind "cpu" (cpufreq) or "gpu" (NVML GPU `device_index`).

    max_freq_hz is F, the maximum the plan may ask for; cap_hz starts there. Where the clock cannot be
    set, the mode is "fixed" (caps ignored), or "emulated" (caps stretch compute) with `emulate=True`.
    """

    def __init__(self, kind: str, max_freq_hz: float, device_index: int = 0, sysfs_root: str | Path = "/sys",
                 nvml=None, emulate: bool = False):
        if kind not in ("cpu", "gpu"):
            raise ValueError(f"kind must be 'cpu' or 'gpu', got {kind!r}")
        if not (math.isfinite(max_freq_hz) and max_freq_hz > 0):
            raise ValueError(f"max_freq_hz must be positive and finite, got {max_freq_hz}")
        self.kind = kind
        self._opened_with = (device_index, sysfs_root, nvml)  # what with_max() opens again
        self.emulate = bool(emulate)
        self.max_freq_hz = float(max_freq_hz)
        self.cap_hz = self.max_freq_hz
        self.mode = self._fallback_mode
        self.reason: str | None = None
        self._ignored_logged = False  # fixed mode: the first ignored cap is logged, not every one
        self._measured = (0.0, 0.0)   # (min, max) clock the hardware reports, Hz; 0 = unknown
        self._lock = threading.Lock()
        self._original_khz: dict[Path, str] = {}  # cpufreq: what reset() writes back
        self._nvml = self._handle = None
        self._min_mhz: int | None = None  # nvml: lower end of the locked range
        if kind == "cpu":
            self._open_cpufreq(sysfs_root)
        else:
            self._open_nvml(device_index, nvml)

    @property
    def _fallback_mode(self) -> str:
        return "emulated" if self.emulate else "fixed"

    # --- set-up -----------------------------------------------------------------------------------
    def _open_cpufreq(self, sysfs_root) -> None:
        dirs = cpufreq_dirs(sysfs_root)
        if not dirs:
            self.reason = cpufreq_probe(sysfs_root)["reason"]
            return
        self._measured = (_read_khz_hz(dirs[0] / "cpuinfo_min_freq"), _read_khz_hz(dirs[0] / "cpuinfo_max_freq"))
        try:
            for d in dirs:
                self._original_khz[d / "scaling_max_freq"] = (d / "scaling_max_freq").read_text().strip()
            # the only real test of permission (root passes os.access; a sysfs store can still refuse)
            for path, value in self._original_khz.items():
                path.write_text(value)
        except OSError as exc:
            self._original_khz.clear()
            self.reason = f"cpufreq not writable ({exc})"
            return
        self.mode = "cpufreq"

    def _open_nvml(self, device_index, nvml) -> None:
        try:
            self._nvml, self._handle = open_nvml(device_index, nvml)
        except NvmlUnavailable as exc:
            self.reason = f"NVML unavailable ({exc})"
            return
        clocks = self._graphics_clocks_mhz()
        self._min_mhz = min(clocks) if clocks else None
        if clocks:
            self._measured = (min(clocks) * 1e6, max(clocks) * 1e6)
        self.mode = "nvml"

    def _graphics_clocks_mhz(self) -> list[int]:
        """The graphics clocks the GPU supports (empty if it will not say: the cap is then pinned)."""
        nvml, handle = self._nvml, self._handle
        try:
            return [c for mem in nvml.nvmlDeviceGetSupportedMemoryClocks(handle)
                    for c in nvml.nvmlDeviceGetSupportedGraphicsClocks(handle, mem)]
        except nvml.NVMLError:
            return []

    # --- the cap ----------------------------------------------------------------------------------
    def with_max(self, max_freq_hz: float | None) -> "FrequencyControl":
        """This control, or, when a plan names another maximum F, a new one for the same processor
        (the hardware's own setting given back first, so the new control reads it)."""
        if not max_freq_hz or max_freq_hz == self.max_freq_hz:
            return self
        self.reset()
        self.close()
        device_index, sysfs_root, nvml = self._opened_with
        fresh = FrequencyControl(self.kind, max_freq_hz, device_index, sysfs_root, nvml, emulate=self.emulate)
        fresh._ignored_logged = self._ignored_logged
        return fresh

    def cap_for(self, freq_hz: float | None) -> float:
        """The cap a plan's f_j means here: f_j, at most F; none given, F. (A fixed clock then ignores it
        in set_cap: cap_hz says what is in force.)"""
        return min(freq_hz or self.max_freq_hz, self.max_freq_hz)

    def set_cap(self, freq_hz: float) -> None:
        if not (freq_hz > 0 and freq_hz <= self.max_freq_hz * (1 + _REL_TOL)):  # also rejects NaN
            raise ValueError(f"freq_hz must be in (0, {self.max_freq_hz:g}] (max_freq_hz), got {freq_hz}")
        freq_hz = min(float(freq_hz), self.max_freq_hz)
        with self._lock:
            if self.mode == "cpufreq":
                self.cap_hz = self._write_cpufreq(freq_hz)
            elif self.mode == "nvml":
                self.cap_hz = self._lock_gpu_clocks(freq_hz)
            if self.mode == "emulated":
                self.cap_hz = freq_hz
            elif self.mode == "fixed":
                self.cap_hz = self.max_freq_hz
                self._log_ignored(freq_hz)

    def _log_ignored(self, freq_hz: float) -> None:
        if freq_hz >= self.max_freq_hz * (1 - _REL_TOL) or self._ignored_logged:
            return
        self._ignored_logged = True
        log.info("clock cap %.0f MHz ignored: %s clock not settable here (%s); run at full speed",
                 freq_hz / 1e6, self.kind, self.reason or "no cpufreq/NVML")

    def _write_cpufreq(self, freq_hz: float) -> float:
        written = []
        try:
            for path in self._original_khz:
                path.write_text(str(_khz(freq_hz)))
                written.append(path)
        except OSError as exc:
            for path in written:  # never leave some CPUs capped and others not
                try:
                    path.write_text(self._original_khz[path])
                except OSError:
                    pass
            self._fall_back(f"writing {path} failed ({exc})")
            return freq_hz
        try:
            # the kernel clamps to the hardware's range: report the cap actually in force
            return int(next(iter(self._original_khz)).read_text()) * 1e3
        except (OSError, ValueError):
            return freq_hz

    def _lock_gpu_clocks(self, freq_hz: float) -> float:
        nvml, top = self._nvml, _mhz(freq_hz)
        bottom = top if self._min_mhz is None else min(self._min_mhz, top)
        try:
            nvml.nvmlDeviceSetGpuLockedClocks(self._handle, bottom, top)
        except nvml.NVMLError as exc:  # NoPermission / NotSupported are the expected ones
            self._fall_back(f"nvmlDeviceSetGpuLockedClocks({bottom}, {top}) failed: {type(exc).__name__}: {exc}")
            return freq_hz
        return top * 1e6

    def _fall_back(self, reason: str) -> None:
        """The hardware refused: fixed (emulated with emulate=True) from now on."""
        self.mode, self.reason = self._fallback_mode, reason
        self._original_khz.clear()
        self.close()  # nothing real left to reset

    def stretch(self, busy_s: float) -> float:
        """Emulated mode: sleep so that busy_s of compute takes busy_s * F / f; returns the extra seconds
        asked for (the sleep lasts at least that). Real modes: the hardware already ran at the cap; fixed:
        it ran at full speed; 0.0 (no sleep) for both."""
        if not busy_s >= 0:
            raise ValueError(f"busy_s must be non-negative, got {busy_s}")
        if self.mode != "emulated":
            return 0.0
        extra = busy_s * (self.max_freq_hz / self.cap_hz - 1.0)
        if extra <= 0:
            return 0.0
        deadline = time.perf_counter() + extra
        while (left := deadline - time.perf_counter()) > 0:  # never short, whatever wakes the sleep
            time.sleep(left)
        return extra

    def effective_freq_hz(self) -> float:
        """The frequency the compute ran at, for the estimators: the cap in force (F when fixed)."""
        return self.cap_hz

    def knobs(self):
        """The clock part of this node's planner_pb2.Knobs: the mode (cpufreq | nvml | emulated | fixed),
        why it is not a real one, and the clock range the hardware reports (0 where unknown)."""
        from coinfer.protos import planner_pb2 as ppb

        low, high = self._measured
        return ppb.Knobs(clock=self.mode, clock_reason=self.reason or "", min_freq_hz=low, max_freq_hz=high)

    def describe(self, cap_hz: float | None = None) -> str:
        """A few words for logs: "cpufreq 1200 MHz" (the cap in force, or `cap_hz`, one about to be),
        "fixed (cpu not settable: scaling_max_freq absent)"."""
        if self.mode == "fixed":
            return f"fixed ({self.kind} not settable: {self.reason or 'no cpufreq/NVML'})"
        return f"{self.mode} {(cap_hz or self.cap_hz) / 1e6:.0f} MHz"

    def reset(self) -> None:
        """Back to F: real modes restore what the hardware had before (cpufreq values, unlocked clocks)."""
        with self._lock:
            if self.mode == "cpufreq":
                for path, value in self._original_khz.items():
                    try:
                        path.write_text(value)
                    except OSError as exc:
                        self.reason = f"restoring {path} failed ({exc})"
            elif self.mode == "nvml":
                try:
                    self._nvml.nvmlDeviceResetGpuLockedClocks(self._handle)
                except self._nvml.NVMLError as exc:
                    self.reason = f"nvmlDeviceResetGpuLockedClocks failed: {exc}"
            self.cap_hz = self.max_freq_hz

    def close(self) -> None:
        """Release NVML (the cap stays as it is: call reset() first to restore the hardware)."""
        if self._handle is not None:
            self._handle = None
            close_nvml(self._nvml)
