"""The planner believes nothing it cannot check (issue 15, findings 2, 3, 5, 8 and 9): claimed epochs
are bounded, telemetry has physical bounds and outliers move no estimate, a fresh planner does not act
on a handful of samples, SetQoS validates before it stores, and resyncs and operator plans are rate
limited."""
import math
import time

import pytest

from coinfer.planner import bounds
from coinfer.planner.bounds import MAX_EPOCH, MAX_EPOCH_JUMP
from coinfer.planner.controller import Controller, ControllerSettings, RateLimited
from coinfer.planner.profile import profile_from_config
from coinfer.protos import planner_pb2 as ppb
from coinfer.system import DEFAULT_SYSTEM, parse_system

from scenarios import CONTROLLER_SPLIT as SPLIT, CONTROLLER_SYSTEM as SYSTEM, make_controller
C_DEVICE, C_SERVER, GAIN = 8.0, 64.0, 1e-10  # what SYSTEM says, and what the honest samples measure


@pytest.fixture(scope="module")
def minilm_config(minilm):
    return minilm.config


make = make_controller  # the name the tests below use


def device_sample(controller, profile, c_true, gain_true):
    """What an honest device measures under the current plan (as in test_controller)."""
    plan = controller.plan
    device_seg, _ = profile.segments(plan.split_point)
    compute_s = plan.rho_device * device_seg.flops / (c_true * plan.f_device_hz)
    ch = controller.system.channel
    rate = ch.bandwidth_hz * math.log2(1 + gain_true * plan.tx_power_w / (ch.bandwidth_hz * ch.noise_psd_w_per_hz))
    sent = int(profile.sent_bits(plan.split_point) / 8)
    send_s = 8 * sent / rate
    return ppb.DeviceSample(plan_epoch=plan.epoch, batch=4, seq_len=32, compute_s=compute_s, bytes_sent=sent,
                            send_s=send_s, freq_hz=plan.f_device_hz, tx_power_w=plan.tx_power_w,
                            end_to_end_s=compute_s + send_s + 0.01, server_s=0.0, energy_source="model")


def server_sample(controller, profile, c_true=C_SERVER, **override) -> ppb.ServerSample:
    """What an honest server measures under the current plan if its FLOPs per cycle are c_true."""
    plan = controller.plan
    _, server_seg = profile.segments(plan.split_point)
    compute_s = plan.rho_server * server_seg.flops / (c_true * plan.f_server_hz)
    fields = dict(plan_epoch=plan.epoch, batch=4, seq_len=32, compute_s=compute_s, batch_size=1, batch_rows=4,
                  freq_hz=plan.f_server_hz, queue_s=0.001, energy_source="model")
    return ppb.ServerSample(**{**fields, **override})


def honest(controller, profile, n, device=True, server=True):
    for _ in range(n):
        if device:
            controller.observe_device(device_sample(controller, profile, C_DEVICE, GAIN))
        if server:
            controller.observe_server(server_sample(controller, profile))


def beliefs(controller):
    """Every estimate (not the sample counts)."""
    e = controller.estimates().__dict__
    return {k: v for k, v in e.items() if not k.endswith("_samples")}


def assert_same_beliefs(controller, before):
    """As `before`, up to rounding (honest samples identical to earlier ones may refit the same)."""
    for key, value in beliefs(controller).items():
        if before[key] is None:
            assert value is None, key
        else:
            assert value == pytest.approx(before[key], rel=1e-6, abs=1e-9), key


# --- finding 2: epochs are the planner's own -------------------------------------------------------

@pytest.mark.parametrize("claim", [2 ** 64 - 2, 2 ** 64 - 1, MAX_EPOCH + 1, 2 ** 62])
def test_a_claim_within_reach_of_overflow_is_refused_and_moves_nothing(minilm_config, claim):
    controller, plans, _ = make(minilm_config, min_interval_s=0)
    with pytest.raises(ValueError, match="known_epoch"):
        controller.adopt_epoch(claim, "0123456789ab")
    assert len(plans) == 1
    assert controller.replan("operator_request").epoch == 2


