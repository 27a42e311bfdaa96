"""The paper's benchmark schemes against the joint design, and the split-point search."""
from __future__ import annotations

import copy

import pytest

from coinfer.planner.scenario import parse_scenario
from coinfer.planner.sweep import plan_splits, solve
from coinfer.system import DEFAULT_SYSTEM, P1_SCHEMES

from scenarios import make

# At k = 4 of BERT-base every scheme can meet these limits (server-only pruning needs > 0.467 s).
ALL_FEASIBLE = [
    {"qos.max_delay_s": 0.5, "qos.max_energy_j": 0.45},
    {"qos.max_delay_s": 0.5, "qos.max_energy_j": 0.45, "distortion.model": "rd_bound"},
    {"qos.max_delay_s": 0.6, "qos.max_energy_j": 0.4, "distortion.model": "random"},
]


@pytest.mark.parametrize("changes", ALL_FEASIBLE)
@pytest.mark.parametrize("scheme", [s for s in P1_SCHEMES if s != "joint"])
def test_each_scheme_is_feasible_and_never_beats_joint(changes, scheme):
    d = make(**changes)
    joint = solve(parse_scenario(d))
    other = solve(parse_scenario(d).with_scheme(scheme))
    assert joint.feasible and other.feasible, other.reason
    # joint's feasible set contains every scheme's; allow the conic solver's accuracy (1e-5)
    assert other.distortion >= joint.distortion * (1 - 1e-5)
    # and the scheme really pins what it says
    s = parse_scenario(d).system
    if scheme == "fixed_power":
        assert other.tx_power_w == pytest.approx(s.max_tx_power_w)
    if scheme == "fixed_frequency":
        assert other.f_device_hz == pytest.approx(s.device.max_freq_hz)
        assert other.f_server_hz == pytest.approx(s.server.max_freq_hz)
    if scheme == "device_only_pruning":
        assert other.rho_server == 1.0
    if scheme == "server_only_pruning":
        assert other.rho_device == 1.0


def test_some_scheme_is_strictly_worse():
    """Otherwise the comparison above would be vacuous."""
    d = make(**ALL_FEASIBLE[0])
    joint = solve(parse_scenario(d)).distortion
    worse = [s for s in P1_SCHEMES if solve(parse_scenario(d).with_scheme(s)).distortion > joint * 1.01]
    assert "fixed_frequency" in worse


def test_server_only_pruning_infeasible_under_tight_delay():
    """Paper Fig. 4: with the full device half, a tight delay limit cannot be met."""
    d = make(**{"qos.max_delay_s": 0.35})
    assert solve(parse_scenario(d)).feasible
    assert not solve(parse_scenario(d).with_scheme("server_only_pruning")).feasible


# ---------------------------------------------------------------------------- split search

@pytest.fixture(scope="module")
def bert_base():
    from transformers import BertConfig

    from coinfer.planner.profile import profile_from_config

    cfg = BertConfig(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                     intermediate_size=3072, max_position_embeddings=512)
    return profile_from_config(cfg, "bert", "bert-base", 1, 128)


def _system(**qos):
    s = copy.deepcopy(DEFAULT_SYSTEM)
    s["qos"].update(qos)
    return s


def test_sweep_table_and_choice(bert_base):
    from coinfer.system import parse_system

    system = parse_system(_system(max_delay_s=0.08, max_energy_j=0.01))
    res = plan_splits(bert_base, system)
    assert [r.split for r in res.table] == list(range(13))
    feasible = [r for r in res.table if r.feasible]
    assert res.feasible and 0 < len(feasible) < 13          # some k infeasible, some not
    assert res.plan.distortion == min(r.distortion for r in feasible)
    assert res.split == res.plan.split
    # each row is the same as solving that split point alone
    for k in (0, 5, 12):
        alone = solve(bert_base.scenario(system, k, "fp32"))
        assert alone.feasible == res.table[k].feasible
        if alone.feasible:
            assert alone.distortion == pytest.approx(res.table[k].distortion, rel=1e-9)


def test_sweep_fixed_split_and_split_schemes(bert_base):
    sysd = _system(max_delay_s=1.0, max_energy_j=0.6)
    joint = plan_splits(bert_base, sysd)
    one = plan_splits(bert_base, sysd, split=4)
    assert [r.split for r in one.table] == [4] and one.split == 4
    dev = plan_splits(bert_base, sysd, scheme="on_device")
    srv = plan_splits(bert_base, sysd, scheme="on_server")
    assert dev.split == 12 and srv.split == 0
    assert dev.plan.distortion >= joint.plan.distortion and srv.plan.distortion >= joint.plan.distortion
    assert dev.plan.tx_power_w == 0 and dev.plan.f_server_hz == 0    # k = L: nothing sent
    assert srv.plan.f_device_hz == 0                                  # k = 0: no device compute


def test_sweep_infeasible_everywhere_reports_least_limits(bert_base):
    res = plan_splits(bert_base, _system(max_delay_s=1e-4))
    assert not res.feasible and res.plan is None and res.reason
    assert res.min_feasible_delay_s == min(r.min_feasible_delay_s for r in res.table)
    relaxed = plan_splits(bert_base, _system(max_delay_s=res.min_feasible_delay_s * (1 + 1e-6)))
    assert relaxed.feasible


def test_sweep_codec_changes_what_is_sent(bert_base):
    sysd = _system(max_delay_s=0.08, max_energy_j=0.01)
    fp32 = plan_splits(bert_base, sysd, split=3)
    int8 = plan_splits(bert_base, sysd, split=3, codec="int8")
    assert int8.sent_bits[3] < fp32.sent_bits[3] / 3
    assert int8.plan.distortion <= fp32.plan.distortion   # less to send leaves more time to compute
