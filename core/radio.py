"""The radio's formulas (system-model.md sections 2 and 6), defined here once: SNR, the Shannon rate
R(p) = B log2(1 + g p / (B N0)) and its inverse, path loss, dB and dBm conversions.

Pure functions in SI units. The channel emulator, the planner (costs, estimators, controller) and the
device group's transceiver design all call these; none writes a formula of its own.

Conventions
-----------
* A power ratio x is 10 log10(x) dB. A *gain* in dB is negative where the signal weakens.
* Path loss: g(d) = PL0 (d / 1 m)^(-alpha), with the reference PL0 at 1 m given as a gain in dB,
  `ref_gain_db_at_1m`, negative for a loss: the spec's section 6 values are PL0 = -30 dB and
  alpha = 3 (g = 1e-9 at 100 m), the defaults of `path_loss_gain`. The channel emulator's
  `--path-loss-db-at-1m` is a loss, a positive number of dB (default 40, free space at 2.4 GHz);
  it passes its negative, -40 dB.
* Noise: N0 in W/Hz; dBm/Hz is dB relative to 1 mW/Hz (-174 dBm/Hz, the thermal floor, is 3.98e-21 W/Hz).
"""
from __future__ import annotations

import math

THERMAL_NOISE_DBM_PER_HZ = -174.0
SPEC_REF_GAIN_DB_AT_1M = -30.0    # PL0 of spec section 6, as a gain
SPEC_PATH_LOSS_EXPONENT = 3.0     # alpha of spec section 6
LN2 = math.log(2.0)


def db_to_linear(db: float) -> float:
    return 10.0 ** (db / 10.0)


def linear_to_db(value: float) -> float:
    return 10.0 * math.log10(value) if value > 0 else -math.inf


def dbm_per_hz_to_w_per_hz(dbm_per_hz: float) -> float:
    """-174 dBm/Hz -> 3.98e-21 W/Hz."""
    return 10.0 ** ((dbm_per_hz - 30.0) / 10.0)


def w_per_hz_to_dbm_per_hz(w_per_hz: float) -> float:
    """3.98e-21 W/Hz -> -174 dBm/Hz (the inverse of dbm_per_hz_to_w_per_hz)."""
    return linear_to_db(w_per_hz * 1e3)


def received_snr(bandwidth_hz: float, noise_psd_w_per_hz: float, gain: float, tx_power_w: float) -> float:
    """SNR = g p / (B N0)."""
    return gain * tx_power_w / (bandwidth_hz * noise_psd_w_per_hz)


def spectral_efficiency(snr: float) -> float:
    """log2(1 + SNR), in bit/s/Hz."""
    return math.log2(1.0 + snr)


def shannon_rate_bps(bandwidth_hz: float, noise_psd_w_per_hz: float, gain: float, tx_power_w: float) -> float:
    """R(p) = B log2(1 + g p / (B N0)), in bit/s."""
    return bandwidth_hz * spectral_efficiency(received_snr(bandwidth_hz, noise_psd_w_per_hz, gain, tx_power_w))


def gain_for_rate(rate_bps: float, bandwidth_hz: float, noise_psd_w_per_hz: float, tx_power_w: float) -> float:
    """The g for which R(p) = rate_bps: g = (2^(R/B) - 1) B N0 / p. OverflowError when 2^(R/B) is
    beyond double precision (R/B above ~1000 bit/s/Hz)."""
    return math.expm1(rate_bps / bandwidth_hz * LN2) * bandwidth_hz * noise_psd_w_per_hz / tx_power_w


def path_loss_gain(distance_m: float, ref_gain_db_at_1m: float = SPEC_REF_GAIN_DB_AT_1M,
                   exponent: float = SPEC_PATH_LOSS_EXPONENT) -> float:
    """g = PL0 (d / 1 m)^(-alpha), PL0 = 10^(ref_gain_db_at_1m / 10): ref_gain_db_at_1m is a gain in dB,
    negative for a loss (-30 dB: PL0 = 1e-3). ValueError unless distance_m > 0."""
    if not distance_m > 0:
        raise ValueError(f"distance must be > 0 m, got {distance_m}")
    return db_to_linear(ref_gain_db_at_1m) * distance_m ** (-exponent)
