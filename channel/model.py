"""The channel's live state: mode, transmit power, gain process; the rate it implies at any instant.

Pure bookkeeping with explicit times (no clock, no I/O), so it can be tested exactly. Times are
monotonic-clock seconds; `origin` is the instant the fading and trace clocks count from.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass

from coinfer.channel.config import (MAX_ABS_GAIN_DB, MAX_DISTANCE_M, MAX_GAIN, MAX_RATE_BPS, MAX_TX_POWER_W,
                                    MIN_DISTANCE_M, MIN_GAIN, ChannelConfig)
from coinfer.channel.gain import GainTrace, RayleighBlockFading
from coinfer.radio import db_to_linear, dbm_per_hz_to_w_per_hz, path_loss_gain, shannon_rate_bps

RADIO, FIXED, UNLIMITED = "radio", "fixed", "unlimited"

# The largest factor RayleighBlockFading can draw: -ln(1 - u) for a double u < 1 is at most 53 ln 2.
_FADING_PEAK = 53 * math.log(2.0) * (1 + 1e-9)


def _number(field: str, value) -> float:
    """A finite real number as a float; ValueError naming the field otherwise (NaN, inf, not a number)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{field}: must be a number, got {value!r}")
    try:
        value = float(value)
    except OverflowError:             # an int beyond double precision
        value = math.inf
    if not math.isfinite(value):
        raise ValueError(f"{field}: must be a finite number, got {value!r}")
    return value


def _overflow_to_inf(fn, *args) -> float:
    """fn(*args), with float overflow (10 ** 500, a division by an underflowed 0) read as inf."""
    try:
        return fn(*args)
    except (OverflowError, ZeroDivisionError):
        return math.inf


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
            self.distance_m = float(config.distance_m)
            self.base_gain = self._path_loss_gain(self.distance_m)
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
    # Each verb checks its value against the limits (coinfer.channel.config), computes the gain and the
    # highest rate the change could give, and only then commits: a ValueError, which names the field
    # (the control protos' names), leaves the model exactly as it was. With `at`, the old rate is
    # accounted up to `at` and the new one taken from there (what the emulator passes); without it
    # the caller calls advance() itself.
    def set_tx_power(self, watts: float, at: float | None = None) -> None:
        watts = _number("watts", watts)
        if not 0 <= watts <= MAX_TX_POWER_W:
            raise ValueError(f"watts: tx power must be in [0, {MAX_TX_POWER_W:g}] W, got {watts:g}")
        self._check_rate(f"watts: {watts:g}", tx_power_w=watts)
        self._commit(at, tx_power_w=watts)

    def set_gain(self, gain: float, at: float | None = None) -> None:
        self._require_radio("set the gain")
        gain = _number("gain", gain)
        if not MIN_GAIN <= gain <= MAX_GAIN:
            raise ValueError(f"gain: must be in [{MIN_GAIN:g}, {MAX_GAIN:g}], got {gain:g}")
        self._set_base_gain("gain", gain, gain, None, at)

    def set_gain_db(self, gain_db: float, at: float | None = None) -> None:
        self._require_radio("set the gain")
        gain_db = _number("gain_db", gain_db)
        gain = _overflow_to_inf(db_to_linear, gain_db)
        if not math.isfinite(gain):
            raise ValueError(f"gain_db: {gain_db:g} gives a non-finite gain")
        if not -MAX_ABS_GAIN_DB <= gain_db <= MAX_ABS_GAIN_DB:
            raise ValueError(f"gain_db: must be in [{-MAX_ABS_GAIN_DB:g}, {MAX_ABS_GAIN_DB:g}] dB, got {gain_db:g}")
        self._set_base_gain("gain_db", gain_db, gain, None, at)

    def set_distance(self, distance_m: float, at: float | None = None) -> None:
        self._require_radio("set the distance")
        distance_m = _number("distance_m", distance_m)
        if not distance_m > 0:
            raise ValueError(f"distance_m: must be > 0 m, got {distance_m:g}")
        gain = self._path_loss_gain(distance_m)
        if not math.isfinite(gain):
            raise ValueError(f"distance_m: {distance_m:g} gives a non-finite gain")
        if not MIN_DISTANCE_M <= distance_m <= MAX_DISTANCE_M:
            raise ValueError(f"distance_m: must be in [{MIN_DISTANCE_M:g}, {MAX_DISTANCE_M:g}] m, got {distance_m:g}")
        if not 0 < gain <= MAX_GAIN:
            raise ValueError(f"distance_m: {distance_m:g} gives gain {gain:g} (path loss {self.path_loss_db_at_1m:g} dB "
                             f"at 1 m, exponent {self.path_loss_exponent:g}), outside (0, {MAX_GAIN:g}]")
        self._set_base_gain("distance_m", distance_m, gain, distance_m, at)

    def set_fixed_rate(self, rate_bps: float, at: float | None = None) -> None:
        rate_bps = _number("fixed_bps", rate_bps)
        if not 0 < rate_bps <= MAX_RATE_BPS:
            raise ValueError(f"fixed_bps: the rate must be in (0, {MAX_RATE_BPS:g}] bit/s, got {rate_bps:g}")
        self._commit(at, mode=FIXED, fixed_rate_bps=rate_bps)

    def set_unlimited(self, at: float | None = None) -> None:
        self._commit(at, mode=UNLIMITED)

    def set_radio(self, at: float | None = None) -> None:
        self._require_radio("use R(p)")
        self._check_rate("radio: R(p) now")
        self._commit(at, mode=RADIO)

    def _set_base_gain(self, field: str, value: float, gain: float, distance_m: float | None,
                       at: float | None) -> None:
        self._check_rate(f"{field}: {value:g}", base_gain=gain, trace=None)
        self._commit(at, base_gain=gain, distance_m=distance_m, trace=None)

    def _path_loss_gain(self, distance_m: float) -> float:
        # --path-loss-db-at-1m is a loss (positive dB); path_loss_gain takes the reference as a gain
        return _overflow_to_inf(path_loss_gain, distance_m, -self.path_loss_db_at_1m, self.path_loss_exponent)

    def peak_rate(self, **changes) -> float:
        """The highest R(p) the gain process can reach (a trace's largest gain, fading's largest factor),
        with `changes` (tx_power_w, base_gain, trace) in place of the current values; 0 without radio."""
        if not self.radio_configured:
            return 0.0
        trace = changes.get("trace", self.trace)
        gain = max(trace.gains) if trace is not None else changes.get("base_gain", self.base_gain)
        if self.fading is not None:
            gain *= _FADING_PEAK
        return _overflow_to_inf(shannon_rate_bps, self.bandwidth_hz, self.noise_psd_w_per_hz, gain,
                                changes.get("tx_power_w", self.tx_power_w))

    def _check_rate(self, what: str, **changes) -> None:
        """ValueError '<what> gives a non-finite rate' unless the peak rate with `changes` is finite."""
        rate = self.peak_rate(**changes)
        if not math.isfinite(rate):
            raise ValueError(f"{what} gives a non-finite rate R(p) (B={self.bandwidth_hz:g} Hz, "
                             f"N0={self.noise_psd_w_per_hz:g} W/Hz)")

    def _commit(self, at: float | None, **changes) -> None:
        if at is not None:
            self.advance(at)              # account the old rate up to the change
        for name, value in changes.items():
            setattr(self, name, value)
        if at is not None:
            self.advance(at)              # and take the new one from it

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