def test_a_foreign_claim_moves_the_epoch_at_most_max_epoch_jump(minilm_config):
    controller, plans, _ = make(minilm_config, min_interval_s=0)
    controller.adopt_epoch(MAX_EPOCH, "0123456789ab")  # allowed, but not believed all the way
    assert plans[-1].reason == "resync"
    assert plans[-1].epoch == 1 + MAX_EPOCH_JUMP + 1
    # however often it is repeated, the epochs stay far from MAX_EPOCH, let alone 2^64
    assert controller.replan("operator_request").epoch < MAX_EPOCH // 2 ** 30


def test_a_restarted_planner_continues_just_past_its_nodes(minilm_config):
    controller, plans, _ = make(minilm_config, min_interval_s=0)
    controller.adopt_epoch(123_456, "previous-planner")
    assert plans[-1].reason == "resync" and plans[-1].epoch == 123_457
    controller.adopt_epoch(123_457, controller.planner_id)  # its own epoch: nothing to do
    controller.adopt_epoch(123_456, "previous-planner")     # the other half of the same node pair
    assert len(plans) == 2


def test_an_epoch_of_its_own_it_never_issued_is_refused(minilm_config):
    controller, plans, _ = make(minilm_config, min_interval_s=0)
    with pytest.raises(ValueError, match="known_epoch"):
        controller.adopt_epoch(2 ** 40, controller.planner_id)
    with pytest.raises(ValueError, match="known_planner_id"):
        controller.adopt_epoch(5, "x" * 1000)
    assert len(plans) == 1


# --- finding 5: resyncs and plans are rate limited, whatever their reason ---------------------------

def test_min_interval_applies_to_resync_and_a_deferred_resync_is_not_lost(minilm_config):
    controller, plans, _ = make(minilm_config, min_interval_s=0.5, resync_interval_s=0)
    controller.adopt_epoch(40, "previous-planner")  # right after the start plan: inside the interval
    assert len(plans) == 1
    time.sleep(1.0)
    assert plans[-1].reason == "resync" and plans[-1].epoch == 41


def test_a_flood_of_forged_resyncs_is_rate_limited(minilm_config):
    controller, plans, _ = make(minilm_config, min_interval_s=0, resync_interval_s=0.5)
    started = time.monotonic()
    claim = controller.plan.epoch
    while time.monotonic() - started < 2.0:  # ~20 forged WatchPlans a second, each one epoch ahead
        claim = controller.plan.epoch + 1
        controller.adopt_epoch(claim, "forged-planner")
        time.sleep(0.05)
    resyncs = [p for p in plans if p.reason == "resync"]
    assert 2 <= len(resyncs) <= 2.0 / 0.5 + 1  # not one per claim (~40)
    time.sleep(0.7)
    assert controller.plan.epoch > claim  # the last claim was deferred, not lost


def test_operator_plans_skip_the_interval_but_are_bounded(minilm_config):
    controller, plans, _ = make(minilm_config, min_interval_s=60, operator_burst=3, operator_per_s=2.0)
    for _ in range(3):
        controller.replan("operator_request")  # inside min_interval_s: an operator's plans are not deferred
    assert len(plans) == 4
    qos = controller.qos
    with pytest.raises(RateLimited, match="operator"):
        controller.replan("operator_request")
    with pytest.raises(RateLimited):
        controller.set_qos(0.4, 4.0)
    assert controller.qos == qos and len(plans) == 4  # nothing stored
    time.sleep(0.6)
    assert controller.set_qos(0.4, 4.0).reason == "qos_change"


# --- findings 3 and 9: telemetry has physical bounds -----------------------------------------------

def test_every_sample_field_has_bounds():
    for message in (ppb.DeviceSample, ppb.ServerSample):
        for field in message.DESCRIPTOR.fields:
            assert field.name in bounds.SAMPLE_BOUNDS or field.name in bounds.STRING_BOUNDS, field.name


def _violations(message):
    """(field, a value no honest node sends) for every bounded field of the message."""
    out = []
    for field in message.DESCRIPTOR.fields:
        name = field.name
        if name in bounds.STRING_BOUNDS:
            out.append((name, "x" * (bounds.STRING_BOUNDS[name] + 1)))
            continue
        low, high = bounds.SAMPLE_BOUNDS[name]
        if field.type in (field.TYPE_DOUBLE, field.TYPE_FLOAT):
            out += [(name, math.inf), (name, math.nan), (name, -1e-3), (name, high * 1.01)]
        elif high < 2 ** 32 - 1 or (field.type == field.TYPE_UINT64 and high < 2 ** 64 - 1):
            out.append((name, high + 1))
    return out


