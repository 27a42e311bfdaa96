"""The group's planning and the over-the-air channel, as mathematics (no processes).

Model assignment against brute force, the zf/mmse transceivers against their definitions and a random
search, and the emulated superposition's error against the design's prediction over many trials.
"""
import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from coinfer.device.group.aircomp import AirReceiver, from_symbols, to_symbols
from coinfer.device.group.design import (Assignment, BlockShape, GroupChannel, GroupDevice, assign_units,
                                         design_transceiver, plan_group)
from coinfer.radio import dbm_per_hz_to_w_per_hz, path_loss_gain

speeds_st = st.lists(st.floats(0.1, 10.0), min_size=1, max_size=4)


@settings(max_examples=60, deadline=None)
@given(total=st.integers(0, 9), speeds=speeds_st)
def test_assignment_is_integral_complete_and_minimises_the_slowest_device(total, speeds):
    counts = assign_units(total, speeds)
    assert len(counts) == len(speeds) and sum(counts) == total and min(counts) >= 0
    best = min(max(n / s for n, s in zip(split, speeds))
               for split in itertools.product(range(total + 1), repeat=len(speeds)) if sum(split) == total)
    assert max(n / s for n, s in zip(counts, speeds)) <= best + 1e-12


def test_assignment_follows_compute():
    a = Assignment.by_compute(12, 1536, [1.0, 2.0, 3.0])
    assert a.heads == (2, 4, 6) and a.columns == (256, 512, 768)
    assert assign_units(5, [0.0, 1.0]) == (0, 5)  # a device with no compute gets nothing
    with pytest.raises(ValueError):
        assign_units(3, [0.0, 0.0])
    with pytest.raises(ValueError, match="sum"):
        Assignment((6, 5), (768, 768)).check(12, 1536)


instance_st = st.integers(1, 5).flatmap(lambda n: st.tuples(
    st.lists(st.floats(1e-3, 1.0), min_size=n, max_size=n),     # |h_i|
    st.lists(st.floats(0.01, 1.0), min_size=n, max_size=n),     # P_i
    st.lists(st.one_of(st.just(0.0), st.floats(1e-6, 5.0)), min_size=n, max_size=n),  # w_i (0: nothing to send)
    st.floats(1e-4, 1.0)))                                       # sigma^2


@settings(max_examples=80, deadline=None)
@given(instance_st)
def test_zf_aligns_every_sender_within_the_power_limits(instance):
    amp, p_max, w, sigma2 = (*map(np.asarray, instance[:3]), instance[3])
    d = design_transceiver(amp, p_max, w, sigma2, "zf")
    sending = w > 0
    assert np.all(d.tx_power <= p_max * (1 + 1e-9))
    if sending.any():
        assert np.allclose(d.gains[sending], 1.0)
        assert d.misalignment_mse == pytest.approx(0.0, abs=1e-12)
        # The weakest device (smallest |h| sqrt(P / w)) transmits at full power and sets a.
        g = amp[sending] * np.sqrt(p_max[sending] / w[sending])
        assert d.mse_per_symbol == pytest.approx(sigma2 / g.min() ** 2, rel=1e-9)
    assert np.all(d.b_abs[~sending] == 0)


@settings(max_examples=80, deadline=None)
@given(instance_st, st.integers(0, 2**31 - 1))
def test_mmse_beats_zf_and_every_random_feasible_transceiver(instance, seed):
    amp, p_max, w, sigma2 = (*map(np.asarray, instance[:3]), instance[3])
    mmse = design_transceiver(amp, p_max, w, sigma2, "mmse")
    zf = design_transceiver(amp, p_max, w, sigma2, "zf")
    assert np.all(mmse.tx_power <= p_max * (1 + 1e-9))
    assert mmse.mse_per_symbol <= zf.mse_per_symbol * (1 + 1e-9)
    # Random search over (a, |b_i|) within the power limits never does better.
    rng = np.random.default_rng(seed)
    b_max = np.sqrt(np.divide(p_max, w, out=np.full_like(w, np.inf), where=w > 0))
    b_max = np.where(np.isfinite(b_max), b_max, 1.0)
    for _ in range(300):
        a = 10 ** rng.uniform(-2, 3) * (mmse.a if mmse.a > 0 else 1.0) / 10
        b = rng.uniform(0, 1, len(w)) ** 0.3 * b_max
        mse = float(np.sum(w * (1 - a * amp * b) ** 2) + a * a * sigma2)
        assert mmse.mse_per_symbol <= mse + 1e-12


