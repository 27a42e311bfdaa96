"""Pieces of the paper reproduction, each on small inputs."""
import math

import pytest
import torch
from torch import nn


def test_theorem_bound_holds_for_random_relu_nets_and_random_pruning():
    """Theorem III.1's bound is a theorem: it must hold for any bias-free ReLU net and any pruning."""
    from coinfer.lab.paper.autoencoder import theorem_bound
    from coinfer.lab.paper.distortion import prune_curve

    gen = torch.Generator().manual_seed(0)
    for depth in (2, 5, 9):
        dims = [12] + [int(torch.randint(4, 20, (1,), generator=gen)) for _ in range(depth)]
        net = nn.Sequential(*[m for a, b in zip(dims, dims[1:]) for m in (nn.Linear(a, b, bias=False), nn.ReLU())])
        x = torch.randn(50, 12, generator=gen)
        x = x / x.norm(dim=1, keepdim=True)
        layers = {n: m for n, m in net.named_modules() if isinstance(m, nn.Linear)}
        for method in ("magnitude", "random"):
            pts = prune_curve(layers, lambda: net(x).detach(), [0.2, 0.5, 0.8, 1.0], method,
                              bound=lambda dense: theorem_bound(layers, dense))
            for p in pts:
                assert p.output_l2 <= p.theorem_bound * (1 + 1e-9) + 1e-12
            assert pts[-1].param_l1 == 0 and pts[-1].output_l2 == 0      # rho = 1 removes nothing
            assert pts[0].param_l1 > pts[1].param_l1 > pts[2].param_l1    # less kept, more removed


def test_prune_curve_restores_the_dense_weights():
    from coinfer.lab.paper.distortion import prune_curve

    net = nn.Sequential(nn.Linear(6, 5, bias=False), nn.ReLU(), nn.Linear(5, 3, bias=False))
    before = [m.weight.detach().clone() for m in net if isinstance(m, nn.Linear)]
    layers = {n: m for n, m in net.named_modules() if isinstance(m, nn.Linear)}
    pts = prune_curve(layers, lambda: net(torch.ones(2, 6)).detach(), [0.3])
    assert pts[0].achieved_ratio == pytest.approx((9 + 4) / (30 + 15))   # round(0.3 n) per layer: 9 of 30, 4 of 15
    assert all(torch.equal(a, m.weight) for a, m in zip(before, [m for m in net if isinstance(m, nn.Linear)]))


def test_magnitude_parameter_distortion_matches_the_planners_measured_curve():
    """The L1 mass pruning removes (Fig. 3's x) is what the planner's `measured` model fits."""
    from coinfer.planner.distortion import measure_l1_curve
    from coinfer.lab.paper.distortion import prune_curve

    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(40, 30, bias=False), nn.ReLU(), nn.Linear(30, 20, bias=False))
    layers = {n: m for n, m in net.named_modules() if isinstance(m, nn.Linear)}
    ratios = [0.25, 0.5, 0.75]
    total, removed, _ = measure_l1_curve([m.weight for m in layers.values()], ratios)
    pts = prune_curve(layers, lambda: net(torch.ones(1, 40)).detach(), ratios)
    for p, r in zip(pts, removed):
        assert p.param_l1 == pytest.approx(r, rel=1e-6)
        assert p.param_l1_rel == pytest.approx(r / total, rel=1e-6)


def test_retrieval_accuracy_and_cosine():
    from coinfer.lab.paper.quality import cosine_rows, retrieval_accuracy

    q = torch.eye(4)
    assert retrieval_accuracy(q, q * 3) == 1.0                          # scale does not matter
    assert retrieval_accuracy(q, q[[1, 0, 2, 3]]) == 0.5                # two swapped
    assert cosine_rows(q, -q).tolist() == [-1.0] * 4


def test_split_pipeline_equals_the_whole_model_pruned_the_same_way(minilm, sentences):
    """The in-process halves (each with its own pruner) compute what WholeModel.prune computes."""
    from coinfer.lab.monolithic import WholeModel
    from coinfer.lab.paper.quality import SplitPipeline

    pipe = SplitPipeline(minilm, 2)
    pipe.prune(0.6, 0.8, "magnitude")
    whole = WholeModel(minilm)
    whole.prune(2, 0.6, 0.8, "magnitude")
    ids, mask = minilm.tokenize(sentences)
    assert torch.allclose(pipe.embed(sentences), whole(ids, mask), atol=1e-5)


def test_check_schemes_catches_a_worse_or_infeasible_joint_design():
    from coinfer.lab.paper.sweeps import check_schemes

    def row(scheme, d, limit=1.0):
        return {"model": "m", "pruning": "magnitude", "axis": "delay", "limit": limit, "scheme": scheme,
                "feasible": d is not None, "rel_distortion": d, "distortion": d}

    good = [row("joint", 0.1), row("fixed_power", 0.1), row("fixed_frequency", None), row("joint_sca", 0.1)]
    c = check_schemes(good)
    assert not c.joint_worse and not c.joint_infeasible and c.sca_gap_max == 0
    assert c.infeasible_by_scheme["fixed_frequency"] == 1
    bad = [row("joint", 0.2), row("fixed_power", 0.1), row("joint", None, 2.0), row("server_only_pruning", 0.3, 2.0)]
    c = check_schemes(bad)
    assert len(c.joint_worse) == 1 and len(c.joint_infeasible) == 1


def test_csv_round_trip(tmp_path):
    from coinfer.lab.paper.figures import read_csv, write_csv

    rows = [{"a": 1.5, "b": None, "c": True, "d": "x"}, {"a": 2, "e": math.pi}]
    write_csv(tmp_path / "t.csv", rows)
    back = read_csv(tmp_path / "t.csv")
    assert back[0] == {"a": 1.5, "b": None, "c": True, "d": "x", "e": None}
    assert back[1]["e"] == pytest.approx(math.pi)


def test_pairs_are_distinct_and_shipped():
    from coinfer.lab.paper.pairs import PAIRS, passages, queries

    assert len(PAIRS) >= 40
    assert len(set(queries())) == len(PAIRS) and len(set(passages())) == len(PAIRS)
    assert all(q != p for q, p in PAIRS)