@pytest.mark.parametrize("field, value", _violations(ppb.DeviceSample))
def test_a_device_sample_out_of_bounds_is_refused_naming_the_field(minilm_config, field, value):
    controller, plans, profile = make(minilm_config, min_interval_s=0)
    honest(controller, profile, 10)
    before, counts = beliefs(controller), dict(controller.counts)
    sample = device_sample(controller, profile, C_DEVICE, GAIN)
    setattr(sample, field, value)
    with pytest.raises(ValueError, match=rf"^{field}: "):
        controller.observe_device(sample)
    assert beliefs(controller) == before and controller.counts == counts and len(plans) == 1


@pytest.mark.parametrize("field, value", _violations(ppb.ServerSample) + [("batch", 5), ("batch_size", 5)])
def test_a_server_sample_out_of_bounds_is_refused_naming_the_field(minilm_config, field, value):
    controller, plans, profile = make(minilm_config, min_interval_s=0)
    honest(controller, profile, 10)
    before, counts = beliefs(controller), dict(controller.counts)
    sample = server_sample(controller, profile)
    setattr(sample, field, value)  # batch 5 / batch_size 5 of batch_rows 4: not among those computed
    with pytest.raises(ValueError, match=rf"^{field}: "):
        controller.observe_server(sample)
    assert beliefs(controller) == before and controller.counts == counts and len(plans) == 1


def test_the_message_says_what_is_allowed():
    with pytest.raises(ValueError, match=r"^compute_s: must be finite and in \[0, 3600\], got inf$"):
        bounds.check_sample(ppb.ServerSample(compute_s=math.inf))


def test_one_non_finite_value_does_not_freeze_the_compute_estimate(minilm_config):
    """Finding 9: the refused sample never reached the fit window, so a real change right after it is
    learnt as before (it used to poison the next 29 fits)."""
    controller, plans, profile = make(minilm_config, min_interval_s=0)
    honest(controller, profile, 10, device=False)
    with pytest.raises(ValueError, match="compute_s"):
        controller.observe_server(server_sample(controller, profile, compute_s=math.inf))
    for _ in range(6):  # the server really is twice as slow now
        controller.observe_server(server_sample(controller, profile, c_true=C_SERVER / 2))
    assert plans[-1].reason == "compute_drift"
    assert controller.estimates().server_flops_per_cycle == pytest.approx(C_SERVER / 2, rel=0.1)


# --- findings 3 and 9: one bad sample in 30 moves nothing -----------------------------------------

def _outliers(controller, profile):
    """Samples inside every bound, but far from what 30 honest ones said."""
    plan = controller.plan
    d = device_sample(controller, profile, C_DEVICE, GAIN)
    yield "device compute", "device", ppb.DeviceSample(**{**_fields(d), "compute_s": 1000.0})
    yield "device compute (too fast)", "device", ppb.DeviceSample(**{**_fields(d), "compute_s": 1e-6})
    yield "uplink", "device", ppb.DeviceSample(**{**_fields(d), "send_s": d.send_s * 20, "end_to_end_s": 0})
    yield "overhead", "device", ppb.DeviceSample(**{**_fields(d), "end_to_end_s": 3000.0})
    yield "device energy", "device", ppb.DeviceSample(**{**_fields(d), "energy_source": "rapl", "energy_j": 1e5})
    yield "server compute", "server", server_sample(controller, profile, compute_s=1000.0)
    yield "server energy", "server", server_sample(controller, profile, energy_source="nvml", energy_j=1e5)
    assert plan.epoch == controller.plan.epoch


def _fields(message):
    return {f.name: getattr(message, f.name) for f in message.DESCRIPTOR.fields}


def _metered(controller, profile):
    """30 honest samples, energies metered (rapl/nvml) at the system file's power coefficients."""
    plan = controller.plan
    device_seg, server_seg = profile.segments(plan.split_point)
    sys_ = controller.system
    for _ in range(30):
        d = device_sample(controller, profile, C_DEVICE, GAIN)
        d.energy_source = "rapl"
        d.energy_j = sys_.device.pue * sys_.device.power_coeff * plan.rho_device * device_seg.flops / C_DEVICE \
            * plan.f_device_hz ** 2
        controller.observe_device(d)
        s = server_sample(controller, profile, energy_source="nvml")
        s.energy_j = sys_.server.pue * sys_.server.power_coeff * plan.rho_server * server_seg.flops / C_SERVER \
            * plan.f_server_hz ** 2
        controller.observe_server(s)


