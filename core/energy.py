"""Energy of one piece of compute: measured where the hardware has a meter, modelled where it has not.

Every reading says where it came from (`rapl`, `nvml` or `model`), so the planner never mistakes the
energy model fed with measured times for a measurement. The meters, best first:

* CPU — RAPL package energy (`<sysfs>/class/powercap/intel-rapl:N/energy_uj`, microjoules, wraps at
  `max_energy_range_uj`). It counts the whole package: every process on it, idle power included.
* GPU — NVML total energy since driver load (`nvmlDeviceGetTotalEnergyConsumption`, millijoules,
  Volta and later); else NVML power (`nvmlDeviceGetPowerUsage`, milliwatts) times the wall time.
* Otherwise the paper's model, E = eta kappa (rho W / C) f^2, evaluated as eta kappa f^3 t because
  rho W / C = f t for compute that took t seconds at f.

`make_meter` picks the best available and never raises for missing hardware; the meter's `.reason`
says why it is not a better one. A reading that fails at run time falls back to the model and is
labelled `model`.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

from coinfer.sysstats import NvmlUnavailable, close_nvml, open_nvml

SOURCES = ("rapl", "nvml", "model")


@dataclass(frozen=True)
class PowerModel:
    """The paper's dynamic power: P = eta kappa f^3 while busy (E_j = eta kappa (rho W / C) f^2)."""

    pue: float          # eta, power usage effectiveness (>= 1 in practice)
    power_coeff: float  # kappa, chip power coefficient (W / Hz^3; ~1e-28 for a CPU core)

    def __post_init__(self):
        if not self.pue > 0:
            raise ValueError(f"pue must be positive, got {self.pue}")
        if not self.power_coeff >= 0:
            raise ValueError(f"power_coeff must be non-negative, got {self.power_coeff}")

    def energy_j(self, busy_s: float, freq_hz: float) -> float:
        if not busy_s >= 0:
            raise ValueError(f"busy_s must be non-negative, got {busy_s}")
        if not freq_hz >= 0:
            raise ValueError(f"freq_hz must be non-negative, got {freq_hz}")
        return self.pue * self.power_coeff * freq_hz ** 3 * busy_s


@dataclass(frozen=True)
class EnergyReading:
    joules: float
    source: str    # "rapl" | "nvml" | "model"
    seconds: float  # wall time between begin() and end()


@dataclass(frozen=True)
class _Token:
    t0: float
    counter: object  # the meter's snapshot; None when the snapshot failed (the reading is then modelled)


class EnergyMeter:
    """begin() before the compute, end(token, ...) after it. Stateless between the two, so requests
    running concurrently each hold their own token (each then sees the whole package's energy)."""

    source: str = "model"
    reason: str | None = None

    def __init__(self, model: PowerModel, reason: str | None = None):
        self.model = model
        self.reason = reason

    def begin(self) -> object:
        return _Token(time.perf_counter(), self._snapshot())

    def end(self, token, busy_s: float, freq_hz: float) -> EnergyReading:
        seconds = time.perf_counter() - token.t0
        joules = None
        if token.counter is not None:
            joules = self._joules_since(token.counter, seconds)
        if joules is None:
            return EnergyReading(self.model.energy_j(busy_s, freq_hz), "model", seconds)
        return EnergyReading(joules, self.source, seconds)

    def close(self) -> None:
        """Release the meter's hold on the driver (NVML); the meter must not be used afterwards."""

    # subclasses: a counter snapshot (None on failure), and joules since one (None on failure)
    def _snapshot(self) -> object:
        return None

    def _joules_since(self, counter, seconds: float) -> float | None:
        return None


class ModelMeter(EnergyMeter):
    """No meter: the energy model with the measured busy time and the frequency it ran at."""

    source = "model"


# --- RAPL -------------------------------------------------------------------------------------------

_PACKAGE_ZONE = re.compile(r"^intel-rapl:\d+$")  # packages; intel-rapl:N:M are sub-zones of package N


def rapl_probe(sysfs_root: str | Path = "/sys") -> dict:
    """The RAPL package zones whose energy counter and wrap range are readable.

    {"available": True, "zones": [dir, ...], "zone": first dir} or {"available": False, "reason": ...}.
    Only zones named package-* count (a psys/platform zone would count the package twice). AMD CPUs
    appear under the same intel-rapl driver.
    """
    root = Path(sysfs_root) / "class" / "powercap"
    if not root.is_dir():
        return {"available": False, "reason": f"no {root}"}
    zones, problems = [], []
    for zone in sorted(p for p in root.iterdir() if _PACKAGE_ZONE.match(p.name)):
        try:
            name = (zone / "name").read_text().strip()
        except OSError:
            name = "package"  # no name file: take the top-level zone as a package
        if not name.startswith("package"):
            continue
        try:
            int((zone / "energy_uj").read_text())
            int((zone / "max_energy_range_uj").read_text())
        except (OSError, ValueError) as exc:
            problems.append(f"{zone.name}: {exc}")
            continue
        zones.append(str(zone))
    if zones:
        return {"available": True, "zones": zones, "zone": zones[0]}
    why = "; ".join(problems) if problems else "no intel-rapl package zone"
    return {"available": False, "reason": f"no readable RAPL package energy_uj in {root} ({why})"}


