"""Frequency caps: cpufreq and NVML against stand-ins for the absent hardware (tests/fakes.py), the
fixed clock on this machine (real probe; caps ignored), the emulated cap when asked for, the knobs a
node reports, and psutil's snapshot for telemetry."""
import logging
import os
import time

import pytest

from coinfer import sysstats
from coinfer.frequency import FrequencyControl, cpufreq_probe
from coinfer.sysstats import NvmlUnavailable, close_nvml, open_nvml
from fakes import FakeNvml, FakeSysfs


# --- cpufreq ---------------------------------------------------------------------------------------

def test_cpufreq_cap_is_written_in_khz_to_every_cpu_and_reset_restores(tmp_path):
    fake = FakeSysfs(tmp_path, cpus=3, max_khz=3_000_000)
    (tmp_path / "devices/system/cpu/cpu2/cpufreq/scaling_max_freq").write_text("2900000\n")  # differs
    ctl = FrequencyControl("cpu", 3.0e9, sysfs_root=tmp_path)
    assert ctl.mode == "cpufreq" and ctl.reason is None and ctl.cap_hz == 3.0e9
    ctl.set_cap(1.5e9)
    assert fake.scaling_max_khz() == [1_500_000] * 3
    assert ctl.cap_hz == ctl.effective_freq_hz() == 1.5e9
    assert ctl.stretch(0.5) == 0.0  # the hardware ran at the cap: nothing to add
    ctl.reset()
    assert fake.scaling_max_khz() == [3_000_000, 3_000_000, 2_900_000]  # what each had, not F
    assert ctl.cap_hz == 3.0e9


@pytest.mark.parametrize("emulate, mode, cap", [(False, "fixed", 3.0e9), (True, "emulated", 1.0e9)])
def test_cpufreq_write_failure_falls_back_and_leaves_no_cpu_capped(tmp_path, emulate, mode, cap):
    fake = FakeSysfs(tmp_path, cpus=2)
    ctl = FrequencyControl("cpu", 3.0e9, sysfs_root=tmp_path, emulate=emulate)
    fake.break_cpu(1)
    ctl.set_cap(1.0e9)
    assert ctl.mode == mode and "cpu1" in ctl.reason
    assert ctl.cap_hz == ctl.effective_freq_hz() == cap  # fixed: what is in force is F
    assert int((tmp_path / "devices/system/cpu/cpu0/cpufreq/scaling_max_freq").read_text()) == 3_000_000


def test_cpufreq_knobs_report_the_measured_range(tmp_path):
    FakeSysfs(tmp_path, cpus=2, max_khz=2_400_000)  # cpuinfo_min_freq 800 MHz
    knobs = FrequencyControl("cpu", 2.4e9, sysfs_root=tmp_path).knobs()
    assert (knobs.clock, knobs.clock_reason) == ("cpufreq", "")
    assert (knobs.min_freq_hz, knobs.max_freq_hz) == (0.8e9, 2.4e9)


def test_cpufreq_probe_reports_the_hardware_maximum(tmp_path):
    FakeSysfs(tmp_path, cpus=2, max_khz=2_400_000)
    probe = cpufreq_probe(tmp_path)
    assert probe["available"] and probe["cpus"] == 2 and probe["max_freq_hz"] == 2.4e9


# --- NVML ------------------------------------------------------------------------------------------

def test_nvml_locks_clocks_from_the_lowest_supported_up_to_the_cap_and_reset_unlocks():
    nvml = FakeNvml()
    ctl = FrequencyControl("gpu", 1.59e9, nvml=nvml)
    assert ctl.mode == "nvml" and ctl.reason is None
    ctl.set_cap(1.2e9)
    assert nvml.locked == (300, 1200)  # lowest supported graphics clock .. the cap, in MHz
    assert ctl.effective_freq_hz() == 1.2e9 and ctl.stretch(0.5) == 0.0
    ctl.reset()
    assert nvml.locked is None and nvml.calls[-1] == "reset" and ctl.cap_hz == 1.59e9
    ctl.close()
    assert nvml.inits == 0


def test_nvml_knobs_report_the_supported_graphics_clocks():
    knobs = FrequencyControl("gpu", 1.59e9, nvml=FakeNvml()).knobs()
    assert knobs.clock == "nvml" and knobs.min_freq_hz == 300e6 and knobs.max_freq_hz > knobs.min_freq_hz


@pytest.mark.parametrize("error", [FakeNvml.NVMLError_NoPermission, FakeNvml.NVMLError_NotSupported])
def test_nvml_refusal_falls_back_to_fixed_with_the_reason(error):
    nvml = FakeNvml(lock_error=error)
    ctl = FrequencyControl("gpu", 1.5e9, nvml=nvml)
    ctl.set_cap(0.75e9)
    assert ctl.mode == "fixed" and error.__name__ in ctl.reason
    assert ctl.cap_hz == ctl.effective_freq_hz() == 1.5e9 and ctl.stretch(0.5) == 0.0
    assert nvml.inits == 0  # NVML released: nothing real is left to reset
    ctl.set_cap(1.0e9)      # later caps are ignored, no second attempt
    assert nvml.calls == ["lock 300 750"]
    knobs = ctl.knobs()
    assert knobs.clock == "fixed" and error.__name__ in knobs.clock_reason
    assert knobs.min_freq_hz == 300e6  # measured when NVML was open


@pytest.mark.parametrize("error", [FakeNvml.NVMLError_NoPermission, FakeNvml.NVMLError_NotSupported])
def test_nvml_refusal_falls_back_to_emulated_when_asked_to(error):
    nvml = FakeNvml(lock_error=error)
    ctl = FrequencyControl("gpu", 1.5e9, nvml=nvml, emulate=True)
    ctl.set_cap(0.75e9)
    assert ctl.mode == "emulated" and error.__name__ in ctl.reason
    assert ctl.cap_hz == 0.75e9
    ctl.set_cap(1.0e9)      # later caps go straight to emulation, no second attempt
    assert nvml.calls == ["lock 300 750"]