@pytest.mark.parametrize("which", ["device compute", "device compute (too fast)", "uplink", "overhead",
                                   "device energy", "server compute", "server energy"])
def test_one_outlier_among_30_honest_samples_changes_no_estimate_and_no_plan(minilm_config, which):
    controller, plans, profile = make(minilm_config, min_interval_s=0)
    _metered(controller, profile)
    assert len(plans) == 1
    before = beliefs(controller)
    assert all(v is not None for v in before.values()), before  # every estimate is in use
    _, kind, sample = next(o for o in _outliers(controller, profile) if o[0] == which)
    (controller.observe_device if kind == "device" else controller.observe_server)(sample)
    assert beliefs(controller) == before
    _metered(controller, profile)  # and honest samples after it: still nothing to re-plan
    assert len(plans) == 1
    assert_same_beliefs(controller, before)


def test_forged_server_samples_between_honest_ones_move_nothing(minilm_config):
    """Finding 3: 30 ServerSamples claiming compute_s=1000 from a forged node, while the real server
    keeps reporting, push no plan (they pushed an infeasible one with rho 0.05)."""
    controller, plans, profile = make(minilm_config, min_interval_s=0.5)
    honest(controller, profile, 30)
    before = beliefs(controller)
    for i in range(30):  # interleaved with the real server's samples
        controller.observe_server(server_sample(controller, profile, compute_s=1000.0))
        if i % 3 == 2:
            controller.observe_server(server_sample(controller, profile))
    for _ in range(30):  # and as one burst, the real server's next sample after it
        controller.observe_server(server_sample(controller, profile, compute_s=1000.0))
    controller.observe_server(server_sample(controller, profile))
    time.sleep(0.6)  # no deferred plan either
    assert len(plans) == 1 and controller.plan.feasible
    assert_same_beliefs(controller, before)


def test_a_fresh_planner_does_not_act_on_a_handful_of_samples(minilm_config):
    """3 forged samples used to be enough for a fresh planner to re-plan (infeasibly) on them."""
    controller, plans, profile = make(minilm_config, min_interval_s=0)
    for _ in range(controller.settings.warmup - 1):
        controller.observe_server(server_sample(controller, profile, compute_s=1000.0))
    assert len(plans) == 1
    assert controller.estimates().server_flops_per_cycle is None  # not believed yet
    plan = controller.replan("operator_request")  # a plan now is solved with the system file's values
    assert plan.feasible and (plan.rho_server, plan.split_point) == (plans[0].rho_server, plans[0].split_point)


@pytest.mark.parametrize("forged_s", [1000.0, 1e-6])
def test_forged_samples_first_leave_no_trace_once_the_planner_is_warm(minilm_config, forged_s):
    """A fresh planner has nothing to judge its first samples against: it takes them all, then believes
    what most of them agree on."""
    controller, plans, profile = make(minilm_config, min_interval_s=0)
    for _ in range(3):
        controller.observe_server(server_sample(controller, profile, compute_s=forged_s))
    honest(controller, profile, 12, device=False)
    assert len(plans) == 1
    assert controller.estimates().server_flops_per_cycle == pytest.approx(C_SERVER, rel=1e-6)


def test_a_real_step_is_still_followed_once_it_persists(minilm_config):
    controller, plans, profile = make(minilm_config, min_interval_s=0, persist_s=0.3)
    honest(controller, profile, 30)
    assert len(plans) == 1
    started = time.monotonic()
    while len(plans) == 1 and time.monotonic() - started < 5:  # the server is twice as slow from now on
        controller.observe_server(server_sample(controller, profile, c_true=C_SERVER / 2))
        time.sleep(0.1)
    assert plans[-1].reason == "compute_drift"
    assert 0.3 <= time.monotonic() - started < 1.0  # believed once it lasted persist_s, not before


# --- finding 8: SetQoS validates before it stores ---------------------------------------------------

