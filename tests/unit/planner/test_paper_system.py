"""The paper system (scripts/examples/paper_system.yaml) and coinfer plan's default are one system,
and the reasons its comments give for each choice hold in the planner's own cost model."""
import copy
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
YAML = REPO / "scripts" / "examples" / "paper_system.yaml"


@pytest.fixture(scope="module")
def system():
    from coinfer.system import load_yaml, parse_system

    return parse_system(load_yaml(str(YAML)))


@pytest.fixture(scope="module")
def bert_base():
    from coinfer.models import resolve_model
    from coinfer.planner.profile import profile_from_config

    return profile_from_config(resolve_model("random:bert-base").config, "bert", "bert-base", 1, 128)


def test_defaults_mirror_the_yaml(system):
    from coinfer.system import DEFAULT_SYSTEM, default_system, parse_system

    assert parse_system(copy.deepcopy(DEFAULT_SYSTEM)) == system
    assert default_system() == system


def test_the_yaml_reasons_hold(system, bert_base):
    """The comments say: BERT-base alone on the device misses the delay limit; the server alone,
    unpruned, misses the energy limit; per FLOP the server costs more at any speed both can run."""
    from dataclasses import replace

    from coinfer.system import QoS
    from coinfer.planner.sweep import solve

    dev, srv, q = system.device, system.server, system.qos
    device_alone_s = bert_base.total_flops / (dev.flops_per_cycle * dev.max_freq_hz)
    assert device_alone_s == pytest.approx(0.70, abs=0.01) and device_alone_s > q.max_delay_s
    # the server alone, unpruned, as frugally as the delay limit allows (energy limit lifted)
    loose = replace(system, qos=QoS(q.max_delay_s, 1e3))
    alone = solve(bert_base.scenario(loose, 0))
    assert alone.rho_server == 1.0 and alone.energy_j == pytest.approx(0.53, abs=0.01)
    assert alone.energy_j > q.max_energy_j
    # energy per FLOP at speed v is (eta kappa / C^3) v^2 on either side: compare the coefficients
    assert srv.pue * srv.power_coeff / srv.flops_per_cycle ** 3 > dev.pue * dev.power_coeff / dev.flops_per_cycle ** 3
    assert srv.flops_per_cycle * srv.max_freq_hz > dev.flops_per_cycle * dev.max_freq_hz   # but faster
    # the device's power and efficiency quoted in the YAML
    assert dev.power_coeff * dev.max_freq_hz ** 3 == pytest.approx(0.16)
    assert dev.power_coeff * dev.max_freq_hz ** 2 / dev.flops_per_cycle == pytest.approx(5e-12)


def test_best_split_of_bert_base_is_interior_for_the_default_system(bert_base, system):
    from coinfer.lab.paper.sweeps import with_model
    from coinfer.planner.sweep import plan_splits

    for model in ("magnitude", "random", "rd_bound"):
        res = plan_splits(bert_base, with_model(system, model))
        L = bert_base.num_blocks
        assert res.feasible and 0 < res.split < L, model
        ends = [res.table[0], res.table[L]]
        assert all(not e.feasible or e.distortion > res.plan.distortion for e in ends), model


def test_coinfer_plan_uses_the_paper_system_by_default(tmp_path):
    """`coinfer plan` with no --system plans as with the YAML, and picks an interior split."""
    def plan(*extra):
        out = subprocess.run([sys.executable, "-m", "coinfer", "plan", "--model", "random:bert-base", "--json",
                              *extra], capture_output=True, text=True, timeout=300, check=True)
        return json.loads(out.stdout)

    default, from_file = plan(), plan("--system", str(YAML))
    assert default["system"] == from_file["system"]
    assert default["split"] == from_file["split"] and 0 < default["split"] < default["num_blocks"]
    assert math.isclose(default["plan"]["distortion"], from_file["plan"]["distortion"], rel_tol=1e-9)
