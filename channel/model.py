"""The channel's live state: mode, transmit power, gain process; the rate it implies at any instant.

Pure bookkeeping with explicit times (no clock, no I/O), so it can be tested exactly. Times are
monotonic-clock seconds; `origin` is the instant the fading and trace clocks count from.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from coinfer.channel.config import ChannelConfig
from coinfer.channel.gain import GainTrace, RayleighBlockFading
from coinfer.radio import db_to_linear, dbm_per_hz_to_w_per_hz, path_loss_gain, shannon_rate_bps

RADIO, FIXED, UNLIMITED = "radio", "fixed", "unlimited"


class RadioNotConfigured(ValueError):
    """A radio verb (gain, distance, R(p)) on an emulator started without radio parameters."""


@dataclass
class ChannelStats:
    """A snapshot of the emulator; what the control service's GetStats returns."""
    bytes_up: int = 0                 # device -> server bytes delivered
    bytes_down: int = 0               # server -> device bytes delivered
    rate_bps: float = 0.0             # uplink rate now (inf when unlimited)
    gain: float = 0.0                 # channel power gain now (0: no radio configured)
    tx_power_w: float = 0.0
    mean_rate_bps: float = 0.0        # time-weighted mean uplink rate since start
    downlink_bps: float = math.inf
    connections_active: int = 0
    connections_total: int = 0
    connections_failed: int = 0
    mode: str = RADIO                 # radio | fixed | unlimited
    gain_source: str = "none"         # none | fixed | path_loss | trace, "+rayleigh" when fading
    bandwidth_hz: float = 0.0
    noise_psd_w_per_hz: float = 0.0
    distance_m: float = 0.0
    delay_s: float = 0.0
    uptime_s: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