@pytest.mark.parametrize("delay, energy, field", [
    (math.inf, math.inf, "qos.max_delay_s"), (math.nan, 5.0, "qos.max_delay_s"), (1e308, 5.0, "qos.max_delay_s"),
    (1e-300, 5.0, "qos.max_delay_s"), (0.0, 5.0, "qos.max_delay_s"), (-1.0, 5.0, "qos.max_delay_s"),
    (0.5, math.inf, "qos.max_energy_j"), (0.5, 1e308, "qos.max_energy_j"), (0.5, 1e-300, "qos.max_energy_j"),
    (0.5, -2.0, "qos.max_energy_j"),
])
def test_set_qos_refuses_absurd_limits_and_stores_nothing(minilm_config, delay, energy, field):
    controller, plans, _ = make(minilm_config, min_interval_s=0)
    qos = controller.qos
    with pytest.raises(ValueError, match=rf"^{field}: must be finite"):
        controller.set_qos(delay, energy)
    assert controller.qos == qos and len(plans) == 1
    plan = controller.replan("operator_request")  # later re-plans keep working
    assert plan.delay_limit_s == qos.max_delay_s and plan.energy_limit_j == qos.max_energy_j


def test_set_qos_at_its_bounds_is_a_plan():
    bounds.check_qos(bounds.MAX_DELAY_S, bounds.MAX_QOS_ENERGY_J)
    bounds.check_qos(bounds.MIN_QOS, bounds.MIN_QOS)


@pytest.mark.parametrize("knobs, field", [
    (ppb.Knobs(clock="x" * 17), "knobs.clock"),
    (ppb.Knobs(clock_reason="r" * 201), "knobs.clock_reason"),
    (ppb.Knobs(clock="cpufreq", max_freq_hz=math.inf), "knobs.max_freq_hz"),
    (ppb.Knobs(clock="cpufreq", max_freq_hz=-1.0), "knobs.max_freq_hz"),
    (ppb.Knobs(clock="cpufreq", min_freq_hz=3e9, max_freq_hz=2e9), "knobs.min_freq_hz"),
    (ppb.Knobs(tx_power="emulator", max_tx_power_w=1e4), "knobs.max_tx_power_w"),
])
def test_knobs_a_node_reports_are_checked_and_a_refused_one_changes_nothing(minilm_config, knobs, field):
    controller, plans, _ = make_controller(minilm_config, knobs=None)
    before = len(plans)
    with pytest.raises(ValueError, match=field):
        controller.set_knobs("device", knobs)
    assert controller.knobs["device"] is None and len(plans) == before
    assert controller.held().freq_d and controller.held().power     # nothing reported: nothing settable


def test_a_node_that_can_set_its_clock_replans_and_a_fixed_one_is_only_recorded(minilm_config):
    controller, plans, _ = make_controller(minilm_config, knobs=None)
    before = len(plans)
    assert controller.set_knobs("device", ppb.Knobs(clock="fixed", clock_reason="no cpufreq")) is None
    assert len(plans) == before and controller.plan.device_knobs.clock == "fixed"   # same decision, recorded
    plan = controller.set_knobs("device", ppb.Knobs(clock="emulated", tx_power="emulator"))
    assert plan is not None and plan.reason == "knobs_change" and len(plans) == before + 1
    assert not controller.held().freq_d and not controller.held().power and controller.held().freq_s



@pytest.mark.parametrize("split", ["auto", 3, 6])
def test_held_knobs_are_at_their_maxima_exactly(minilm_config, split):
    """This machine's system (2.1 GHz) as a plain planner sees it: 2.1e9 does not survive a
    time -> frequency round trip (2099999999.9999998), and held must mean equal."""
    from coinfer.planner.machine import machine_system

    system = parse_system(machine_system(flops_per_second=15077318308.430092, max_freq_hz=2.1e9))
    plans = []
    controller = Controller(system, profile_from_config(minilm_config, "bert", "m", 1, 16),
                            ControllerSettings(batch=1, seq_len=16, split=split), plans.append,
                            profile_at=lambda b, s: profile_from_config(minilm_config, "bert", "m", b, s))
    plan = controller.replan("start")
    assert controller.held().freq_d and controller.held().freq_s and controller.held().power
    assert plan.feasible and plan.f_device_hz == plan.device_max_freq_hz == 2.1e9
    assert plan.f_server_hz == plan.server_max_freq_hz == 2.1e9
    assert plan.tx_power_w in (0.0, system.max_tx_power_w)   # no upload, or the held maximum
