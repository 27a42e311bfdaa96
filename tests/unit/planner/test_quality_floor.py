"""The quality floor protects answers: plans the controller pushes for all-MiniLM-L6-v2, run through the
real pruned halves (DevicePart / ServerPart pruned by Pruner.for_part, as the nodes build them), on
held-out sentences that are not in the calibration set."""

import pytest
import torch

from coinfer.planner.calibration import CALIBRATION_SENTENCES
from coinfer.planner.controller import Controller, ControllerSettings
from coinfer.planner.machine import machine_system
from coinfer.planner.profile import profile_from_config
from coinfer.planner.quality import QualityCheck
from coinfer.pruning import Pruner
from coinfer.samples import SENTENCES as HELD_OUT
from coinfer.split import DevicePart, ServerPart
from coinfer.system import parse_system

# The machine's numbers fixed, so the plans do not depend on how fast this CI machine is today.
SYSTEM = machine_system(flops_per_second=4e10, max_freq_hz=2e9)


@pytest.fixture(scope="module")
def check(minilm):
    return QualityCheck(minilm)


def controller_for(minilm, quality, check=None, **settings) -> Controller:
    profile = profile_from_config(minilm.config, minilm.family, minilm.name, 1, 32)
    plans = []
    c = Controller(parse_system(SYSTEM), profile, ControllerSettings(seq_len=32, **settings), plans.append,
                   quality=quality, quality_check=check)
    c.replan("start")
    return c


def answers(minilm, plan) -> torch.Tensor:
    ids, mask = minilm.tokenize(list(HELD_OUT))
    device, server = DevicePart(minilm, plan.split_point), ServerPart(minilm, plan.split_point)
    if plan.split_point > 0:
        Pruner.for_part(device, minilm, plan.rho_device, plan.prune_method)
    Pruner.for_part(server, minilm, plan.rho_server, plan.prune_method)
    hidden = device(ids, mask)
    return hidden if device.runs_alone else server(hidden, mask)


def cosines(minilm, plan, reference) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(answers(minilm, plan), reference, dim=1)


def test_held_out_sentences_are_not_calibration_sentences():
    assert not set(HELD_OUT) & set(CALIBRATION_SENTENCES)


def test_the_floor_is_what_protects_the_answers(minilm, minilm_quality, check):
    unpruned = answers(minilm, replace_plan(split_point=3, rho_device=1.0, rho_server=1.0))
    free = controller_for(minilm, minilm_quality, check, min_quality=0.0)
    start = free.plan
    assert start.feasible and start.rho_device == start.rho_server == 1.0 and start.binding == "none"
    assert start.predicted_quality == pytest.approx(1.0) and start.quality_metric == "cosine"
    # every clock and the power are held (no node said it can set them): f = F everywhere
    assert start.f_device_hz == start.device_max_freq_hz and "device clock" in start.detail
    unpruned_delay = start.predicted_delay_s

    # a delay limit tight enough that meeting it costs more than the floor allows
    chosen = None
    for factor in (0.8, 0.7, 0.6, 0.5, 0.45, 0.4):
        limit = unpruned_delay * factor / (1 - free.settings.delay_margin)
        plan = free.set_qos(limit, 10.0)
        if plan.feasible and plan.predicted_quality < 0.93:
            chosen = limit
            break
        free._operator_tokens = free.settings.operator_burst  # these are the test's plans, not an operator's
    assert chosen is not None, "no delay limit forced pruning below 0.93"
    assert plan.binding == "delay" and min(plan.rho_device, plan.rho_server) < 1
    measured = cosines(minilm, plan, unpruned)
    assert measured.min() < 0.95, "without the floor this limit must give answers below it"
    # the reported quality (the worst calibration answer, measured) says how bad it is
    assert plan.predicted_quality < 0.95 and abs(measured.min().item() - plan.predicted_quality) < 0.1

    floored = controller_for(minilm, minilm_quality, check, min_quality=0.95)
    good = floored.plan
    plan = floored.set_qos(chosen, 10.0)
    assert not plan.feasible and plan.binding == "quality" and "quality floor" in plan.detail
    assert (plan.split_point, plan.rho_device, plan.rho_server) == (good.split_point, good.rho_device, good.rho_server)
    assert cosines(minilm, plan, unpruned).min() >= 0.95


def test_the_tightest_limit_met_within_the_floor_keeps_every_answer_above_it(minilm, minilm_quality, check):
    c = controller_for(minilm, minilm_quality, check, min_quality=0.95)
    unpruned = answers(minilm, replace_plan(split_point=3, rho_device=1.0, rho_server=1.0))
    # structured pruning of MiniLM buys little time within 0.95 (a few per cent of the delay): tighten
    # the limit step by step and keep the last plan that meets it within the floor
    pruned = None
    for factor in (0.99, 0.98, 0.97, 0.96, 0.95, 0.94, 0.93, 0.92):
        c._operator_tokens = c.settings.operator_burst  # the test's plans, not an operator's
        plan = c.set_qos(c.plans[1].predicted_delay_s * factor / (1 - c.settings.delay_margin), 10.0)
        if not plan.feasible:
            break
        assert plan.predicted_quality >= 0.95
        if min(plan.rho_device, plan.rho_server) < 1:
            pruned = plan
    assert pruned is not None, "no limit made the planner prune within the floor"
    assert pruned.prune_method in ("structured", "magnitude")
    assert cosines(minilm, pruned, unpruned).min() >= 0.95
    assert not plan.feasible and plan.binding == "quality"   # and one step further, the floor held


def test_the_method_is_decided_by_measured_speed(minilm, minilm_quality):
    """Magnitude pruning zeroes weights of dense matrices: it saves no time, so to meet a delay limit
    the planner must pick the method that does (structured), measured, not assumed."""
    assert minilm_quality.speed["structured"] > minilm_quality.speed["magnitude"] + 0.2
    c = controller_for(minilm, minilm_quality, min_quality=0.0)
    plan = c.set_qos(c.plan.predicted_delay_s * 0.7 / (1 - c.settings.delay_margin), 10.0)
    assert plan.feasible and plan.prune_method == "structured"
    fixed = controller_for(minilm, minilm_quality, min_quality=0.0, prune_method="magnitude")
    plan = fixed.set_qos(fixed.plan.predicted_delay_s * 0.7 / (1 - fixed.settings.delay_margin), 10.0)
    assert plan.prune_method == "magnitude" and not plan.feasible   # magnitude cannot buy the time


def replace_plan(**fields):
    from coinfer.protos import planner_pb2 as ppb

    return ppb.Plan(prune_method="structured", **fields)