def test_mmse_gives_up_alignment_of_a_weak_device_for_less_noise():
    d = design_transceiver([1.0, 0.5, 0.1], [1.0] * 3, [1.0] * 3, 0.01, "mmse")
    # Worked by hand: on (2, 10) only device 3 is short of alignment; t = 0.1 / (0.01 + 0.01) = 5.
    assert d.a == pytest.approx(5.0) and d.gains == pytest.approx([1.0, 1.0, 0.5])
    assert d.mse_per_symbol == pytest.approx(0.25 + 0.25)
    assert design_transceiver([1.0, 0.5, 0.1], [1.0] * 3, [1.0] * 3, 0.01, "zf").mse_per_symbol == pytest.approx(1.0)


def test_design_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="zero-forcing"):
        design_transceiver([1.0, 0.0], [1.0, 1.0], [1.0, 1.0], 0.1, "zf")
    with pytest.raises(ValueError, match="design"):
        design_transceiver([1.0], [1.0], [1.0], 0.1, "best")
    # mmse leaves a device it cannot hear unaligned: its whole signal power is error.
    d = design_transceiver([1.0, 0.0], [1.0, 1.0], [1.0, 2.0], 0.0, "mmse")
    assert d.misalignment_mse == pytest.approx(2.0)
    # A subnormal power (G overflows) is treated as silence, never as a NaN.
    d = design_transceiver([1.0, 1.0], [1.0, 1.0], [1.0, 1e-311], 0.5, "mmse")
    assert np.isfinite(d.mse_per_symbol) and d.b_abs[1] == 0 and d.gains[0] == pytest.approx(1 / 1.5)


def test_symbols_pack_pairs_and_unpack_exactly():
    x = torch.arange(7, dtype=torch.float32)
    u = to_symbols(x)
    assert u.shape == (4,) and u[1] == complex(2, 3) and u[3] == complex(6, 0)
    assert torch.equal(from_symbols(u, 7), x)


@pytest.mark.parametrize("method", ["zf", "mmse"])
def test_superposed_error_matches_the_prediction_over_many_trials(method):
    """Independent zero-mean partials (the design's assumption): measured MSE within 10 % of predicted."""
    gains = [path_loss_gain(d) for d in (60.0, 100.0, 180.0)]
    noise = dbm_per_hz_to_w_per_hz(-150) * 1e7  # a noisy channel (SNR ~ 0 dB at 180 m), where mmse misaligns
    rx = AirReceiver(gains, 0.2, noise, method, seed=3)
    gen = torch.Generator().manual_seed(7)
    scales = torch.tensor([0.5, 1.0, 3.0])  # unequal powers, so mmse has a device to give up on
    errors, predicted = [], []
    for _ in range(40):
        parts = [torch.randn(1000, generator=gen) * s for s in scales]
        symbols = [to_symbols(p) for p in parts]
        design = rx.design(np.array([float((u.abs() ** 2).mean()) for u in symbols]))
        b = rx.transmit_scalars(design)
        sent = [u * complex(bi) for u, bi in zip(symbols, b)]
        assert all(float((s.abs() ** 2).mean()) <= 0.2 * (1 + 1e-5) for s in sent)
        estimate = from_symbols(rx.superpose(sent, design), 1000)
        errors.append(float(((estimate.double() - sum(parts).double()) ** 2).mean()))
        predicted.append(design.mse_per_element(1000))
    if method == "mmse":
        assert design.misalignment_mse > 0.1 * design.noise_mse  # the test exercises misalignment too
    assert np.mean(errors) == pytest.approx(np.mean(predicted), rel=0.10)


