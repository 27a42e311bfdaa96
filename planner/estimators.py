"""Estimates of what the system file can only guess, from measured telemetry, and when one has moved.

* channel gain g — from the uplink rate measured at the transmit power in force, inverting
  R(p) = B log2(1 + g p / (B N0));
* effective FLOPs per cycle C — from FLOPs, compute time and the frequency it ran at (T = W / (C f));
* power coefficient kappa — from measured energy (E = eta kappa (W / C) f^2), never from modelled energy
  (that would only give back the kappa it was modelled with).

Each estimate is the EWMA, in the log domain (all three are positive and their noise is
multiplicative), of the median of the last few raw values: the median drops a lone outlier (a request
that shared the machine with something else), the EWMA smooths what is left. `drifted` and
`Hysteresis` decide when an estimate has moved enough, for long enough, to re-plan.

Conditioning: g grows exponentially with the rate, so relative noise in a measured rate is multiplied
by d ln g / d ln R = (R/B) ln 2 * SNR / (1 + SNR) ~ 8.5 at 12 bit/s/Hz. At high SNR judge drift on the
rate (what the delay depends on), not on g.
"""
from __future__ import annotations

import math
import statistics
import threading
from collections import deque

LN2 = math.log(2.0)


class Ewma:
    """Exponentially weighted moving average: value <- alpha x + (1 - alpha) value; the first x is taken as is."""

    def __init__(self, alpha: float):
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.alpha = alpha
        self.value: float | None = None
        self.count = 0

    def update(self, x: float) -> float:
        if not math.isfinite(x):
            raise ValueError(f"x must be finite, got {x}")
        self.value = x if self.value is None else self.alpha * x + (1 - self.alpha) * self.value
        self.count += 1
        return self.value

    def reset(self) -> None:
        self.value, self.count = None, 0


class _LogSmoother:
    """EWMA in the log domain of the median of the last `window` positive values (thread-safe)."""

    def __init__(self, alpha: float, window: int):
        if window < 1:
            raise ValueError(f"median_window must be >= 1, got {window}")
        self.ewma = Ewma(alpha)
        self.recent: deque[float] = deque(maxlen=window)
        self.lock = threading.Lock()

    def update(self, positive: float) -> float:
        with self.lock:
            self.recent.append(math.log(positive))
            return math.exp(self.ewma.update(statistics.median(self.recent)))

    @property
    def value(self) -> float | None:
        v = self.ewma.value
        return None if v is None else math.exp(v)

    def reset(self) -> None:
        with self.lock:
            self.ewma.reset()
            self.recent.clear()


def _positive(**values: float) -> None:
    for name, v in values.items():
        try:
            ok = math.isfinite(float(v)) and v > 0
        except (TypeError, ValueError):  # None, a string, ...
            ok = False
        if not ok:
            raise ValueError(f"{name} must be positive and finite, got {v}")


def rate_from_gain(gain: float, tx_power_w: float, bandwidth_hz: float, noise_psd_w_per_hz: float) -> float:
    """R(p) = B log2(1 + g p / (B N0)), bit/s."""
    _positive(gain=gain, tx_power_w=tx_power_w, bandwidth_hz=bandwidth_hz, noise_psd_w_per_hz=noise_psd_w_per_hz)
    return bandwidth_hz * math.log1p(gain * tx_power_w / (bandwidth_hz * noise_psd_w_per_hz)) / LN2


def gain_from_rate(rate_bps: float, tx_power_w: float, bandwidth_hz: float, noise_psd_w_per_hz: float) -> float:
    """The g for which R(p) = rate_bps: g = (2^(R/B) - 1) B N0 / p. ValueError for non-positive inputs,
    and for a rate beyond double precision (R/B above ~1000 bit/s/Hz: B is then not this link's)."""
    _positive(rate_bps=rate_bps, tx_power_w=tx_power_w, bandwidth_hz=bandwidth_hz,
              noise_psd_w_per_hz=noise_psd_w_per_hz)
    try:
        gain = math.expm1(rate_bps / bandwidth_hz * LN2) * bandwidth_hz * noise_psd_w_per_hz / tx_power_w
    except OverflowError:
        gain = math.inf
    if not math.isfinite(gain):
        raise ValueError(f"rate_bps={rate_bps:g} is {rate_bps / bandwidth_hz:g} bit/s/Hz at bandwidth_hz="
                         f"{bandwidth_hz:g}: no finite gain gives it")
    return gain


