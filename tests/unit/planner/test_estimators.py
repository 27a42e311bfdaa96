"""Estimators recover known quantities from synthetic measurements made by the system model's own
formulas (planner.costs.rate_bps, T = W / (C f), E = eta kappa (W / C) f^2) with multiplicative noise.

approx(..., abs=0) throughout: its default absolute tolerance (1e-12) would pass any gain of 1e-13."""
import math
import random

import pytest

from coinfer.planner.costs import rate_bps
from coinfer.planner.estimators import (ChannelEstimator, ComputeEstimator, Ewma, Hysteresis, PowerEstimator,
                                        drifted, gain_from_rate, rate_from_gain)

B, N0, P = 1.0e7, 3.98e-21, 0.2  # the spec's example channel (system-model.md section 7)
NOISE = 0.05                     # +-5 % multiplicative on every measured time / energy
SEEDS = range(5)


def _transfers(rng, gain, n, tx_power_w=P, noise=NOISE):
    """(bytes, seconds) of n uplink transfers at R(p) for this gain, times off by up to +-noise."""
    for _ in range(n):
        nbytes = rng.randint(50_000, 400_000)
        yield nbytes, 8 * nbytes / rate_bps(tx_power_w, B, N0, gain) * rng.uniform(1 - noise, 1 + noise)


def test_gain_from_rate_inverts_the_rate_formula():
    for gain in (1e-13, 1e-9, 1e-6):
        assert gain_from_rate(rate_bps(P, B, N0, gain), P, B, N0) == pytest.approx(gain, rel=1e-9, abs=0)
        assert rate_from_gain(gain, P, B, N0) == pytest.approx(rate_bps(P, B, N0, gain), rel=1e-12, abs=0)


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


@pytest.mark.parametrize("gain", [1e-13, 3e-13])  # SNR 0.5 and 1.5 at p = 0.2 W
@pytest.mark.parametrize("seed", SEEDS)
def test_channel_gain_recovered_within_5_percent(gain, seed):
    est = ChannelEstimator(B, N0)
    for nbytes, seconds in _transfers(random.Random(seed), gain, 40):
        est.observe(nbytes, seconds, P)
    assert est.count == 40
    assert est.gain == pytest.approx(gain, rel=0.05, abs=0)


@pytest.mark.parametrize("seed", SEEDS)
def test_at_high_snr_the_rate_is_recovered_though_the_gain_is_ill_conditioned(seed):
    # spec point: SNR 5000, 12.3 bit/s/Hz. d ln g / d ln R ~ 8.5 there, so +-5 % on times is +-40 % on
    # a raw gain; what the delay depends on, R(p) from the estimate, still lands within 5 %
    gain = 1e-9
    est = ChannelEstimator(B, N0)
    for nbytes, seconds in _transfers(random.Random(seed), gain, 40):
        est.observe(nbytes, seconds, P)
    assert est.rate_bps(P) == pytest.approx(rate_bps(P, B, N0, gain), rel=0.05, abs=0)
    assert est.gain == pytest.approx(gain, rel=0.35, abs=0)  # bounded, but not to 5 %


def test_channel_estimate_holds_across_transmit_powers():
    # the gain is a property of the channel, not of p: transfers at several powers give one estimate
    rng, gain = random.Random(7), 1e-13
    est = ChannelEstimator(B, N0)
    for _ in range(60):
        p = rng.choice((0.05, 0.1, 0.2))
        ((nbytes, seconds),) = _transfers(rng, gain, 1, tx_power_w=p)
        est.observe(nbytes, seconds, p)
    assert est.gain == pytest.approx(gain, rel=0.05, abs=0)


