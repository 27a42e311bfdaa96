"""The controller's estimators recover known quantities from synthetic measurements made by the
system model's own formulas (coinfer.radio.shannon_rate_bps, t = t0 F / f + W / (C f),
E = eta kappa (W / C) f^2) with multiplicative noise.

approx(..., abs=0) throughout: its default absolute tolerance (1e-12) would pass any gain of 1e-13."""
import random

import pytest

from coinfer.planner.estimators import (ComputeModel, Ewma, Hysteresis, Tracked, drifted, gain_from_rate,
                                        power_coeff_from_energy)
from coinfer.radio import shannon_rate_bps

B, N0, P = 1.0e7, 3.98e-21, 0.2  # the spec's example channel (system-model.md section 7)
NOISE = 0.05                     # +-5 % multiplicative on every measured time / energy
SEEDS = range(5)


def _transfers(rng, gain, n, tx_power_w=P, noise=NOISE):
    """(bytes, seconds) of n uplink transfers at R(p) for this gain, times off by up to +-noise."""
    for _ in range(n):
        nbytes = rng.randint(50_000, 400_000)
        yield nbytes, 8 * nbytes / shannon_rate_bps(B, N0, gain, tx_power_w) * rng.uniform(1 - noise, 1 + noise)


def _gain_tracker(alpha=0.3):
    """The controller's channel estimate: gain_from_rate of each transfer into a log-domain Tracked."""
    return Tracked(alpha, drift=0.2, count=3, log_domain=True)


def test_gain_from_rate_inverts_the_rate_formula():
    for gain in (1e-13, 1e-9, 1e-6):
        assert gain_from_rate(shannon_rate_bps(B, N0, gain, P), P, B, N0) == pytest.approx(gain, rel=1e-9, abs=0)


@pytest.mark.parametrize("field,args", [("rate_bps", (0, P, B, N0)), ("tx_power_w", (1e6, -1, B, N0)),
                                        ("bandwidth_hz", (1e6, P, 0, N0)),
                                        ("noise_psd_w_per_hz", (1e6, P, B, float("nan")))])
def test_gain_from_rate_refuses_non_positive_inputs(field, args):
    with pytest.raises(ValueError, match=field):
        gain_from_rate(*args)


def test_gain_from_rate_refuses_a_rate_no_finite_gain_gives():
    # 10 Gbit/s in 1 MHz is 10^4 bit/s/Hz: 2^10000 overflows; say so rather than return inf
    with pytest.raises(ValueError, match="bit/s/Hz"):
        gain_from_rate(1e10, P, 1e6, N0)


def test_ewma_starts_at_the_first_value_then_weights_new_ones_by_alpha():
    e = Ewma(0.25)
    assert e.value is None and e.count == 0
    assert e.update(4.0) == 4.0
    assert e.update(8.0) == pytest.approx(5.0)
    assert e.count == 2
    with pytest.raises(ValueError, match="alpha"):
        Ewma(0.0)
    with pytest.raises(ValueError):
        e.update(float("inf"))


def test_drifted_is_relative_and_unknown_is_not_drift():
    assert drifted(1.0, 1.21, 0.2) and drifted(1.0, 0.79, 0.2)
    assert not drifted(1.0, 1.19, 0.2)
    assert not drifted(None, 5.0, 0.2) and not drifted(1.0, None, 0.2)
    assert drifted(1e-9, 1e-10, 0.5)  # a 10 dB drop is a relative change of 0.9


def test_hysteresis_ignores_a_single_outlier_and_flags_a_persistent_step():
    h = Hysteresis(0.5, count=3)
    ref = 1e-9
    assert not any(h.update(ref, x) for x in (1.1e-9, 0.9e-9, 1e-7, 1.05e-9, 0.95e-9))  # one outlier
    flags = [h.update(ref, 1e-10) for _ in range(4)]  # 10 dB down, and it stays down
    assert flags == [False, False, True, True]
    h.reset()
    assert not h.update(ref, 1e-10)


