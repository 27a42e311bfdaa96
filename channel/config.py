"""What a channel emulator is asked to do, and the checks that turn mistakes into clear errors.

`ChannelConfig` mirrors the options of `coinfer channel` one for one (field `tx_power_w` is option
`--tx-power-w`); `validate()` raises coinfer.errors.UsageError naming the option at fault.

Limits. Physics bounds nothing here from above, so the emulator sets sane maxima (the same for an
option and for the control service, which refuses anything outside them with INVALID_ARGUMENT naming
the field): transmit power 0..1e3 W; a gain in [1e-30, 1e30], i.e. |gain_db| <= 300 (a trace's gains
too, where 0 is allowed as an outage); distance 1e-3..1e7 m, and the gain path loss gives there in
(0, 1e30]; a forced rate (0, 1e15] bit/s; bandwidth 1..1e12 Hz; noise PSD -300..0 dBm/Hz. Within
them every rate R(p) is finite (at most ~1e15 bit/s); the model still computes the rate a change
gives before it commits it, and refuses one that is not finite.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from coinfer.errors import UsageError
from coinfer.channel.gain import GainTrace, load_trace
from coinfer.radio import THERMAL_NOISE_DBM_PER_HZ

DEFAULT_PATH_LOSS_DB_AT_1M = 40.0     # free space at 2.4 GHz: 20 log10(4 pi / lambda) = 40.05 dB
DEFAULT_PATH_LOSS_EXPONENT = 3.0

# The limits (see the module docstring); the model's set_* methods use the same ones.
MAX_TX_POWER_W = 1e3
MAX_ABS_GAIN_DB = 300.0
MIN_GAIN, MAX_GAIN = 1e-30, 1e30                  # 10^(-/+ MAX_ABS_GAIN_DB / 10)
MIN_DISTANCE_M, MAX_DISTANCE_M = 1e-3, 1e7
MAX_RATE_BPS = 1e15
MIN_BANDWIDTH_HZ, MAX_BANDWIDTH_HZ = 1.0, 1e12
MIN_NOISE_PSD_DBM_HZ, MAX_NOISE_PSD_DBM_HZ = -300.0, 0.0


def parse_hostport(value: str, option: str, allow_port_zero: bool = True) -> tuple[str, int]:
    """'host:port' or '[v6]:port' -> (host, port); UsageError naming `option` otherwise."""
    host, sep, port_text = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit():
        raise UsageError(f"{option} must be HOST:PORT, got {value!r}")
    port = int(port_text)
    if not (0 if allow_port_zero else 1) <= port <= 65535:
        raise UsageError(f"{option}: port {port} out of range")
    return host, port


@dataclass
class ChannelConfig:
    upstream: str                           # --upstream HOST:PORT (the server)
    listen: str = "127.0.0.1:0"             # --listen; port 0 picks a free one
    control: str | None = None              # --control HOST:PORT of the gRPC control service
    # How the uplink rate is decided: fixed, unlimited, or (neither) the radio model.
    rate_bps: float | None = None           # --rate-bps
    unlimited: bool = False                 # --unlimited
    bandwidth_hz: float | None = None       # --bandwidth-hz
    noise_psd_dbm_hz: float = THERMAL_NOISE_DBM_PER_HZ  # --noise-psd-dbm-hz
    tx_power_w: float | None = None         # --tx-power-w
    # The gain: exactly one of these four.
    gain: float | None = None               # --gain (linear)
    gain_db: float | None = None            # --gain-db
    distance_m: float | None = None         # --distance-m (path loss)
    trace: str | Path | GainTrace | None = None  # --trace FILE (or an already loaded trace)
    path_loss_db_at_1m: float | None = None  # --path-loss-db-at-1m (default 40)
    path_loss_exponent: float | None = None  # --path-loss-exponent (default 3)
    fading: str | None = None               # --fading rayleigh
    coherence_s: float | None = None        # --coherence-s
    seed: int | None = None                 # --seed (default 0)
    downlink_bps: float | None = None       # --downlink-bps; None = unlimited
    delay_s: float = 0.0                    # --delay-ms / 1000, one way, each direction
    tc_dev: str | None = None               # --tc-dev: shape the uplink with kernel tc on this device
    # Shaper internals (no CLI option): how much late time the link may catch up on at once, and
    # how long one quantum of bytes lasts at the current rate (the unit of fairness between connections).
    max_catchup_s: float = 0.05
    quantum_s: float = 0.001
    loaded_trace: GainTrace | None = field(default=None, init=False, repr=False)

    @property
    def radio_configured(self) -> bool:
        return self.bandwidth_hz is not None

    @property
    def gain_kind(self) -> str | None:
        for kind in ("gain", "gain_db", "distance_m", "trace"):
            if getattr(self, kind) is not None:
                return kind
        return None

    def validate(self) -> "ChannelConfig":
        """Check every option; load the trace file. Returns self for chaining."""
        parse_hostport(self.upstream, "--upstream", allow_port_zero=False)
        parse_hostport(self.listen, "--listen")
        if self.control is not None:
            parse_hostport(self.control, "--control")

        _positive_or_none(self.rate_bps, "--rate-bps")
        _at_most(self.rate_bps, MAX_RATE_BPS, "--rate-bps", "bit/s")
        if self.rate_bps is not None and self.unlimited:
            raise UsageError("--rate-bps and --unlimited exclude each other")
        _positive_or_none(self.downlink_bps, "--downlink-bps")
        _finite(self.delay_s, "--delay-ms")
        if self.delay_s < 0:
            raise UsageError(f"--delay-ms must be >= 0, got {self.delay_s * 1e3:g}")
        _finite(self.noise_psd_dbm_hz, "--noise-psd-dbm-hz")
        _within(self.noise_psd_dbm_hz, MIN_NOISE_PSD_DBM_HZ, MAX_NOISE_PSD_DBM_HZ, "--noise-psd-dbm-hz", "dBm/Hz")
        if not (self.max_catchup_s >= 0 and self.quantum_s > 0):
            raise UsageError("max_catchup_s must be >= 0 and quantum_s > 0")

        gain_options = [f"--{k.replace('_', '-')}" for k in ("gain", "gain_db", "distance_m", "trace")
                        if getattr(self, k) is not None]
        if len(gain_options) > 1:
            raise UsageError(f"give one gain option, not {' and '.join(gain_options)}")
        radio_given = [opt for opt, v in (("--bandwidth-hz", self.bandwidth_hz), ("--tx-power-w", self.tx_power_w))
                       if v is not None] + gain_options
        fixed_mode = self.rate_bps is not None or self.unlimited
        if radio_given or not fixed_mode:
            # The radio model is used (or kept for a later SetRate(radio)): it needs all three parts.
            if self.bandwidth_hz is None:
                raise UsageError("--bandwidth-hz is needed for R(p) (or force a rate with --rate-bps / --unlimited)")
            if self.tx_power_w is None:
                raise UsageError("--tx-power-w is needed for R(p) (or force a rate with --rate-bps / --unlimited)")
            if not gain_options:
                raise UsageError("a gain is needed for R(p): give --gain, --gain-db, --distance-m or --trace")
        _positive_or_none(self.bandwidth_hz, "--bandwidth-hz")
        _within(self.bandwidth_hz, MIN_BANDWIDTH_HZ, MAX_BANDWIDTH_HZ, "--bandwidth-hz", "Hz")
        if self.tx_power_w is not None:
            _finite(self.tx_power_w, "--tx-power-w")
            if self.tx_power_w < 0:
                raise UsageError(f"--tx-power-w must be >= 0, got {self.tx_power_w:g}")
            _at_most(self.tx_power_w, MAX_TX_POWER_W, "--tx-power-w", "W")
        _positive_or_none(self.gain, "--gain")
        _within(self.gain, MIN_GAIN, MAX_GAIN, "--gain", "")
        if self.gain_db is not None:
            _finite(self.gain_db, "--gain-db")
            _within(self.gain_db, -MAX_ABS_GAIN_DB, MAX_ABS_GAIN_DB, "--gain-db", "dB")
        _positive_or_none(self.distance_m, "--distance-m")
        _within(self.distance_m, MIN_DISTANCE_M, MAX_DISTANCE_M, "--distance-m", "m")
        for value, option in ((self.path_loss_db_at_1m, "--path-loss-db-at-1m"),
                              (self.path_loss_exponent, "--path-loss-exponent")):
            if value is not None:
                _finite(value, option)
                if self.distance_m is None:
                    raise UsageError(f"{option} needs --distance-m")
        if self.path_loss_exponent is not None and self.path_loss_exponent <= 0:
            raise UsageError(f"--path-loss-exponent must be > 0, got {self.path_loss_exponent:g}")

        if self.fading is not None:
            if self.fading != "rayleigh":
                raise UsageError(f"--fading must be 'rayleigh', got {self.fading!r}")
            if self.trace is not None:
                raise UsageError("--fading cannot be combined with --trace (a recorded trace already fades)")
            if not radio_given:
                raise UsageError("--fading needs the radio model (--bandwidth-hz, --tx-power-w and a gain)")
            if self.coherence_s is None:
                raise UsageError("--fading rayleigh needs --coherence-s")
            _positive_or_none(self.coherence_s, "--coherence-s")
        else:
            for value, option in ((self.coherence_s, "--coherence-s"), (self.seed, "--seed")):
                if value is not None:
                    raise UsageError(f"{option} needs --fading rayleigh")

        if isinstance(self.trace, GainTrace):
            self.loaded_trace = self.trace
        elif self.trace is not None:
            try:
                self.loaded_trace = load_trace(self.trace)
            except (ValueError, OverflowError) as exc:   # OverflowError: a gain_db too large for a float
                raise UsageError(f"--trace: {exc}") from None
        if self.loaded_trace is not None:
            for i, g in enumerate(self.loaded_trace.gains):
                if g > MAX_GAIN or 0 < g < MIN_GAIN:
                    raise UsageError(f"--trace: point {i + 1}: gain {g:g} is outside [{MIN_GAIN:g}, {MAX_GAIN:g}] "
                                     "(or 0)")
        if self.radio_configured and self.gain_kind == "distance_m":
            from coinfer.radio import path_loss_gain
            loss_db, exponent = self.path_loss
            try:
                g = path_loss_gain(self.distance_m, -loss_db, exponent)
            except OverflowError:
                g = math.inf
            if not 0 < g <= MAX_GAIN:
                raise UsageError(f"--distance-m {self.distance_m:g} with --path-loss-db-at-1m {loss_db:g} and "
                                 f"--path-loss-exponent {exponent:g} gives gain {g:g}, outside (0, {MAX_GAIN:g}]")
        if self.tc_dev is not None and not self.tc_dev:
            raise UsageError("--tc-dev must name a network device")
        return self

    @property
    def path_loss(self) -> tuple[float, float]:
        """(loss in dB at 1 m, exponent), defaults filled in."""
        return (DEFAULT_PATH_LOSS_DB_AT_1M if self.path_loss_db_at_1m is None else self.path_loss_db_at_1m,
                DEFAULT_PATH_LOSS_EXPONENT if self.path_loss_exponent is None else self.path_loss_exponent)


def _finite(value: float, option: str) -> None:
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UsageError(f"{option} must be a finite number, got {value!r}")


def _within(value: float | None, low: float, high: float, option: str, unit: str) -> None:
    if value is not None and not low <= value <= high:
        raise UsageError(f"{option} must be in [{low:g}, {high:g}]{' ' + unit if unit else ''}, got {value:g}")


def _at_most(value: float | None, high: float, option: str, unit: str) -> None:
    if value is not None and value > high:
        raise UsageError(f"{option} must be at most {high:g} {unit}, got {value:g}")


def _positive_or_none(value: float | None, option: str) -> None:
    if value is None:
        return
    _finite(value, option)
    if value <= 0:
        raise UsageError(f"{option} must be > 0, got {value:g}")