class RaplMeter(EnergyMeter):
    """Sum of the package counters. A negative delta is one wrap of the counter; reads must come more
    often than a wrap (max_energy_range_uj is ~262 kJ: over 40 minutes at 100 W)."""

    source = "rapl"

    def __init__(self, zones: list[str | Path], model: PowerModel):
        super().__init__(model)
        self._zones = [(Path(z) / "energy_uj", int((Path(z) / "max_energy_range_uj").read_text())) for z in zones]

    def _snapshot(self):
        try:
            return [int(path.read_text()) for path, _ in self._zones]
        except (OSError, ValueError):
            return None

    def _joules_since(self, counter, seconds):
        now = self._snapshot()
        if now is None:
            return None
        total_uj = 0
        for before, after, (_, wrap_uj) in zip(counter, now, self._zones):
            delta = after - before
            total_uj += delta + wrap_uj if delta < 0 else delta
        return total_uj * 1e-6


# --- NVML -------------------------------------------------------------------------------------------

class NvmlMeter(EnergyMeter):
    """GPU energy from NVML: the total-energy counter (mJ) where the GPU has one, else power (mW) at
    begin and end, averaged, times the wall time (a coarse figure: the board averages power over up to
    a second, and a short request may sit between two updates of either counter)."""

    source = "nvml"

    def __init__(self, nvml, handle, model: PowerModel, use_total_energy: bool, reason: str | None = None):
        super().__init__(model, reason)
        self._nvml, self._handle, self._total = nvml, handle, use_total_energy
        self.mode = "total_energy" if use_total_energy else "power_x_time"

    def _snapshot(self):
        try:
            if self._total:
                return int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))
            return float(self._nvml.nvmlDeviceGetPowerUsage(self._handle))
        except self._nvml.NVMLError:
            return None

    def _joules_since(self, counter, seconds):
        now = self._snapshot()
        if now is None:
            return None
        if self._total:
            # mJ -> J; a counter that went backwards (driver reloaded) measured nothing usable
            return (now - counter) * 1e-3 if now >= counter else None
        return 0.5 * (counter + now) * 1e-3 * seconds  # mean of two mW samples -> W, times s

    def close(self) -> None:
        if self._handle is not None:
            self._handle = None
            close_nvml(self._nvml)


def _nvml_meter(model: PowerModel, device_index: int, nvml) -> EnergyMeter:
    try:
        nvml, handle = open_nvml(device_index, nvml)
    except NvmlUnavailable as exc:
        return ModelMeter(model, f"NVML unavailable ({exc}); GPU energy from the model")
    try:
        nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        return NvmlMeter(nvml, handle, model, use_total_energy=True)
    except nvml.NVMLError as exc:
        no_total = f"nvmlDeviceGetTotalEnergyConsumption: {exc}"
    try:
        nvml.nvmlDeviceGetPowerUsage(handle)
        return NvmlMeter(nvml, handle, model, use_total_energy=False,
                         reason=f"{no_total}; energy is NVML power x time")
    except nvml.NVMLError as exc:
        close_nvml(nvml)
        return ModelMeter(model, f"{no_total}; nvmlDeviceGetPowerUsage: {exc}; GPU energy from the model")


def make_meter(kind: str, model: PowerModel, device_index: int = 0, sysfs_root: str | Path = "/sys",
               nvml=None) -> EnergyMeter:
    """The best energy meter for `kind` ("cpu": RAPL, all packages; "gpu": NVML GPU `device_index`),
    else the model. Never raises for missing hardware; `.source` and `.reason` say what was chosen."""
    if kind == "cpu":
        probe = rapl_probe(sysfs_root)
        if probe["available"]:
            try:
                return RaplMeter(probe["zones"], model)
            except (OSError, ValueError) as exc:  # changed between the probe and now
                return ModelMeter(model, f"RAPL unreadable ({exc}); CPU energy from the model")
        return ModelMeter(model, f"RAPL unavailable ({probe['reason']}); CPU energy from the model")
    if kind == "gpu":
        return _nvml_meter(model, device_index, nvml)
    raise ValueError(f"kind must be 'cpu' or 'gpu', got {kind!r}")