class ChannelModel:
    """Decides the uplink rate. Change it with the set_* methods (each validates and raises ValueError).

    Call `advance(t)` at every instant the rate may change (after a set_* call, at each
    `next_change` boundary) so the time-weighted mean rate stays exact.
    """

    def __init__(self, config: ChannelConfig, origin: float):
        self.origin = origin
        self.mode = UNLIMITED if config.unlimited else FIXED if config.rate_bps is not None else RADIO
        self.fixed_rate_bps = config.rate_bps
        self.bandwidth_hz = config.bandwidth_hz
        self.noise_psd_w_per_hz = dbm_per_hz_to_w_per_hz(config.noise_psd_dbm_hz)
        self.tx_power_w = config.tx_power_w if config.tx_power_w is not None else 0.0
        self.path_loss_db_at_1m, self.path_loss_exponent = config.path_loss
        self.distance_m: float | None = None
        self.trace: GainTrace | None = None
        self.base_gain = 0.0
        kind = config.gain_kind
        if kind == "gain":
            self.base_gain = config.gain
        elif kind == "gain_db":
            self.base_gain = db_to_linear(config.gain_db)
        elif kind == "distance_m":
            self._set_distance(config.distance_m)
        elif kind == "trace":
            self.trace = config.loaded_trace
        self.fading = (RayleighBlockFading(config.coherence_s, config.seed or 0)
                       if config.fading == "rayleigh" else None)
        self._integral_bits = 0.0       # integral of the rate from origin to _last_t
        self._last_t = origin
        self._last_rate = self.rate_at(origin)

    # -- what the channel is at time t ------------------------------------------------------------
    @property
    def radio_configured(self) -> bool:
        return self.bandwidth_hz is not None

    def gain_at(self, t: float) -> float:
        if not self.radio_configured:
            return 0.0
        rel = t - self.origin
        g = self.trace.gain_at(rel) if self.trace is not None else self.base_gain
        if self.fading is not None:
            g *= self.fading.factor_at(rel)
        return g

    def rate_at(self, t: float) -> float:
        if self.mode == UNLIMITED:
            return math.inf
        if self.mode == FIXED:
            return self.fixed_rate_bps
        return shannon_rate_bps(self.bandwidth_hz, self.noise_psd_w_per_hz, self.gain_at(t), self.tx_power_w)

    def next_change(self, t: float) -> float:
        """The next instant after t at which the rate changes by itself (inf: not before a set_* call)."""
        if self.mode != RADIO:
            return math.inf
        rel = t - self.origin
        nxt = math.inf
        if self.trace is not None:
            nxt = self.trace.next_change(rel)
        if self.fading is not None:
            nxt = min(nxt, self.fading.next_change(rel))
        return self.origin + nxt

    @property
    def gain_source(self) -> str:
        if not self.radio_configured:
            return "none"
        base = "trace" if self.trace is not None else "path_loss" if self.distance_m is not None else "fixed"
        return base + ("+rayleigh" if self.fading is not None else "")

    # -- time-weighted mean -----------------------------------------------------------------------
    def advance(self, t: float) -> float:
        """Account the rate up to t, then take the rate in force from t on. Returns that rate."""
        if t > self._last_t:
            self._integral_bits += self._last_rate * (t - self._last_t) if self._last_rate else 0.0
            self._last_t = t
        self._last_rate = self.rate_at(t)
        return self._last_rate

    def mean_rate(self, t: float) -> float:
        elapsed = t - self.origin
        if elapsed <= 0:
            return self._last_rate
        bits = self._integral_bits + (self._last_rate * (t - self._last_t)
                                     if self._last_rate and t > self._last_t else 0.0)
        return bits / elapsed

    # -- changes (the control service's verbs) ----------------------------------------------------
    def set_tx_power(self, watts: float) -> None:
        if not (isinstance(watts, (int, float)) and math.isfinite(watts) and watts >= 0):
            raise ValueError(f"tx power must be a finite number of watts >= 0, got {watts!r}")
        self.tx_power_w = float(watts)

    def set_gain(self, gain: float) -> None:
        self._require_radio("set the gain")
        if not (math.isfinite(gain) and gain > 0):
            raise ValueError(f"gain must be a finite number > 0, got {gain!r}")
        self.base_gain, self.distance_m, self.trace = float(gain), None, None

    def set_gain_db(self, gain_db: float) -> None:
        if not math.isfinite(gain_db):
            raise ValueError(f"gain_db must be finite, got {gain_db!r}")
        self.set_gain(db_to_linear(gain_db))

    def set_distance(self, distance_m: float) -> None:
        self._require_radio("set the distance")
        if not (math.isfinite(distance_m) and distance_m > 0):
            raise ValueError(f"distance must be a finite number of metres > 0, got {distance_m!r}")
        self._set_distance(distance_m)
        self.trace = None

    def set_fixed_rate(self, rate_bps: float) -> None:
        if not (math.isfinite(rate_bps) and rate_bps > 0):
            raise ValueError(f"fixed rate must be a finite number of bit/s > 0, got {rate_bps!r}")
        self.mode, self.fixed_rate_bps = FIXED, float(rate_bps)

    def set_unlimited(self) -> None:
        self.mode = UNLIMITED

    def set_radio(self) -> None:
        self._require_radio("use R(p)")
        self.mode = RADIO

    def _set_distance(self, distance_m: float) -> None:
        self.distance_m = float(distance_m)
        # --path-loss-db-at-1m is a loss (positive dB); path_loss_gain takes the reference as a gain
        self.base_gain = path_loss_gain(distance_m, -self.path_loss_db_at_1m, self.path_loss_exponent)

    def _require_radio(self, what: str) -> None:
        if not self.radio_configured:
            raise RadioNotConfigured(f"cannot {what}: the emulator was started without radio parameters "
                             "(--bandwidth-hz, --tx-power-w and a gain)")

    def stats(self, t: float) -> ChannelStats:
        """The model's part of a snapshot (the proxy fills in bytes and connections)."""
        return ChannelStats(rate_bps=self.rate_at(t), gain=self.gain_at(t), tx_power_w=self.tx_power_w,
                            mean_rate_bps=self.mean_rate(t), mode=self.mode, gain_source=self.gain_source,
                            bandwidth_hz=self.bandwidth_hz or 0.0,
                            noise_psd_w_per_hz=self.noise_psd_w_per_hz if self.radio_configured else 0.0,
                            distance_m=self.distance_m or 0.0, uptime_s=max(0.0, t - self.origin))