def test_channel_estimator_skips_small_transfers_and_bad_times_and_subtracts_overhead():
    gain, overhead = 1e-12, 0.004
    est = ChannelEstimator(B, N0, min_bytes=16_384, fixed_overhead_s=overhead)
    assert est.observe(1_000, 0.5, P) is None          # below min_bytes: says nothing, changes nothing
    assert est.observe(100_000, 0.003, P) is None      # shorter than the fixed overhead
    assert est.observe(100_000, 0.1, 0.0) is None      # no transmit power in force
    assert est.rejected == 2 and est.count == 0
    nbytes = 200_000
    g = est.observe(nbytes, 8 * nbytes / rate_bps(P, B, N0, gain) + overhead, P)
    assert g == pytest.approx(gain, rel=1e-9, abs=0)          # exact once the overhead is taken off
    assert est.observe(10, 1.0, P) == g                # the current estimate comes back unchanged


def test_channel_estimator_drops_a_single_outlier():
    # one transfer 20x slower (a stall on a shared machine) must not move the estimate much
    gain, rng = 1e-13, random.Random(3)
    est = ChannelEstimator(B, N0)
    for nbytes, seconds in _transfers(rng, gain, 10):
        est.observe(nbytes, seconds, P)
    before = est.gain
    nbytes = 200_000
    est.observe(nbytes, 20 * 8 * nbytes / rate_bps(P, B, N0, gain), P)
    assert est.gain == pytest.approx(before, rel=0.05, abs=0)


@pytest.mark.parametrize("seed", SEEDS)
def test_flops_per_cycle_recovered_within_5_percent(seed):
    rng, c_true = random.Random(seed), 8.0
    est = ComputeEstimator()
    for _ in range(30):
        flops, freq = rng.uniform(1e9, 8e9), rng.choice((1.0e9, 1.5e9, 2.0e9))
        est.observe(flops, flops / (c_true * freq) * rng.uniform(1 - NOISE, 1 + NOISE), freq)
    assert est.flops_per_cycle == pytest.approx(c_true, rel=0.05, abs=0)


def test_flops_per_cycle_under_an_emulated_cap_is_the_full_speed_figure():
    # emulation stretches the time by F/f and reports f: (T F / f) f = T F, so C is as at F
    c_true, F, f, flops = 8.0, 2.0e9, 0.5e9, 4e9
    t_at_f = flops / (c_true * F) * (F / f)
    est = ComputeEstimator()
    assert est.observe(flops, t_at_f, f) == pytest.approx(c_true)
    assert est.observe(0.0, 1.0, f) == pytest.approx(c_true) and est.rejected == 1  # k = 0: nothing to learn


@pytest.mark.parametrize("seed", SEEDS)
def test_power_coefficient_recovered_within_5_percent(seed):
    rng, kappa, pue, c = random.Random(seed), 1.0e-28, 1.5, 8.0
    est = PowerEstimator()
    assert est.observe(1.0, 1e9, None, 1e9, pue) is None  # no C estimate yet: skipped
    for _ in range(30):
        flops, freq = rng.uniform(1e9, 8e9), rng.choice((1.0e9, 2.0e9))
        joules = pue * kappa * (flops / c) * freq ** 2 * rng.uniform(1 - NOISE, 1 + NOISE)
        est.observe(joules, flops, c, freq, pue)
    assert est.power_coeff == pytest.approx(kappa, rel=0.05, abs=0)


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


@pytest.mark.parametrize("seed", SEEDS)
def test_estimate_with_hysteresis_stays_quiet_under_noise_and_flags_a_10_db_drop(seed):
    # the replanner's use: reference = the gain the plan was solved with; noisy transfers (and one stall)
    # raise no flag, a lasting 10 dB drop raises one within a few transfers
    rng, gain = random.Random(seed), 1e-9
    est, h = ChannelEstimator(B, N0), Hysteresis(0.5, count=3)
    for i, (nbytes, seconds) in enumerate(_transfers(rng, gain, 60)):
        est.observe(nbytes, seconds * (10 if i == 30 else 1), P)
        assert not h.update(gain, est.gain), i
    flagged_after = None
    for i, (nbytes, seconds) in enumerate(_transfers(rng, gain / 10, 20)):
        est.observe(nbytes, seconds, P)
        if h.update(gain, est.gain):
            flagged_after = i + 1
            break
    assert flagged_after is not None and flagged_after <= 6
    assert math.log10(est.gain / gain) < -0.3  # and the estimate has moved most of the way down
