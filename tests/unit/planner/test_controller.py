"""The planner's controller on synthetic telemetry: estimates, when it re-plans, and when it must not."""
import math
import random
import time

import pytest

from coinfer.planner.controller import Controller, ControllerSettings
from coinfer.defaults import DEFAULT_SYSTEM
from coinfer.planner.profile import profile_from_config
from coinfer.planner.scenario import parse_system
from coinfer.protos import planner_pb2 as ppb

SPLIT = 3
SYSTEM = dict(DEFAULT_SYSTEM, qos={"max_delay_s": 0.5, "max_energy_j": 5.0},
              device=dict(DEFAULT_SYSTEM["device"], flops_per_cycle=8.0),
              server=dict(DEFAULT_SYSTEM["server"], flops_per_cycle=64.0),
              channel=dict(DEFAULT_SYSTEM["channel"], bandwidth_hz=1e6, gain=1e-10))


@pytest.fixture(scope="module")
def minilm_config(minilm):
    return minilm.config


def make(minilm_config, **settings):
    plans = []
    profile = profile_from_config(minilm_config, "bert", "all-MiniLM-L6-v2", 4, 32)
    controller = Controller(parse_system(SYSTEM), profile,
                            ControllerSettings(batch=4, seq_len=32, split=SPLIT, **settings), plans.append,
                            profile_at=lambda b, s: profile_from_config(minilm_config, "bert", "m", b, s))
    controller.replan("start")
    return controller, plans, profile


def device_sample(controller, profile, c_true, gain_true, noise=0.0, rng=random.Random(0)):
    """What a device would measure under the current plan if its FLOPs per cycle were c_true and the
    channel gain gain_true (times multiplicative noise)."""
    plan = controller.plan
    device_seg, _ = profile.segments(plan.split_point)
    compute_s = plan.rho_device * device_seg.flops / (c_true * plan.f_device_hz)
    ch = controller.system.channel
    rate = ch.bandwidth_hz * math.log2(1 + gain_true * plan.tx_power_w / (ch.bandwidth_hz * ch.noise_psd_w_per_hz))
    sent = int(profile.sent_bits(plan.split_point) / 8)
    send_s = 8 * sent / rate * (1 + rng.uniform(-noise, noise))
    return ppb.DeviceSample(plan_epoch=plan.epoch, batch=4, seq_len=32, compute_s=compute_s, bytes_sent=sent,
                            send_s=send_s, freq_hz=plan.f_device_hz, tx_power_w=plan.tx_power_w,
                            end_to_end_s=compute_s + send_s + 0.01, server_s=0.0, energy_source="model")


def test_consistent_telemetry_causes_no_plan(minilm_config):
    controller, plans, profile = make(minilm_config, min_interval_s=0)
    for _ in range(20):
        controller.observe_device(device_sample(controller, profile, 8.0, 1e-10))
    assert [p.reason for p in plans] == ["start"]
    assert controller.estimates().device_flops_per_cycle == pytest.approx(8.0, rel=1e-6)


def test_noise_alone_does_not_replan(minilm_config):
    controller, plans, profile = make(minilm_config, min_interval_s=0)
    rng = random.Random(1)
    for _ in range(60):
        controller.observe_device(device_sample(controller, profile, 8.0, 1e-10, noise=0.1, rng=rng))
    assert len(plans) == 1


def test_a_10_db_fade_replans_after_the_hysteresis_and_learns_the_gain(minilm_config):
    controller, plans, profile = make(minilm_config, min_interval_s=0, hysteresis=3)
    old = controller.plan
    for i in range(3):
        controller.observe_device(device_sample(controller, profile, 8.0, 1e-11))
        assert len(plans) == (1 if i < 2 else 2)
    new = plans[-1]
    assert new.reason == "channel_change" and new.epoch == old.epoch + 1
    assert controller.estimates().channel_gain == pytest.approx(1e-11, rel=0.05)
    assert (new.tx_power_w, new.rho_device, new.rho_server) != (old.tx_power_w, old.rho_device, old.rho_server)


def test_compute_drift_is_learnt(minilm_config):
    controller, plans, profile = make(minilm_config, min_interval_s=0)
    for _ in range(4):
        controller.observe_device(device_sample(controller, profile, 16.0, 1e-10))
    assert plans[-1].reason == "compute_drift"
    assert controller.estimates().device_flops_per_cycle == pytest.approx(16.0, rel=0.05)


def test_plans_are_rate_limited_and_a_deferred_trigger_is_not_lost(minilm_config):
    controller, plans, profile = make(minilm_config, min_interval_s=0.5, hysteresis=1)
    controller.observe_device(device_sample(controller, profile, 8.0, 1e-11))  # within the interval: deferred
    assert len(plans) == 1
    time.sleep(1.0)
    assert len(plans) == 2 and plans[-1].reason == "channel_change"


def test_qos_change_and_infeasible_limits(minilm_config):
    controller, plans, _ = make(minilm_config)
    plan = controller.set_qos(1e-4, 5.0)
    assert plan.reason == "qos_change" and not plan.feasible and plan.detail
    assert plan.rho_device == pytest.approx(SYSTEM["distortion"]["min_ratio"])  # the fastest fallback
    with pytest.raises(ValueError, match="qos"):
        controller.set_qos(-1, 1)


def test_a_restarted_planner_moves_past_the_nodes_epoch(minilm_config):
    controller, plans, _ = make(minilm_config)
    controller.adopt_epoch(7, controller.planner_id)  # its own plan: nothing to do
    assert len(plans) == 1
    controller.adopt_epoch(7, "another-planner")
    assert plans[-1].reason == "resync" and plans[-1].epoch == 8


def test_a_fixed_cost_per_forward_is_told_apart_from_work_once_rho_varies():
    """t = t0 + x / C: at one ratio the slope explains the time; a second ratio identifies t0, so
    pruning harder is not mistaken for a slower processor."""
    from coinfer.planner.controller import _ComputeModel

    rng = random.Random(3)
    model = _ComputeModel(8.0, 0.2, 3)
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
    from coinfer.planner.controller import _ComputeModel

    rng = random.Random(5)
    model = _ComputeModel(8.0, 0.2, 3)
    for rho in [1.0] * 5 + [0.4] * 5 + [0.7] * 5:
        model.observe(rho * 3e8 / 2e9, _forward_seconds(rho, 2e9, rng), 1.0)
    truth = 0.01 * 2 + 0.7 * 3e8 / (40.0 * 1e9)
    predicted = model.predict(0.7 * 3e8 / 1e9, model.fixed_s, model.flops_per_cycle, slowdown=2.0)
    assert predicted == pytest.approx(truth, rel=0.08)


def test_clock_changes_at_one_ratio_keep_the_fit_finite_and_right():
    """Plans that move only the clock give samples in which fixed cost and work stretch alike; a fit that
    clipped its Kalman update diverged on them (C -> 1e-12, predictions off by 4x and growing)."""
    from coinfer.planner.controller import _ComputeModel

    rng = random.Random(1)
    model = _ComputeModel(8.0, 0.2, 3)
    for i, freq in enumerate([2e9] * 6 + [0.93e9, 2e9, 1.4e9, 0.93e9] * 10):
        seconds = _forward_seconds(1.0, freq, rng)
        if i >= 3:
            predicted = model.predict(3e8 / freq, model.fixed_s, model.flops_per_cycle, slowdown=2e9 / freq)
            assert predicted == pytest.approx(seconds, rel=0.15), i
        model.observe(3e8 / freq, seconds, 2e9 / freq)
    assert 1.0 < model.flops_per_cycle < 1e3
