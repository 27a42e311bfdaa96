"""The default system for `coinfer plan` when no --system file is given.

It is the paper reproduction's system, `scripts/examples/paper_system.yaml`, mirrored here as a dict
so that an installed package needs no data file; tests/test_paper_system.py checks the two agree.
The YAML explains each number. In short: the paper's section VI values were lost with its formulas,
so these are chosen to keep its stated regime, a device that is slow but frugal per FLOP and a
server that is fast but pays more energy per FLOP, under a delay and energy budget (0.6 s, 0.4 J)
that neither side meets alone for BERT-base unpruned; with them the best split of BERT-base
(batch 1 x 128 tokens) is interior.
"""
from __future__ import annotations

import math


def path_loss_gain(distance_m: float, ref_loss_db: float = -30.0, exponent: float = 3.0,
                   ref_distance_m: float = 1.0) -> float:
    """g = PL0 (d / d0)^(-alpha) (spec section 6)."""
    return 10 ** (ref_loss_db / 10) * (distance_m / ref_distance_m) ** (-exponent)


def dbm_per_hz_to_w(dbm: float) -> float:
    return 10 ** (dbm / 10) / 1000


DEFAULT_SYSTEM = {
    "weight_bits": 16,
    "device": {"max_freq_hz": 2.0e9, "flops_per_cycle": 16, "pue": 1.0, "power_coeff": 2.0e-29,
               "max_tx_power_w": 0.2},
    "server": {"max_freq_hz": 3.0e9, "flops_per_cycle": 64, "pue": 1.5, "power_coeff": 3.0e-27},
    # the YAML's rounded literals: -174 dBm/Hz, and PL0 = -30 dB at 1 m, alpha = 3, d = 100 m
    "channel": {"bandwidth_hz": 1.0e7, "noise_psd_w_per_hz": 3.98e-21, "gain": 1.0e-9},
    "qos": {"max_delay_s": 0.6, "max_energy_j": 0.4},
    "distortion": {"model": "magnitude", "min_ratio": 0.05},
    "scheme": "joint",
}

assert math.isclose(DEFAULT_SYSTEM["channel"]["gain"], path_loss_gain(100.0))
assert math.isclose(DEFAULT_SYSTEM["channel"]["noise_psd_w_per_hz"], dbm_per_hz_to_w(-174.0), rel_tol=1e-3)


# The example scenario of system-model.md section 7 (one split point, every number explicit): the
# planner benchmark's and the brute-force tests' reference point.
SPEC_EXAMPLE_SCENARIO = {
    "segments": {"device": {"flops": 7.26e9, "params": 2.83e7, "weight_scale": 0.02},
                 "server": {"flops": 1.45e10, "params": 5.66e7, "weight_scale": 0.02}},
    "embedding_bits": 1572864, "weight_bits": 16,
    "device": {"max_freq_hz": 2.0e9, "flops_per_cycle": 8, "pue": 1.0, "power_coeff": 1.0e-28,
               "max_tx_power_w": 0.2},
    "server": {"max_freq_hz": 1.5e9, "flops_per_cycle": 1024, "pue": 1.5, "power_coeff": 5.0e-27},
    "channel": {"bandwidth_hz": 1.0e7, "noise_psd_w_per_hz": 3.98e-21, "gain": 1.0e-9},
    "qos": {"max_delay_s": 0.35, "max_energy_j": 0.5},
    "distortion": {"model": "magnitude", "min_ratio": 0.05},
    "scheme": "joint",
}
