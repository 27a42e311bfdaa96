"""`coinfer solve` and `coinfer plan` as a user runs them: real subprocesses, JSON out, exit codes."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from scenarios import BASE, make

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def coinfer(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "coinfer", *args], capture_output=True, text=True,
                          timeout=timeout, env=ENV, cwd=ROOT)


def write(tmp_path: Path, d: dict, name: str = "scenario.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(d))
    return str(path)


REQUIRED = ("feasible", "rho_device", "rho_server", "f_device_hz", "f_server_hz", "tx_power_w", "delay_s",
            "energy_j", "distortion", "solve_time_s")


def test_solve_json(tmp_path):
    res = coinfer("solve", write(tmp_path, BASE), "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert set(REQUIRED) <= set(out)
    assert out["feasible"] is True and out["solver"] == "convex" and out["scheme"] == "joint"
    q = BASE["qos"]
    assert out["delay_s"] <= q["max_delay_s"] * (1 + 1e-4) and out["energy_j"] <= q["max_energy_j"] * (1 + 1e-4)
    assert 0.05 <= out["rho_device"] < 1 and 0.05 <= out["rho_server"] <= 1
    # the reported delay is the plain formula at the reported point
    dev, seg = BASE["device"], BASE["segments"]
    t_d = out["rho_device"] * seg["device"]["flops"] / (dev["flops_per_cycle"] * out["f_device_hz"])
    assert t_d == pytest.approx(out["stage_delays_s"]["device"], rel=1e-9)


def test_solve_sca_and_scheme_override(tmp_path):
    path = write(tmp_path, BASE)
    sca = json.loads(coinfer("solve", path, "--json", "--solver", "sca").stdout)
    assert sca["solver"] == "sca" and sca["iterations"] >= 1
    assert sca["distortion"] <= sca["objective_trajectory"][0]
    fixed = json.loads(coinfer("solve", path, "--json", "--scheme", "fixed_power").stdout)
    assert fixed["scheme"] == "fixed_power"
    assert fixed["tx_power_w"] == pytest.approx(BASE["device"]["max_tx_power_w"])


def test_solve_text_output(tmp_path):
    res = coinfer("solve", write(tmp_path, BASE))
    assert res.returncode == 0 and "feasible" in res.stdout and "distortion" in res.stdout


def test_solve_infeasible_is_an_answer(tmp_path):
    res = coinfer("solve", write(tmp_path, make(**{"qos.max_delay_s": 0.01})), "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["feasible"] is False and "delay" in out["reason"]
    assert out["min_feasible_delay_s"] > 0.01 and math.isfinite(out["min_feasible_delay_s"])


@pytest.mark.parametrize("mutate, key", [
    (lambda d: d["qos"].update(max_delay=1), "qos.max_delay"),         # unknown key
    (lambda d: d["channel"].pop("gain"), "channel.gain"),             # missing key
    (lambda d: d["device"].update(pue="high"), "device.pue"),         # bad value
])
def test_solve_bad_file_exits_2_naming_the_key(tmp_path, mutate, key):
    d = json.loads(json.dumps(BASE))
    mutate(d)
    res = coinfer("solve", write(tmp_path, d), "--json")
    assert res.returncode == 2
    assert key in res.stderr and "Traceback" not in res.stderr
    assert res.stdout == ""


def test_solve_missing_file_exits_2(tmp_path):
    res = coinfer("solve", str(tmp_path / "nope.yaml"))
    assert res.returncode == 2 and "nope.yaml" in res.stderr


def test_solve_example_file():
    res = coinfer("solve", "scripts/examples/scenario_bert_base_k4.yaml", "--json")
    assert res.returncode == 0 and json.loads(res.stdout)["feasible"] is True


def test_plan_json_tiny_model(tmp_path):
    system = {k: v for k, v in BASE.items() if k not in ("segments", "embedding_bits")}
    system["qos"] = {"max_delay_s": 7e-4, "max_energy_j": 1e-3}
    res = coinfer("plan", "--model", "random:bert-tiny", "--system", write(tmp_path, system, "system.yaml"),
                  "--batch", "2", "--seq-len", "16", "--json", timeout=300)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["num_blocks"] == 4 and [r["split"] for r in out["table"]] == [0, 1, 2, 3, 4]
    assert out["feasible"] and out["split"] == out["plan"]["split"]
    best = min(r["distortion"] for r in out["table"] if r["feasible"])
    assert out["plan"]["distortion"] == best
    assert out["table"][0]["sent_bits"] == 2 * 16 * 64 and out["table"][4]["sent_bits"] == 0


def test_plan_bad_split_exits_2():
    res = coinfer("plan", "--model", "random:bert-tiny", "--split", "9", timeout=300)
    assert res.returncode == 2 and "split" in res.stderr


def test_near_infeasible_budget_is_an_answer_not_a_crash(tmp_path):
    """Regression: a solve close to infeasibility returned a zero stage time and divided by it."""
    scenario = {
        "segments": {"device": {"flops": 5586812928.0, "params": 21233664.0, "weight_scale": 0.01595769121605731},
                     "server": {"flops": 16760438784.0, "params": 63700992.0, "weight_scale": 0.015957691216057307}},
        "embedding_bits": 3145728.0, "weight_bits": 16,
        "device": {"max_freq_hz": 2.0e9, "flops_per_cycle": 8.0, "pue": 1.0, "power_coeff": 1.903160185916816e-29,
                   "max_tx_power_w": 0.2},
        "server": {"max_freq_hz": 3.0e9, "flops_per_cycle": 32.0, "pue": 1.5, "power_coeff": 1.898220238909975e-25},
        "channel": {"bandwidth_hz": 1.0e7, "noise_psd_w_per_hz": 3.98e-21, "gain": 1.0e-9},
        "qos": {"max_delay_s": 0.7929009427371662, "max_energy_j": 0.010776950019676388},
        "distortion": {"model": "magnitude", "min_ratio": 0.05},
        "scheme": "joint",
    }
    path = tmp_path / "near_infeasible.yaml"
    path.write_text(yaml.safe_dump(scenario))
    out = subprocess.run([sys.executable, "-m", "coinfer", "solve", str(path), "--json"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "feasible" in json.loads(out.stdout)
