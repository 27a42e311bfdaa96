"""Energy meters: RAPL and NVML read against stand-ins for the absent hardware (tests/fakes.py), and the
real probe on this machine falls back to the model, labelled and with a reason."""
import pytest

from coinfer.energy import EnergyReading, ModelMeter, NvmlMeter, PowerModel, RaplMeter, make_meter, rapl_probe
from coinfer.sysstats import NvmlUnavailable, open_nvml
from fakes import FakeNvml, FakeSysfs

MODEL = PowerModel(pue=1.5, power_coeff=1.0e-28)


def test_power_model_is_the_papers_energy_with_w_over_c_equal_to_f_t():
    busy, f = 0.2, 2.0e9
    w_over_c = f * busy  # cycles the compute took
    assert MODEL.energy_j(busy, f) == pytest.approx(1.5 * 1.0e-28 * w_over_c * f ** 2)
    with pytest.raises(ValueError, match="busy_s"):
        MODEL.energy_j(-1.0, f)
    with pytest.raises(ValueError, match="pue"):
        PowerModel(pue=0.0, power_coeff=1e-28)


def test_model_energy_of_a_stretched_compute_is_the_papers_energy_at_the_cap():
    # an emulated cap f stretches T (run at F) to T F / f; the model fed that time and f gives
    # eta kappa (W / C) f^2 with W / C = F T, as a real processor at f would
    F, f, t_at_F = 2.0e9, 0.5e9, 0.1
    assert MODEL.energy_j(t_at_F * F / f, f) == pytest.approx(1.5 * 1.0e-28 * (F * t_at_F) * f ** 2)


# --- RAPL ------------------------------------------------------------------------------------------

def test_rapl_meter_reads_package_deltas_in_joules(tmp_path):
    fake = FakeSysfs(tmp_path, packages=2)
    meter = make_meter("cpu", MODEL, sysfs_root=tmp_path)
    assert isinstance(meter, RaplMeter) and meter.source == "rapl" and meter.reason is None
    token = meter.begin()
    fake.set_energy_uj(1_000_000 + 2_500_000, "intel-rapl:0")  # +2.5 J on package 0
    fake.set_energy_uj(1_000_000 + 500_000, "intel-rapl:1")    # +0.5 J on package 1
    fake.set_energy_uj(99_000_000, "intel-rapl:0:0")           # a sub-zone: already inside package 0
    fake.set_energy_uj(99_000_000, "intel-rapl:2")             # psys: would count the packages twice
    reading = meter.end(token, busy_s=0.1, freq_hz=2e9)
    assert reading.source == "rapl"
    assert reading.joules == pytest.approx(3.0)
    assert reading.seconds >= 0


def test_rapl_meter_handles_a_counter_wrap(tmp_path):
    fake = FakeSysfs(tmp_path, wrap_uj=10_000_000)
    meter = make_meter("cpu", MODEL, sysfs_root=tmp_path)
    fake.set_energy_uj(9_000_000)
    token = meter.begin()
    fake.set_energy_uj(2_000_000)  # went through 10 J back to 0: 1 J + 2 J
    assert meter.end(token, 0.1, 2e9).joules == pytest.approx(3.0)


def test_unreadable_rapl_counter_gives_the_model_with_a_reason(tmp_path):
    fake = FakeSysfs(tmp_path)
    fake.set_energy_uj("garbage")
    meter = make_meter("cpu", MODEL, sysfs_root=tmp_path)
    assert isinstance(meter, ModelMeter) and "energy_uj" in meter.reason


def test_a_rapl_read_that_fails_mid_request_is_labelled_model(tmp_path):
    FakeSysfs(tmp_path)
    meter = make_meter("cpu", MODEL, sysfs_root=tmp_path)
    token = meter.begin()
    (tmp_path / "class/powercap/intel-rapl:0/energy_uj").unlink()
    reading = meter.end(token, busy_s=0.1, freq_hz=2e9)
    assert reading.source == "model" and reading.joules == pytest.approx(MODEL.energy_j(0.1, 2e9))


# --- NVML ------------------------------------------------------------------------------------------