def test_hysteresis_does_not_count_noise_that_swings_both_ways():
    h = Hysteresis(0.5, count=3)
    assert not any(h.update(1.0, x) for x in (2.0, 0.3, 2.0, 0.3, 2.0, 0.3))


# --- the controller's estimates: Tracked, gain_from_rate, power_coeff_from_energy, ComputeModel ---

def test_tracked_is_an_ewma_in_its_domain_and_jumps_to_the_median_of_recent_samples():
    lin = Tracked(0.5, drift=0.2, count=3)
    assert lin.value is None
    for x in (1.0, 3.0):
        lin.observe(x)
    assert lin.value == pytest.approx(2.0)
    log = Tracked(0.5, drift=0.2, count=3, log_domain=True)
    for x in (1.0, 100.0):
        log.observe(x)
    assert log.value == pytest.approx(10.0)  # the geometric mean: multiplicative noise averages out
    for x in (1e-3, 1e-3, 2e-3):  # a step down: the EWMA is still halfway, the median is there
        log.observe(x)
    assert log.value > 2e-3
    log.jump_to_recent()
    assert log.value == pytest.approx(1e-3, rel=1e-12) and log.ewma.count == 1


@pytest.mark.parametrize("gain", [1e-13, 3e-13])  # SNR 0.5 and 1.5 at p = 0.2 W
@pytest.mark.parametrize("seed", SEEDS)
def test_channel_gain_recovered_within_5_percent(gain, seed):
    est = _gain_tracker()
    for nbytes, seconds in _transfers(random.Random(seed), gain, 40):
        est.observe(gain_from_rate(8 * nbytes / seconds, P, B, N0))
    assert est.ewma.count == 40
    assert est.value == pytest.approx(gain, rel=0.05, abs=0)


@pytest.mark.parametrize("seed", SEEDS)
def test_at_high_snr_the_rate_is_recovered_though_the_gain_is_ill_conditioned(seed):
    # spec point: SNR 5000, 12.3 bit/s/Hz. d ln g / d ln R ~ 8.5 there, so +-5 % on times is +-40 % on
    # a raw gain; what the delay depends on, R(p) from the estimate, still lands within 5 %
    gain = 1e-9
    est = _gain_tracker()
    for nbytes, seconds in _transfers(random.Random(seed), gain, 40):
        est.observe(gain_from_rate(8 * nbytes / seconds, P, B, N0))
    assert shannon_rate_bps(B, N0, est.value, P) == pytest.approx(shannon_rate_bps(B, N0, gain, P), rel=0.05, abs=0)
    assert est.value == pytest.approx(gain, rel=0.35, abs=0)  # bounded, but not to 5 %


def test_channel_estimate_holds_across_transmit_powers():
    # the gain is a property of the channel, not of p: transfers at several powers give one estimate
    rng, gain = random.Random(7), 1e-13
    est = _gain_tracker()
    for _ in range(60):
        p = rng.choice((0.05, 0.1, 0.2))
        ((nbytes, seconds),) = _transfers(rng, gain, 1, tx_power_w=p)
        est.observe(gain_from_rate(8 * nbytes / seconds, p, B, N0))
    assert est.value == pytest.approx(gain, rel=0.05, abs=0)


def test_power_coefficient_inverts_the_energy_model():
    kappa, pue, c, flops, freq = 1.0e-28, 1.5, 8.0, 4e9, 1.5e9
    joules = pue * kappa * (flops / c) * freq ** 2
    assert power_coeff_from_energy(joules, pue, flops, c, freq) == pytest.approx(kappa, rel=1e-12, abs=0)


@pytest.mark.parametrize("seed", SEEDS)
def test_power_coefficient_recovered_within_5_percent(seed):
    rng, kappa, pue, c = random.Random(seed), 1.0e-28, 1.5, 8.0
    est = Tracked(0.3, drift=0.2, count=3, log_domain=True)  # the controller's k_device / k_server
    for _ in range(30):
        flops, freq = rng.uniform(1e9, 8e9), rng.choice((1.0e9, 2.0e9))
        joules = pue * kappa * (flops / c) * freq ** 2 * rng.uniform(1 - NOISE, 1 + NOISE)
        est.observe(power_coeff_from_energy(joules, pue, flops, c, freq))
    assert est.value == pytest.approx(kappa, rel=0.05, abs=0)


