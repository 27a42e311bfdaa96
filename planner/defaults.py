"""The default system for `coinfer plan` when no --system file is given.

The paper's own section VI values were lost with its formulas; these follow the spec's example
scenario (system-model.md section 7), each number with the reason it is plausible.
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
    # fp16 checkpoints: 16 bits per stored weight
    "weight_bits": 16,
    "device": {
        "max_freq_hz": 2.0e9,       # a phone / embedded big core
        "flops_per_cycle": 8,       # 128-bit SIMD fused multiply-add on fp32: 4 lanes x 2
        "pue": 1.0,                 # a handset has no cooling overhead
        "power_coeff": 1.0e-28,     # kappa f^3 = 0.8 W at 2 GHz, a mobile core under load
        "max_tx_power_w": 0.2,      # 23 dBm, 3GPP UE power class 3
    },
    "server": {
        "max_freq_hz": 1.5e9,       # GPU boost clock
        "flops_per_cycle": 1024,    # effective fp32 FLOPs per clock of a mid-range accelerator
        "pue": 1.5,                 # typical data-centre power usage effectiveness
        "power_coeff": 5.0e-27,     # kappa F^3 = 17 W at 1.5 GHz (25 W with the PUE): a low-power accelerator
    },
    "channel": {
        "bandwidth_hz": 1.0e7,                          # a 10 MHz LTE/NR uplink allocation
        "noise_psd_w_per_hz": dbm_per_hz_to_w(-174.0),  # thermal noise floor, -174 dBm/Hz
        "gain": path_loss_gain(100.0),                  # PL0 = -30 dB at 1 m, alpha = 3, d = 100 m: 1e-9
    },
    "qos": {
        "max_delay_s": 0.35,        # an interactive request (spec example)
        "max_energy_j": 0.5,        # per request, device + uplink + server (spec example)
    },
    "distortion": {
        "model": "magnitude",       # the runtime prunes by magnitude
        "min_ratio": 0.05,          # never keep less than 5 % of a segment's weights
    },
    "scheme": "joint",
}

assert math.isclose(DEFAULT_SYSTEM["channel"]["gain"], 1e-9)