def test_nvml_meter_reads_total_energy_deltas_in_joules():
    nvml = FakeNvml()
    meter = make_meter("gpu", MODEL, nvml=nvml)
    assert isinstance(meter, NvmlMeter) and meter.source == "nvml" and meter.mode == "total_energy"
    token = meter.begin()
    nvml.energy_mj += 1_500  # 1.5 J
    reading = meter.end(token, busy_s=0.01, freq_hz=1e9)
    assert reading == EnergyReading(pytest.approx(1.5), "nvml", reading.seconds)
    meter.close()
    assert nvml.inits == 0  # every nvmlInit matched by a shutdown


def test_nvml_meter_falls_back_to_power_times_time_without_total_energy():
    nvml = FakeNvml(total_energy=False)
    meter = make_meter("gpu", MODEL, nvml=nvml)
    assert meter.source == "nvml" and meter.mode == "power_x_time"
    assert "TotalEnergyConsumption" in meter.reason and "Not Supported" in meter.reason
    nvml.power_mw = 60_000
    token = meter.begin()
    nvml.power_mw = 100_000
    reading = meter.end(token, busy_s=0.01, freq_hz=1e9)
    assert reading.source == "nvml"
    assert reading.joules == pytest.approx(80.0 * reading.seconds)  # mean of 60 W and 100 W, times the wall time


def test_nvml_without_any_energy_reading_gives_the_model():
    nvml = FakeNvml(total_energy=False, power=False)
    meter = make_meter("gpu", MODEL, nvml=nvml)
    assert isinstance(meter, ModelMeter) and "PowerUsage" in meter.reason
    assert nvml.inits == 0  # gave NVML back when it had nothing to offer


def test_missing_nvml_library_or_gpu_gives_the_model_with_a_reason():
    meter = make_meter("gpu", MODEL, nvml=FakeNvml(init_error=FakeNvml.NVMLError_LibraryNotFound))
    assert isinstance(meter, ModelMeter) and "Library Not Found" in meter.reason
    meter = make_meter("gpu", MODEL, device_index=3, nvml=FakeNvml(gpus=1))
    assert isinstance(meter, ModelMeter) and "no GPU 3" in meter.reason


def test_an_nvml_read_that_fails_mid_request_is_labelled_model():
    nvml = FakeNvml()
    meter = make_meter("gpu", MODEL, nvml=nvml)
    token = meter.begin()
    nvml.total_energy = False  # e.g. the GPU fell off the bus
    reading = meter.end(token, busy_s=0.05, freq_hz=1e9)
    assert reading.source == "model" and reading.joules == pytest.approx(MODEL.energy_j(0.05, 1e9))


def test_an_nvml_energy_counter_that_goes_backwards_is_not_a_negative_energy():
    nvml = FakeNvml()
    meter = make_meter("gpu", MODEL, nvml=nvml)
    token = meter.begin()
    nvml.energy_mj = 10  # the driver reloaded: the counter restarted from zero
    reading = meter.end(token, busy_s=0.05, freq_hz=1e9)
    assert reading.source == "model" and reading.joules > 0


# --- this machine (real probes, no fakes) -----------------------------------------------------------

def test_cpu_meter_here_is_rapl_or_the_model_with_a_reason():
    meter = make_meter("cpu", MODEL)
    if rapl_probe()["available"]:  # a machine with readable RAPL
        assert meter.source == "rapl"
        return
    assert meter.source == "model" and meter.reason and "RAPL" in meter.reason
    reading = meter.end(meter.begin(), busy_s=0.2, freq_hz=2e9)
    assert reading == EnergyReading(pytest.approx(MODEL.energy_j(0.2, 2e9)), "model", reading.seconds)


def test_gpu_meter_here_is_nvml_or_the_model_with_a_reason():
    try:
        nvml, _ = open_nvml(0)
    except NvmlUnavailable:
        meter = make_meter("gpu", MODEL)
        assert meter.source == "model" and "NVML unavailable" in meter.reason
        assert meter.end(meter.begin(), 0.1, 1e9).source == "model"
        return
    from coinfer.sysstats import close_nvml

    close_nvml(nvml)
    meter = make_meter("gpu", MODEL)
    assert meter.source in ("nvml", "model")
    meter.close()


def test_unknown_meter_kind_is_a_usage_error():
    with pytest.raises(ValueError, match="kind"):
        make_meter("tpu", MODEL)
