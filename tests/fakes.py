"""Stand-ins for hardware these machines do not have (no RAPL, no cpufreq, no NVML library), so the real
code paths that read and write it can be tested. Production code takes the sysfs root and the NVML
module as parameters; tests pass these instead. Nothing in coinfer is patched."""
from __future__ import annotations

from pathlib import Path


class FakeSysfs:
    """Stands in for absent hardware: a /sys tree in a tmp folder with RAPL package zones
    (class/powercap/intel-rapl:N/{name,energy_uj,max_energy_range_uj}, plus a core sub-zone and a psys
    zone that must not be counted) and per-CPU cpufreq folders (devices/system/cpu/cpuN/cpufreq/
    {scaling_max_freq,cpuinfo_max_freq,...} in kHz, as the kernel has them)."""

    def __init__(self, root: Path, cpus: int = 2, packages: int = 1, max_khz: int = 3_000_000,
                 wrap_uj: int = 262_143_328_850, rapl: bool = True, cpufreq: bool = True):
        self.root, self.wrap_uj = Path(root), wrap_uj
        if rapl:
            for n in range(packages):
                self._zone(f"intel-rapl:{n}", f"package-{n}", 1_000_000)
                self._zone(f"intel-rapl:{n}:0", "core", 500_000)  # sub-zone: inside the package figure
            self._zone(f"intel-rapl:{packages}", "psys", 9_000_000)  # platform: would double-count
        if cpufreq:
            cpu_base = self.root / "devices/system/cpu"
            for n in range(cpus):
                d = cpu_base / f"cpu{n}" / "cpufreq"
                d.mkdir(parents=True)
                for name, value in (("scaling_max_freq", max_khz), ("cpuinfo_max_freq", max_khz),
                                    ("scaling_min_freq", 800_000), ("cpuinfo_min_freq", 800_000)):
                    (d / name).write_text(f"{value}\n")
            (cpu_base / "cpufreq").mkdir()  # the policy folder and cpuidle are not CPUs
            (cpu_base / "cpuidle").mkdir()

    def _zone(self, name: str, label: str, energy_uj: int) -> None:
        d = self.root / "class/powercap" / name
        d.mkdir(parents=True)
        (d / "name").write_text(label + "\n")
        (d / "energy_uj").write_text(f"{energy_uj}\n")
        (d / "max_energy_range_uj").write_text(f"{self.wrap_uj}\n")

    def set_energy_uj(self, value: int, zone: str = "intel-rapl:0") -> None:
        (self.root / "class/powercap" / zone / "energy_uj").write_text(f"{value}\n")

    def scaling_max_khz(self) -> list[int]:
        return [int(p.read_text()) for p in sorted(self.root.glob("devices/system/cpu/cpu*/cpufreq/scaling_max_freq"))]

    def break_cpu(self, n: int) -> None:
        """Make one CPU's scaling_max_freq refuse writes (a folder where the file was)."""
        path = self.root / f"devices/system/cpu/cpu{n}/cpufreq/scaling_max_freq"
        path.unlink()
        path.mkdir()


class FakeNvml:
    """Stands in for absent hardware: the parts of the pynvml module coinfer calls, for one GPU, with
    counters the test sets. `total_energy=False` makes the total-energy query NotSupported (pre-Volta);
    `lock_error` is the NVMLError subclass nvmlDeviceSetGpuLockedClocks raises (None: permitted);
    `init_error` makes nvmlInit fail like a machine without the library."""

    class NVMLError(Exception):
        def __init__(self, value: int = 999, msg: str = "Unknown Error"):
            super().__init__(msg)
            self.value = value

    class NVMLError_NotSupported(NVMLError):
        def __init__(self):
            super().__init__(3, "Not Supported")

    class NVMLError_NoPermission(NVMLError):
        def __init__(self):
            super().__init__(4, "Insufficient Permissions")

    class NVMLError_LibraryNotFound(NVMLError):
        def __init__(self):
            super().__init__(12, "NVML Shared Library Not Found")

    class NVMLError_InvalidArgument(NVMLError):
        def __init__(self):
            super().__init__(2, "Invalid Argument")

    def __init__(self, total_energy: bool = True, power: bool = True, lock_error=None, init_error=None,
                 gpus: int = 1):
        self.energy_mj, self.power_mw = 5_000_000, 70_000
        self.total_energy, self.power, self.lock_error, self.init_error, self.gpus = (
            total_energy, power, lock_error, init_error, gpus)
        self.inits = 0           # nvmlInit calls not yet matched by nvmlShutdown
        self.locked: tuple[int, int] | None = None
        self.calls: list[str] = []

    def nvmlInit(self):
        if self.init_error is not None:
            raise self.init_error()
        self.inits += 1

    def nvmlShutdown(self):
        self.inits -= 1

    def nvmlDeviceGetCount(self):
        return self.gpus

    def nvmlDeviceGetHandleByIndex(self, index):
        if not 0 <= index < self.gpus:
            raise self.NVMLError_InvalidArgument()
        return ("gpu", index)

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        if not self.total_energy:
            raise self.NVMLError_NotSupported()
        return self.energy_mj

    def nvmlDeviceGetPowerUsage(self, handle):
        if not self.power:
            raise self.NVMLError_NotSupported()
        return self.power_mw

    def nvmlDeviceGetSupportedMemoryClocks(self, handle):
        return [5001, 810]

    def nvmlDeviceGetSupportedGraphicsClocks(self, handle, memory_clock_mhz):
        return [1590, 1200, 900, 300] if memory_clock_mhz == 5001 else [810, 405]

    def nvmlDeviceSetGpuLockedClocks(self, handle, min_mhz, max_mhz):
        self.calls.append(f"lock {min_mhz} {max_mhz}")
        if self.lock_error is not None:
            raise self.lock_error()
        self.locked = (min_mhz, max_mhz)

    def nvmlDeviceResetGpuLockedClocks(self, handle):
        self.calls.append("reset")
        self.locked = None