class ChannelEstimator:
    """Channel gain from (bytes, seconds, transmit power) of each uplink transfer.

    rate = 8 bytes / (seconds - fixed_overhead_s). Transfers under min_bytes (they time overheads, not
    the channel), non-positive times and rates no gain explains are skipped and counted in `rejected`.
    """

    def __init__(self, bandwidth_hz: float, noise_psd_w_per_hz: float, alpha: float = 0.3,
                 min_bytes: int = 16_384, fixed_overhead_s: float = 0.0, median_window: int = 3):
        _positive(bandwidth_hz=bandwidth_hz, noise_psd_w_per_hz=noise_psd_w_per_hz)
        if not fixed_overhead_s >= 0:
            raise ValueError(f"fixed_overhead_s must be non-negative, got {fixed_overhead_s}")
        self.bandwidth_hz, self.noise_psd_w_per_hz = bandwidth_hz, noise_psd_w_per_hz
        self.min_bytes, self.fixed_overhead_s = min_bytes, fixed_overhead_s
        self._smooth = _LogSmoother(alpha, median_window)
        self.last_rate_bps: float | None = None  # the last accepted raw rate
        self.rejected = 0

    @property
    def gain(self) -> float | None:
        return self._smooth.value

    @property
    def count(self) -> int:
        return self._smooth.ewma.count

    def observe(self, bytes_sent: int, seconds: float, tx_power_w: float) -> float | None:
        if bytes_sent < self.min_bytes:
            return self.gain  # too small to say anything about the channel; not an error
        try:
            _positive(tx_power_w=tx_power_w)
            transfer_s = seconds - self.fixed_overhead_s
            _positive(seconds=transfer_s)
            rate = 8.0 * bytes_sent / transfer_s
            g = gain_from_rate(rate, tx_power_w, self.bandwidth_hz, self.noise_psd_w_per_hz)
        except ValueError:
            self.rejected += 1
            return self.gain
        self.last_rate_bps = rate
        return self._smooth.update(g)

    def rate_bps(self, tx_power_w: float) -> float | None:
        """R(p) at the estimated gain (None before any estimate)."""
        g = self.gain
        return None if g is None else rate_from_gain(g, tx_power_w, self.bandwidth_hz, self.noise_psd_w_per_hz)

    def reset(self) -> None:
        self._smooth.reset()
        self.last_rate_bps, self.rejected = None, 0


class ComputeEstimator:
    """Effective FLOPs per cycle, C = flops / (seconds * freq_hz). Under an emulated cap pass the
    stretched time and the cap: (T F / f) f = T F, the same C as unstretched compute at F."""

    def __init__(self, alpha: float = 0.3, median_window: int = 3):
        self._smooth = _LogSmoother(alpha, median_window)
        self.rejected = 0

    @property
    def flops_per_cycle(self) -> float | None:
        return self._smooth.value

    @property
    def count(self) -> int:
        return self._smooth.ewma.count

    def observe(self, flops: float, seconds: float, freq_hz: float) -> float | None:
        try:
            _positive(flops=flops, seconds=seconds, freq_hz=freq_hz)
        except ValueError:  # e.g. k = 0: no device compute to learn from
            self.rejected += 1
            return self.flops_per_cycle
        return self._smooth.update(flops / (seconds * freq_hz))

    def reset(self) -> None:
        self._smooth.reset()
        self.rejected = 0


class PowerEstimator:
    """Power coefficient kappa = E / (pue (flops / C) f^2), from measured (rapl/nvml) energy only.
    A package or board meter also counts idle power, which the dynamic model has no term for: kappa
    absorbs it, which is what makes the model predict the meter."""

    def __init__(self, alpha: float = 0.3, median_window: int = 3):
        self._smooth = _LogSmoother(alpha, median_window)
        self.rejected = 0

    @property
    def power_coeff(self) -> float | None:
        return self._smooth.value

    @property
    def count(self) -> int:
        return self._smooth.ewma.count

    def observe(self, joules: float, flops: float, flops_per_cycle: float | None, freq_hz: float,
                pue: float) -> float | None:
        try:
            _positive(joules=joules, flops=flops, flops_per_cycle=flops_per_cycle, freq_hz=freq_hz, pue=pue)
        except ValueError:  # no C estimate yet, a zero-energy read between counter updates, ...
            self.rejected += 1
            return self.power_coeff
        return self._smooth.update(joules / (pue * (flops / flops_per_cycle) * freq_hz ** 2))

    def reset(self) -> None:
        self._smooth.reset()
        self.rejected = 0


def drifted(reference: float | None, current: float | None, threshold: float) -> bool:
    """|current / reference - 1| > threshold; False when either is unknown. Note the asymmetry: a drop
    to a tenth (-10 dB) is a change of 0.9, a rise to ten times is 9, so a threshold must be < 1 to see drops."""
    if not threshold >= 0:
        raise ValueError(f"threshold must be non-negative, got {threshold}")
    if reference is None or current is None:
        return False
    if reference == 0:
        return current != 0
    return abs(current / reference - 1.0) > threshold


class Hysteresis:
    """A change must persist: update() is True only once `count` consecutive observations have drifted
    the same way (above, or below, the reference), and stays True while they keep doing so."""

    def __init__(self, threshold: float, count: int = 3):
        if not threshold >= 0:
            raise ValueError(f"threshold must be non-negative, got {threshold}")
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        self.threshold, self.count = threshold, count
        self.streak = 0
        self._side = 0  # +1 above the reference, -1 below

    def update(self, reference: float | None, current: float | None) -> bool:
        if not drifted(reference, current, self.threshold):
            self.streak, self._side = 0, 0
            return False
        side = 1 if current > reference else -1
        # noise that swings both sides of the reference is not a change
        self.streak = self.streak + 1 if side == self._side else 1
        self._side = side
        return self.streak >= self.count

    def reset(self) -> None:
        self.streak, self._side = 0, 0
