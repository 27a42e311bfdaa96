"""The radio's formulas (system-model.md sections 2 and 6): Shannon rate, path loss, unit conversions.

Pure functions in SI units; everything else in coinfer.channel builds on them.
"""
from __future__ import annotations

import math

THERMAL_NOISE_DBM_PER_HZ = -174.0


def db_to_linear(db: float) -> float:
    return 10.0 ** (db / 10.0)


def linear_to_db(value: float) -> float:
    return 10.0 * math.log10(value) if value > 0 else -math.inf


def dbm_per_hz_to_w_per_hz(dbm_per_hz: float) -> float:
    """-174 dBm/Hz -> 3.98e-21 W/Hz."""
    return 10.0 ** ((dbm_per_hz - 30.0) / 10.0)


def shannon_rate_bps(bandwidth_hz: float, noise_psd_w_per_hz: float, gain: float, tx_power_w: float) -> float:
    """R(p) = B log2(1 + g p / (B N0)), in bit/s."""
    snr = gain * tx_power_w / (bandwidth_hz * noise_psd_w_per_hz)
    return bandwidth_hz * math.log2(1.0 + snr)


def path_loss_gain(distance_m: float, loss_db_at_1m: float, exponent: float) -> float:
    """g = PL0 (d / 1 m)^(-alpha), with PL0 = 10^(-loss_db_at_1m / 10)."""
    return db_to_linear(-loss_db_at_1m) * distance_m ** (-exponent)