@pytest.mark.parametrize("seed", SEEDS)
def test_flops_per_cycle_recovered_within_5_percent(seed):
    # no fixed cost: C alone explains the time, at any clock (x = W / f, as the controller passes it)
    rng, c_true, F = random.Random(seed), 8.0, 2.0e9
    model = ComputeModel(4.0, 0.2, 3)
    for _ in range(30):
        flops, freq = rng.uniform(1e9, 8e9), rng.choice((1.0e9, 1.5e9, 2.0e9))
        model.observe(flops / freq, flops / (c_true * freq) * rng.uniform(1 - NOISE, 1 + NOISE), F / freq)
    assert model.flops_per_cycle == pytest.approx(c_true, rel=0.05, abs=0)


def test_a_fixed_cost_per_forward_is_told_apart_from_work_once_rho_varies():
    """t = t0 + x / C: at one ratio the slope explains the time; a second ratio identifies t0, so
    pruning harder is not mistaken for a slower processor."""
    rng = random.Random(3)
    model = ComputeModel(8.0, 0.2, 3)
    assert model.flops_per_cycle is None and model.fixed_s is None  # nothing observed yet
    c_true, fixed_true = 20.0, 0.006
    for x in [1.0] * 5 + [0.3] * 5 + [0.6] * 3:
        model.observe(x, (fixed_true + x / c_true) * (1 + rng.uniform(-0.03, 0.03)))
    assert model.flops_per_cycle == pytest.approx(c_true, rel=0.05)
    assert model.fixed_s == pytest.approx(fixed_true, rel=0.2)


def _forward_seconds(rho: float, freq_hz: float, rng, fixed_s=0.01, c_true=40.0, work=3e8, max_hz=2e9) -> float:
    """A forward whose fixed part is cycles too: both terms stretch as the clock falls (+-5 % noise)."""
    return (fixed_s * max_hz / freq_hz + rho * work / (c_true * freq_hz)) * (1 + rng.uniform(-0.05, 0.05))


def test_the_fixed_cost_stretches_with_the_clock():
    """Fitted at full clock with rho varying, the model predicts a halved clock before seeing one."""
    rng = random.Random(5)
    model = ComputeModel(8.0, 0.2, 3)
    for rho in [1.0] * 5 + [0.4] * 5 + [0.7] * 5:
        model.observe(rho * 3e8 / 2e9, _forward_seconds(rho, 2e9, rng), 1.0)
    truth = 0.01 * 2 + 0.7 * 3e8 / (40.0 * 1e9)
    predicted = model.predict(0.7 * 3e8 / 1e9, model.fixed_s, model.flops_per_cycle, slowdown=2.0)
    assert predicted == pytest.approx(truth, rel=0.08)


def test_clock_changes_at_one_ratio_keep_the_fit_finite_and_right():
    """Plans that move only the clock give samples in which fixed cost and work stretch alike; a fit that
    clipped its Kalman update diverged on them (C -> 1e-12, predictions off by 4x and growing)."""
    rng = random.Random(1)
    model = ComputeModel(8.0, 0.2, 3)
    for i, freq in enumerate([2e9] * 6 + [0.93e9, 2e9, 1.4e9, 0.93e9] * 10):
        seconds = _forward_seconds(1.0, freq, rng)
        if i >= 3:
            predicted = model.predict(3e8 / freq, model.fixed_s, model.flops_per_cycle, slowdown=2e9 / freq)
            assert predicted == pytest.approx(seconds, rel=0.15), i
        model.observe(3e8 / freq, seconds, 2e9 / freq)
    assert 1.0 < model.flops_per_cycle < 1e3