def test_noise_is_seeded_and_fresh_per_call():
    rx1 = AirReceiver([1e-9, 1e-9], 0.2, 4e-14, "zf", seed=5)
    rx2 = AirReceiver([1e-9, 1e-9], 0.2, 4e-14, "zf", seed=5)
    sent = [torch.ones(8, dtype=torch.complex64)] * 2
    d = rx1.design(np.array([1.0, 1.0]))
    first = rx1.superpose(sent, d)
    assert torch.equal(first, rx2.superpose(sent, d))      # same seed, same noise
    assert not torch.equal(first, rx1.superpose(sent, d))  # a new draw every all-reduce


def test_plan_reports_latency_and_mse_from_the_formulas():
    shape = BlockShape(384, 12, 1536)
    devices = [GroupDevice(50e9, path_loss_gain(d)) for d in (80.0, 120.0)]
    channel = GroupChannel()
    plan = plan_group(shape, 3, devices, channel, batch=2, seq_len=16, design="zf")
    m = 2 * 16 * 384
    assert plan.all_reduce_time_s("aircomp") == pytest.approx(2 * math.ceil(m / 2) / 1e7)
    rates = [1e7 * math.log2(1 + d.gain * 0.2 / channel.noise_power_w) for d in devices]
    assert plan.all_reduce_time_s("exact") == pytest.approx(2 * sum(m * 32 / r for r in rates))
    # zf over equal shares: the farther device (120 m) limits it.
    g = devices[1].gain * 0.2 / 0.5
    assert plan.attention_design.nmse == pytest.approx(channel.noise_power_w / g)
    compute = plan.compute_s
    assert compute["attention_per_device"][0] == pytest.approx(shape.attention_flops(6, 2, 16) / 50e9)
    assert plan.latency_s("exact") > plan.latency_s("aircomp") > 3 * compute["block_critical_path"]
    out = plan.to_dict()
    assert out["assignment"] == {"heads": [6, 6], "columns": [768, 768]}
    assert out["all_reduce"]["digital_bytes_per_device"] == m * 4


def test_expected_mse_grows_with_the_noise():
    shape = BlockShape(384, 12, 1536)
    devices = [GroupDevice(50e9, path_loss_gain(d)) for d in (80.0, 120.0, 200.0)]
    for design in ("zf", "mmse"):
        nmse = [plan_group(shape, 2, devices, GroupChannel(noise_psd_w_per_hz=dbm_per_hz_to_w_per_hz(n0)),
                           design=design).ffn_design.nmse for n0 in (-180, -170, -160, -150)]
        assert all(a < b for a, b in zip(nmse, nmse[1:]))


def test_rayleigh_fading_redraws_the_channel_and_the_design_follows():
    rx = AirReceiver([1e-9, 1e-9], 0.2, 4e-14, "zf", fading="rayleigh", seed=2)
    still = AirReceiver([1e-9, 1e-9], 0.2, 4e-14, "zf", fading="none", seed=2)
    before = rx.h.copy()
    rx.redraw()
    still.redraw()
    assert not np.allclose(np.abs(rx.h), np.abs(before))   # new block: new magnitudes
    assert np.array_equal(still.h, before)                  # no fading: the channel stays
    design = rx.design(np.array([1.0, 1.0]))
    assert np.allclose(design.gains, 1.0) and np.all(design.tx_power <= 0.2 * (1 + 1e-9))
    # The pre-rotation undoes each channel's phase: h_i b_i is real and positive.
    hb = rx.h * rx.transmit_scalars(design)
    assert np.allclose(hb.imag, 0.0, atol=1e-12 * np.abs(hb).max()) and np.all(hb.real > 0)