@pytest.mark.parametrize("emulate, mode", [(False, "fixed"), (True, "emulated")])
def test_missing_nvml_is_fixed_or_emulated_with_the_reason(emulate, mode):
    ctl = FrequencyControl("gpu", 1.5e9, nvml=FakeNvml(init_error=FakeNvml.NVMLError_LibraryNotFound),
                           emulate=emulate)
    assert ctl.mode == mode and "Library Not Found" in ctl.reason
    assert ctl.knobs().clock == mode and ctl.knobs().max_freq_hz == 0.0  # nothing measured


# --- this machine (real probes) and emulation --------------------------------------------------------

def test_cpu_cap_here_is_real_or_fixed_with_a_reason():
    ctl = FrequencyControl("cpu", 2.0e9)
    if cpufreq_probe()["available"]:
        assert ctl.mode in ("cpufreq", "fixed")
        return
    assert ctl.mode == "fixed" and "scaling_max_freq" in ctl.reason
    knobs = ctl.knobs()
    assert knobs.clock == "fixed" and "scaling_max_freq" in knobs.clock_reason


def test_gpu_cap_here_is_real_or_fixed_with_a_reason():
    try:
        close_nvml(open_nvml(0)[0])
    except NvmlUnavailable:
        ctl = FrequencyControl("gpu", 1.5e9)
        assert ctl.mode == "fixed" and "NVML unavailable" in ctl.reason
        return
    ctl = FrequencyControl("gpu", 1.5e9)
    assert ctl.mode in ("nvml", "fixed")
    ctl.close()


def test_a_fixed_clock_ignores_caps_without_sleeping_and_logs_it_once(caplog):
    ctl = FrequencyControl("cpu", 2.0e9, sysfs_root="/nonexistent")
    assert ctl.mode == "fixed" and "scaling_max_freq" in ctl.reason and "absent" in ctl.reason
    with caplog.at_level(logging.INFO, logger="coinfer"):
        ctl.set_cap(84e6)
        ctl.set_cap(0.5e9)
    assert ctl.cap_hz == ctl.effective_freq_hz() == 2.0e9  # what is in force: F
    t0 = time.perf_counter()
    assert ctl.stretch(0.2) == 0.0
    assert time.perf_counter() - t0 < 0.1  # no sleep
    ignored = [r.getMessage() for r in caplog.records if "ignored" in r.getMessage()]
    assert ignored == ["clock cap 84 MHz ignored: cpu clock not settable here ("
                       f"{ctl.reason}); run at full speed"]
    knobs = ctl.knobs()
    assert (knobs.clock, knobs.clock_reason, knobs.min_freq_hz, knobs.max_freq_hz) == \
        ("fixed", ctl.reason, 0.0, 0.0)
    assert ctl.with_max(3.0e9).mode == "fixed"  # a plan's other F: still fixed


def test_emulated_stretch_sleeps_busy_times_f_over_cap_minus_one():
    ctl = FrequencyControl("cpu", 2.0e9, sysfs_root="/nonexistent", emulate=True)
    assert ctl.mode == "emulated" and ctl.knobs().clock == "emulated"
    assert ctl.with_max(3.0e9).mode == "emulated"  # a plan's other F keeps the opt-in
    assert ctl.stretch(0.1) == 0.0  # at F nothing is added
    ctl.set_cap(0.5e9)
    t0 = time.perf_counter()
    extra = ctl.stretch(0.04)
    slept = time.perf_counter() - t0
    assert extra == pytest.approx(0.12)  # 0.04 s * (2.0 / 0.5 - 1)
    assert 0.12 <= slept < 0.12 + 1.0    # never short; a loaded machine may oversleep, not by a second
    ctl.reset()
    assert ctl.cap_hz == 2.0e9 and ctl.stretch(0.1) == 0.0


@pytest.mark.parametrize("bad", [0.0, -1e9, 2.5e9, float("nan")])
def test_bad_caps_raise_naming_the_field(bad):
    ctl = FrequencyControl("cpu", 2.0e9, sysfs_root="/nonexistent")
    with pytest.raises(ValueError, match="freq_hz"):
        ctl.set_cap(bad)
    assert ctl.cap_hz == 2.0e9  # unchanged


def test_bad_construction_raises_naming_the_field():
    with pytest.raises(ValueError, match="max_freq_hz"):
        FrequencyControl("cpu", 0.0)
    with pytest.raises(ValueError, match="kind"):
        FrequencyControl("npu", 1e9)


def test_a_solver_cap_a_hair_above_the_maximum_is_the_maximum():
    ctl = FrequencyControl("cpu", 2.0e9, sysfs_root="/nonexistent")
    ctl.set_cap(2.0e9 * (1 + 1e-12))
    assert ctl.cap_hz == 2.0e9


# --- psutil snapshot --------------------------------------------------------------------------------

def test_sysstats_sample_has_the_telemetry_fields_and_never_raises():
    s = sysstats.sample()
    assert s["cpu_count"] >= 1 and s["rss_bytes"] > 1_000_000  # any live Python
    assert 0.0 <= s["cpu_util_pct"] <= 100.0
    assert s["cpu_freq_hz"] is None or s["cpu_freq_hz"] > 1e6
    assert sysstats.sample(os.getpid())["proc_cpu_pct"] is not None  # second sample of this pid
    gone = sysstats.sample(2**22 + 12345)  # beyond pid_max: no such process
    assert gone["rss_bytes"] is None and gone["cpu_count"] >= 1
