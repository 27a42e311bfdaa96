"""The planner's building blocks: formulas, distortion models and fits, the fixed-ratio frontier,
strict scenario parsing, and the model profile (FLOPs, parameters, weight statistics)."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest

from coinfer.errors import UsageError
from coinfer.planner.costs import Point, Scaled, Shape, evaluate
from coinfer.planner.distortion import fit_convex_decreasing, measure_l1_curve, phi
from coinfer.planner.frontier import Frontier
from coinfer.planner.scenario import parse_scenario
from coinfer.system import parse_system

from scenarios import BASE, make


# ---------------------------------------------------------------------------- formulas

def test_evaluate_matches_hand_computation():
    scn = parse_scenario(BASE)
    x = Point(rho_d=0.5, rho_s=0.8, f_d=1e9, f_s=1e9, p=0.1)
    c = evaluate(scn, x)
    # by hand from spec section 2
    assert c.t_d == pytest.approx(0.5 * 7.26e9 / (8 * 1e9))
    assert c.e_d == pytest.approx(1.0 * 1e-28 * (0.5 * 7.26e9 / 8) * 1e18)
    rate = 1e7 * math.log2(1 + 1e-9 * 0.1 / (1e7 * 3.98e-21))
    assert c.t_u == pytest.approx(1572864 / rate)
    assert c.e_u == pytest.approx(0.1 * 1572864 / rate)
    assert c.t_s == pytest.approx(0.8 * 1.45e10 / (1024 * 1e9))
    assert c.e_s == pytest.approx(1.5 * 5e-27 * (0.8 * 1.45e10 / 1024) * 1e18)
    assert c.delay == pytest.approx(c.t_d + c.t_u + c.t_s)


def test_scaled_power_inverts_the_rate():
    scn = parse_scenario(BASE)
    sc = Scaled.of(scn)
    for u in (1.0, 1.7, 12.0):
        p = sc.power_for_upload_ratio(u, 0.2)
        t_u = evaluate(scn, Point(1, 1, 1e9, 1e9, p)).t_u
        assert t_u == pytest.approx(u * sc.c_u, rel=1e-9)


# ---------------------------------------------------------------------------- distortion

@pytest.mark.parametrize("model", ["rd_bound", "magnitude", "random"])
def test_phi_is_convex_and_decreasing(model):
    r = np.linspace(0.01, 1, 200)
    y = np.array([phi(model, float(x), 8) for x in r])
    assert np.all(np.diff(y) < 0)
    assert np.all(np.diff(y, 2) >= -1e-12)


def test_magnitude_phi_is_the_laplace_mass_removed():
    """Keeping the largest rho fraction of Laplace(b) samples removes b (1 - rho + rho ln rho) per weight."""
    w = np.random.default_rng(0).laplace(scale=0.02, size=400_000)
    a = np.sort(np.abs(w))
    for rho in (0.2, 0.5, 0.9):
        removed = a[: int(round((1 - rho) * a.size))].sum()
        assert removed / (a.size * 0.02) == pytest.approx(phi("magnitude", rho, 16), rel=0.02)


def test_fit_interpolates_convex_data_and_minorises_others():
    r = np.linspace(0, 1, 11)
    y = (1 - r) ** 2
    pc = fit_convex_decreasing(r, y)
    assert all(b <= 0 for b in pc.beta)
    for x, v in zip(r, y):
        assert pc(x) == pytest.approx(v, abs=1e-12)
    bumpy = y + np.where(np.arange(11) % 2 == 1, 0.05, 0.0)   # not convex: odd points lifted
    pc2 = fit_convex_decreasing(r, bumpy)
    vals = np.array([pc2(x) for x in r])
    assert np.all(vals <= bumpy + 1e-12)
    assert np.all(np.diff(vals, 2) >= -1e-12) and np.all(np.diff(vals) <= 1e-12)


def test_measured_curve_of_weights():
    import torch

    g = torch.Generator().manual_seed(1)
    tensors = [torch.randn(64, 32, generator=g), torch.randn(16, 16, generator=g), torch.ones(8)]
    ratios = [0.0, 0.25, 0.5, 1.0]
    total, removed, count = measure_l1_curve(tensors, ratios)
    assert count == 64 * 32 + 16 * 16   # the 1-D tensor is not prunable
    assert total == pytest.approx(float(tensors[0].double().abs().sum() + tensors[1].double().abs().sum()),
                                  rel=1e-12)
    assert removed[0] == pytest.approx(total) and removed[-1] == 0.0
    # per tensor: keeping half removes each tensor's smaller half
    expect = sum(float(t.double().abs().flatten().sort().values[: t.numel() // 2].sum()) for t in tensors[:2])
    assert removed[2] == pytest.approx(expect, rel=1e-9)


# ---------------------------------------------------------------------------- frontier

def test_frontier_least_energy_is_least():
    scn = parse_scenario(BASE)
    fr = Frontier(Scaled.of(scn), Shape.of(scn), 0.6, 0.9)
    e, taus = fr.min_energy_given_delay(0.35)
    assert sum(taus) == pytest.approx(0.35, rel=1e-9)
    rng = np.random.default_rng(0)
    sc = fr.sc

    def energy(t):
        return (sc.eh_d * 0.6 ** 3 * sc.c_d ** 2 / t[0] ** 2 + fr.upload_energy(t[1] / sc.c_u)
                + sc.eh_s * 0.9 ** 3 * sc.c_s ** 2 / t[2] ** 2)

    assert energy(taus) == pytest.approx(e, rel=1e-9)
    mins = (0.6 * sc.c_d, sc.c_u, 0.9 * sc.c_s)
    for _ in range(200):   # any other split of the same total time costs at least as much
        shift = rng.normal(scale=1e-3, size=3)
        shift -= shift.mean()
        t = np.array(taus) + shift
        if np.all(t >= mins):
            assert energy(t) >= e * (1 - 1e-9)


def test_frontier_least_delay_given_energy_is_the_inverse():
    scn = parse_scenario(BASE)
    fr = Frontier(Scaled.of(scn), Shape.of(scn), 0.6, 0.9)
    e, _ = fr.min_energy_given_delay(0.3)
    t, _ = fr.min_delay_given_energy(e)
    assert t == pytest.approx(0.3, rel=1e-6)
    assert fr.min_delay_given_energy(fr.energy_floor() * 0.99) is None
    assert fr.min_energy_given_delay(fr.min_delay() * 0.99) is None


# ---------------------------------------------------------------------------- parsing

@pytest.mark.parametrize("change, key", [
    (lambda d: d.update(extra=1), "extra"),
    (lambda d: d["device"].update(max_freq=1), "device.max_freq"),
    (lambda d: d["qos"].pop("max_delay_s"), "qos.max_delay_s"),
    (lambda d: d["segments"]["server"].pop("flops"), "segments.server.flops"),
    (lambda d: d["channel"].update(gain=-1), "channel.gain"),
    (lambda d: d["channel"].update(gain="loud"), "channel.gain"),
    (lambda d: d["distortion"].update(model="l2"), "distortion.model"),
    (lambda d: d["distortion"].update(min_ratio=1.5), "distortion.min_ratio"),
    (lambda d: d.update(scheme="on_device"), "scheme"),
    (lambda d: d["distortion"].update(model="measured"), "segments.device.measured"),
])
def test_bad_scenarios_name_the_key(change, key):
    d = copy.deepcopy(BASE)
    change(d)
    with pytest.raises(UsageError) as err:
        parse_scenario(d)
    assert key in str(err.value)


def test_numbers_as_strings_are_accepted():
    """YAML 1.1 reads 1e-9 (no dot) as a string."""
    d = make(**{"channel.gain": "1e-9"})
    assert parse_scenario(d).system.channel.gain == 1e-9


def test_system_accepts_split_schemes():
    sysd = {k: v for k, v in BASE.items() if k not in ("segments", "embedding_bits")}
    assert parse_system(dict(sysd, scheme="on_server")).scheme == "on_server"
    with pytest.raises(UsageError, match="segments"):
        parse_system(dict(sysd, segments={}))


# ---------------------------------------------------------------------------- profile

def _bert_base_config():
    from transformers import BertConfig
    return BertConfig(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                      intermediate_size=3072, max_position_embeddings=512)


def test_bert_base_matches_the_paper():
    from coinfer.planner.profile import profile_from_config

    prof = profile_from_config(_bert_base_config(), "bert", "bert-base", batch=1, seq_len=128)
    # the paper: 109.48 M parameters (BertModel, pooler included), 21.77 GFLOPs per inference
    assert round((prof.params_total + prof.pooler_params) / 1e6, 2) == 109.48
    linear = sum(prof.block_linear_flops)
    assert linear == pytest.approx(21.77e9, rel=0.005)                 # what the paper counts
    assert prof.total_flops == pytest.approx(21.77e9, rel=0.03)        # plus attention products
    assert prof.total_flops > linear


def test_bart_base_parameters():
    from transformers import BartConfig

    from coinfer.planner.profile import profile_from_config

    cfg = BartConfig(vocab_size=50265, d_model=768, encoder_layers=6, decoder_layers=6,
                     encoder_attention_heads=12, decoder_attention_heads=12, encoder_ffn_dim=3072,
                     decoder_ffn_dim=3072, max_position_embeddings=1024)
    prof = profile_from_config(cfg, "bart", "bart-base")
    assert round(prof.params_total / 1e6, 2) == 139.42   # the paper's BART-base
    assert prof.head_flops > 0 and prof.num_blocks == 6


def test_flops_scale_with_batch_and_sequence():
    from coinfer.planner.profile import profile_from_config

    cfg = _bert_base_config()
    one = profile_from_config(cfg, "bert", "b", 1, 128)
    assert profile_from_config(cfg, "bert", "b", 4, 128).total_flops == pytest.approx(4 * one.total_flops)
    two = profile_from_config(cfg, "bert", "b", 1, 256)
    assert sum(two.block_linear_flops) == pytest.approx(2 * sum(one.block_linear_flops))
    assert sum(two.block_attention_flops) == pytest.approx(4 * sum(one.block_attention_flops))


@pytest.fixture(scope="module")
def tiny_profiles():
    from coinfer.models import resolve_model
    from coinfer.planner.profile import profile_model

    return {name: (src := resolve_model(name), profile_model(src, batch=2, seq_len=16, measure_curves=True))
            for name in ("random:bert-tiny", "random:bart-tiny")}


@pytest.mark.parametrize("name", ["random:bert-tiny", "random:bart-tiny"])
def test_profile_from_weights_agrees_with_config(tiny_profiles, name):
    from coinfer.planner.profile import profile_from_config

    src, prof = tiny_profiles[name]
    cfg = profile_from_config(src.config, src.family, src.name, 2, 16)
    assert prof.weights == "loaded"
    assert prof.block_params == cfg.block_params and prof.block_prunable == cfg.block_prunable
    assert prof.head_params == cfg.head_params and prof.params_total == cfg.params_total
    # random init is N(0, std^2): mean |w| = std sqrt(2/pi)
    std = float(getattr(src.config, "initializer_range", getattr(src.config, "init_std", 0.02)))
    for l1, n in zip(prof.block_l1, prof.block_prunable):
        assert l1 / n == pytest.approx(std * math.sqrt(2 / math.pi), rel=0.03)


@pytest.mark.parametrize("name", ["random:bert-tiny", "random:bart-tiny"])
def test_profile_segments_and_sizes(tiny_profiles, name):
    src, prof = tiny_profiles[name]
    L, h = prof.num_blocks, prof.hidden_size
    for k in range(L + 1):
        dev, srv = prof.segments(k)
        assert dev.flops + srv.flops == pytest.approx(prof.total_flops)
        assert dev.params * dev.weight_scale + srv.params * srv.weight_scale == pytest.approx(
            sum(prof.block_l1) + prof.head_l1)
        # the measured curve at ratio 0 removes the whole L1 mass, at 1 nothing
        for seg in (dev, srv):
            if seg.params:
                assert seg.curve.l1_removed[0] == pytest.approx(seg.params * seg.weight_scale)
                assert seg.curve.l1_removed[-1] == 0
    assert prof.sent_bits(0) == 2 * 16 * 64                       # int64 token ids
    assert prof.sent_bits(1, "fp32") == 2 * 16 * h * 32
    assert prof.sent_bits(1, "int8") == 2 * 16 * (h * 8 + 32)      # plus one fp32 scale per token
    assert prof.sent_bits(1, "fp16") == prof.sent_bits(1, "bf16") == 2 * 16 * h * 16
    assert prof.sent_bits(1, "int4") < prof.sent_bits(1, "int8")
    assert prof.sent_bits(L) == (0 if src.family == "bert" else prof.sent_bits(1))
    assert prof.segments(0)[0].flops == 0
    with pytest.raises(UsageError):
        prof.segments(L + 1)


def test_measured_model_plans_from_real_curves(tiny_profiles):
    from coinfer.planner.sweep import plan_splits
    from coinfer.system import DEFAULT_SYSTEM

    _, prof = tiny_profiles["random:bert-tiny"]
    system = copy.deepcopy(DEFAULT_SYSTEM)
    system["distortion"]["model"] = "measured"
    # at k = 2: upload 0.53 ms + device 0.28 ms at full speed, so 0.7 ms needs pruning
    system["qos"] = {"max_delay_s": 7e-4, "max_energy_j": 1e-3}
    res = plan_splits(prof, system, split=2)
    assert res.feasible and res.plan.distortion > 0 and res.plan.rho_device < 1
    # measured distortion = the L1 mass the runtime's per-tensor magnitude pruning removes at these
    # ratios (the removed mass is convex in rho, so the fitted pieces interpolate the measurements)
    dev, srv = prof.segments(res.split)
    removed = sum(float(np.interp(rho, seg.curve.ratios, seg.curve.l1_removed))
                  for seg, rho in ((dev, res.plan.rho_device), (srv, res.plan.rho_server)) if seg.flops > 0)
    assert res.plan.distortion == pytest.approx(removed, rel=1e-6)
