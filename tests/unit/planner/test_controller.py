"""The planner's controller on synthetic telemetry: estimates, when it re-plans, and when it must not."""
import math
import random
import time

import pytest

from coinfer.planner.controller import Controller, ControllerSettings
from coinfer.planner.profile import profile_from_config
from coinfer.protos import planner_pb2 as ppb
from coinfer.system import DEFAULT_SYSTEM, parse_system

from scenarios import CONTROLLER_SPLIT as SPLIT, CONTROLLER_SYSTEM as SYSTEM, make_controller


@pytest.fixture(scope="module")
def minilm_config(minilm):
    return minilm.config


make = make_controller  # the name the tests below use


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
    for _ in range(controller.settings.warmup):  # the planner has come to trust its channel estimate
        controller.observe_device(device_sample(controller, profile, 8.0, 1e-10))
    assert len(plans) == 1
    for i in range(3):
        controller.observe_device(device_sample(controller, profile, 8.0, 1e-11))
        assert len(plans) == (1 if i < 2 else 2)
    new = plans[-1]
    assert new.reason == "channel_change" and new.epoch == old.epoch + 1
    assert controller.estimates().channel_gain == pytest.approx(1e-11, rel=0.05, abs=0)
    assert (new.tx_power_w, new.rho_device, new.rho_server) != (old.tx_power_w, old.rho_device, old.rho_server)


def test_compute_drift_is_learnt(minilm_config):
    """From a fresh planner: only once `warmup` samples agree (a handful is not enough to act on)."""
    controller, plans, profile = make(minilm_config, min_interval_s=0)
    for i in range(controller.settings.warmup):
        controller.observe_device(device_sample(controller, profile, 16.0, 1e-10))
        assert len(plans) == (1 if i < controller.settings.warmup - 1 else 2)
    assert plans[-1].reason == "compute_drift"
    assert controller.estimates().device_flops_per_cycle == pytest.approx(16.0, rel=0.05)


def test_plans_are_rate_limited_and_a_deferred_trigger_is_not_lost(minilm_config):
    controller, plans, profile = make(minilm_config, min_interval_s=0.5, hysteresis=1, persist_s=0)
    for _ in range(controller.settings.warmup):
        controller.observe_device(device_sample(controller, profile, 8.0, 1e-10))
    controller.replan("start")  # a plan just now, with the same decision
    assert len(plans) == 2
    controller.observe_device(device_sample(controller, profile, 8.0, 1e-11))  # within the interval: deferred
    assert len(plans) == 2
    time.sleep(1.0)
    assert len(plans) == 3 and plans[-1].reason == "channel_change"


def test_qos_change_and_infeasible_limits(minilm_config):
    controller, plans, _ = make(minilm_config)
    good = plans[-1]
    assert good.feasible
    plan = controller.set_qos(1e-4, 5.0)
    assert plan.reason == "qos_change" and not plan.feasible and "kept the last good plan" in plan.detail
    # the nodes keep the last good configuration: no pruning to the floor to chase an impossible limit
    assert (plan.split_point, plan.rho_device, plan.rho_server) == (good.split_point, good.rho_device, good.rho_server)
    assert plan.rho_device > SYSTEM["distortion"]["min_ratio"]
    with pytest.raises(ValueError, match="qos"):
        controller.set_qos(-1, 1)


def test_a_restarted_planner_moves_past_the_nodes_epoch(minilm_config):
    controller, plans, _ = make(minilm_config, min_interval_s=0)
    controller.adopt_epoch(1, controller.planner_id)  # its own plan: nothing to do
    assert len(plans) == 1
    with pytest.raises(ValueError, match="known_epoch"):  # an epoch of its own it never issued
        controller.adopt_epoch(7, controller.planner_id)
    controller.adopt_epoch(7, "another-planner")
    assert plans[-1].reason == "resync" and plans[-1].epoch == 8


def test_measured_energy_teaches_the_power_coefficient(minilm_config):
    """Energy from a meter (rapl/nvml), not the model, gives kappa = E / (eta (W / C) f^2); a lasting
    change re-plans as power_drift."""
    system = dict(SYSTEM, device=dict(SYSTEM["device"], pue=1.25))  # a PUE that is not 1 must be divided out
    controller, plans, profile = make(minilm_config, system, min_interval_s=0, hysteresis=3)
    pue = controller.system.device.pue
    warmup = controller.settings.warmup
    for i in range(warmup + 3):  # what the system file says for a while, then four times that
        kappa = controller.system.device.power_coeff * (1 if i < warmup else 4)
        sample = device_sample(controller, profile, 8.0, 1e-10)
        plan = controller.plan
        device_seg, _ = profile.segments(plan.split_point)
        sample.energy_j = pue * kappa * (plan.rho_device * device_seg.flops / 8.0) * plan.f_device_hz ** 2
        sample.energy_source = "rapl"
        controller.observe_device(sample)
    assert [p.reason for p in plans] == ["start", "power_drift"]
    assert controller.estimates().device_power_coeff == pytest.approx(kappa, rel=1e-6, abs=0)
