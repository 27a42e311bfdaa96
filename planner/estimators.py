"""Estimates of what the system file can only guess, from measured telemetry, and when one has moved:
the one set the planner's controller (coinfer.planner.controller) uses.

* channel gain g — `gain_from_rate`: from the uplink rate measured at the transmit power in force,
  inverting R(p) = B log2(1 + g p / (B N0)) (coinfer.radio.gain_for_rate);
* effective FLOPs per cycle C and the fixed time of a forward — `ComputeModel`: from the work, the
  compute time and the clock it ran at (t = t0 F / f + rho W / (C f));
* power coefficient kappa — `power_coeff_from_energy`: from measured energy (E = eta kappa (W / C) f^2),
  never from modelled energy (that would only give back the kappa it was modelled with).

`Tracked` smooths one positive quantity (an EWMA, in the log domain for g and kappa, whose noise is
multiplicative) and keeps its last raw values, so that after a detected step it can jump to their
median instead of crawling there. `drifted` and `Hysteresis` decide when a measurement has moved far
enough from what the plan assumed, for long enough, to re-plan.

Conditioning: g grows exponentially with the rate, so relative noise in a measured rate is multiplied
by d ln g / d ln R = (R/B) ln 2 (1 + SNR) / SNR ~ 8.5 at 12 bit/s/Hz. At high SNR judge drift on the
rate (what the delay depends on), not on g.
"""
from __future__ import annotations

import math
import statistics
from collections import deque

import numpy as np

from coinfer.radio import gain_for_rate


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


def _positive(**values: float) -> None:
    for name, v in values.items():
        try:
            ok = math.isfinite(float(v)) and v > 0
        except (TypeError, ValueError):  # None, a string, ...
            ok = False
        if not ok:
            raise ValueError(f"{name} must be positive and finite, got {v}")


def gain_from_rate(rate_bps: float, tx_power_w: float, bandwidth_hz: float, noise_psd_w_per_hz: float) -> float:
    """The g for which R(p) = rate_bps: g = (2^(R/B) - 1) B N0 / p. ValueError for non-positive inputs,
    and for a rate beyond double precision (R/B above ~1000 bit/s/Hz: B is then not this link's)."""
    _positive(rate_bps=rate_bps, tx_power_w=tx_power_w, bandwidth_hz=bandwidth_hz,
              noise_psd_w_per_hz=noise_psd_w_per_hz)
    try:
        gain = gain_for_rate(rate_bps, bandwidth_hz, noise_psd_w_per_hz, tx_power_w)
    except OverflowError:
        gain = math.inf
    if not math.isfinite(gain):
        raise ValueError(f"rate_bps={rate_bps:g} is {rate_bps / bandwidth_hz:g} bit/s/Hz at bandwidth_hz="
                         f"{bandwidth_hz:g}: no finite gain gives it")
    return gain


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


class Tracked:
    """One estimated quantity: an EWMA, the recent raw samples, and its change detector."""

    def __init__(self, alpha: float, drift: float, count: int, log_domain: bool = False):
        self.ewma = Ewma(alpha)
        self.recent: deque[float] = deque(maxlen=max(count, 3))
        self.hysteresis = Hysteresis(drift, count)
        self.log_domain = log_domain

    @property
    def value(self) -> float | None:
        v = self.ewma.value
        return None if v is None else (math.exp(v) if self.log_domain else v)

    def observe(self, raw: float) -> None:
        self.recent.append(raw)
        self.ewma.update(math.log(raw) if self.log_domain else raw)

    def jump_to_recent(self) -> None:
        """After a detected step: the median of the recent samples, not an EWMA halfway there."""
        value = statistics.median(self.recent)
        self.ewma = Ewma(self.ewma.alpha)
        self.ewma.update(math.log(value) if self.log_domain else value)


def power_coeff_from_energy(joules: float, pue: float, work_flops: float, flops_per_cycle: float,
                            freq_hz: float) -> float:
    """kappa = E / (eta (W / C) f^2), from a measured (rapl/nvml) energy E of work W at clock f. A
    package or board meter also counts idle power, which the dynamic model has no term for: kappa
    absorbs it, which is what makes the model predict the meter."""
    return joules / (pue * work_flops / flops_per_cycle * freq_hz ** 2)


class ComputeModel:
    """One side's compute time as t = t0 F / f + x / C, with x = rho W / f.

    The paper's model is the proportional part alone; on real hardware a forward also has a fixed
    part (interpreter, kernel launches, what pruning does not shrink), and fitting C to the total
    makes C fall whenever rho falls, which sends the planner after its own tail. The fixed part is a
    number of cycles too, so it stretches with the clock: t0 is its time at the maximum frequency F
    (a model in fixed seconds, fitted at a low cap, over-predicts at a high one, and every plan that
    moves the clock then looks like compute drift and begets another).

    Fitted by non-negative least squares over the recent samples, in relative error, older samples
    weighed down by `forgetting` per sample. A clock change alone cannot tell t0 from C (both terms
    stretch alike), so a weak ridge pulls t0 towards 0: until rho has varied, C explains the time.
    (A Kalman/RLS update with t0 and C clipped to be non-negative diverged on exactly those
    collinear samples.)"""

    def __init__(self, flops_per_cycle: float, drift: float, count: int, forgetting: float = 0.9,
                 fixed_sd_s: float = 0.05, noise: float = 0.05, window: int = 30):
        self.theta = np.array([0.0, 1.0 / flops_per_cycle])
        self.fixed_sd_s = fixed_sd_s
        self.noise = noise  # relative spread of one measured time
        self.forgetting = forgetting
        self.samples: deque[tuple[float, float, float]] = deque(maxlen=window)
        self.hysteresis = Hysteresis(drift, count)
        self.count = 0

    def predict(self, x: float, fixed_s: float | None, flops_per_cycle: float, slowdown: float = 1.0) -> float:
        """Seconds for work x at a clock `slowdown` = F / f times below the maximum."""
        return (fixed_s or 0.0) * slowdown + x / flops_per_cycle

    def observe(self, x: float, seconds: float, slowdown: float = 1.0) -> None:
        from scipy.optimize import nnls

        self.samples.append((slowdown, x, seconds))
        self.count += 1
        n = len(self.samples)
        data = np.array(self.samples)
        weight = self.forgetting ** (0.5 * np.arange(n - 1, -1, -1)) / (self.noise * data[:, 2])
        rows = np.vstack([data[:, :2] * weight[:, None], [1.0 / self.fixed_sd_s, 0.0]])
        target = np.append(data[:, 2] * weight, 0.0)
        theta, _ = nnls(rows, target)
        if theta[1] <= 0:  # all of it fixed cost: no sign of work yet; C from the slope alone
            theta = np.array([0.0, float(target[:-1] @ rows[:-1, 1] / (rows[:-1, 1] @ rows[:-1, 1]))])
        self.theta = np.array([theta[0], max(theta[1], 1e-12)])

    @property
    def flops_per_cycle(self) -> float | None:
        return 1.0 / self.theta[1] if self.count else None

    @property
    def fixed_s(self) -> float | None:
        return float(self.theta[0]) if self.count else None
