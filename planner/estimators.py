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

Outliers: telemetry is not authenticated, and real machines stall now and then. Every estimate sits
behind an `OutlierGate` (a Hampel test: a sample further from the median of the last admitted ones than
max(3 x 1.4826 MAD, a tolerance) is held back). A held-back sample enters nothing; only a run of
`count` of them on the same side, lasting `persist_s`, is a step and is admitted (one outlier in 30,
or a burst between honest samples, moves nothing). The first `warmup` samples have nothing to be judged
against and are all taken, then cleaned by the same test against each other (majority rules: a few
forged ones among the first leave no trace); the controller uses an estimate, and acts on its drift,
only once it has `warmup` samples, so a fresh planner does not act on a handful. A relative-error fit
is hurt most by a sample that claims to be too fast (its residual is unbounded, a too-slow one's at
most 1): the gate is symmetric in the log domain, so both are held back alike.
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


class OutlierGate:
    """Whether a sample agrees with the recent admitted ones (a Hampel test), and when disagreeing ones
    are a step rather than outliers.

    `offer(z, item, reference, now)` judges `z` (the sample on a scale where its noise is additive: a
    log, or a log residual) against `reference` (the z of the last admitted samples): within
    max(k 1.4826 MAD, tol_abs + tol_rel |median|) of their median it is admitted at once. Otherwise it
    is held back. An admitted sample forgets the held-back ones (they were outliers); a run of
    `confirm` held-back samples on the same side of the median, the first at least `persist_s` before
    the last, is a step: the whole run is admitted. With fewer than `min_reference` samples to judge
    against, everything is admitted (nothing to tell an outlier from)."""

    def __init__(self, confirm: int, tol_abs: float, tol_rel: float = 0.0, k: float = 3.0,
                 persist_s: float = 0.0, min_reference: int = 3, max_held: int = 64):
        if confirm < 1:
            raise ValueError(f"confirm must be >= 1, got {confirm}")
        self.confirm, self.tol_abs, self.tol_rel, self.k = confirm, tol_abs, tol_rel, k
        self.persist_s, self.min_reference = persist_s, min_reference
        self.held: deque = deque(maxlen=max(max_held, confirm))
        self._run_started: float | None = None
        self._side = 0
        self.rejected = 0  # held-back samples that were forgotten

    @property
    def holding(self) -> bool:
        return bool(self.held)

    def offer(self, z: float, item, reference, now: float = 0.0) -> list:
        """The items to admit now: [item], [] (held back) or a confirmed run (oldest first)."""
        reference = list(reference)
        if len(reference) < self.min_reference:
            self._forget()
            return [item]
        median = statistics.median(reference)
        mad = statistics.median(abs(r - median) for r in reference)
        bound = max(self.k * 1.4826 * mad, self.tol_abs + self.tol_rel * abs(median))
        deviation = z - median
        if abs(deviation) <= bound:
            self._forget()
            return [item]
        side = 1 if deviation > 0 else -1
        if side != self._side:
            self._forget()
        self._side = side
        if not self.held:
            self._run_started = now
        self.held.append(item)
        if len(self.held) >= self.confirm and now - self._run_started >= self.persist_s:
            run = list(self.held)
            self.held.clear()
            self._run_started, self._side = None, 0
            return run
        return []

    def inliers(self, values) -> list[bool]:
        """Which of `values` the same test admits against all of them (majority rules): how a window
        filled without the gate (a warm-up) is cleaned."""
        values = list(values)
        if len(values) < self.min_reference:
            return [True] * len(values)
        median = statistics.median(values)
        mad = statistics.median(abs(v - median) for v in values)
        bound = max(self.k * 1.4826 * mad, self.tol_abs + self.tol_rel * abs(median))
        return [abs(v - median) <= bound for v in values]

    def _forget(self) -> None:
        self.rejected += len(self.held)
        self.held.clear()
        self._run_started, self._side = None, 0


class Tracked:
    """One estimated quantity: an EWMA, the recent admitted samples, its change detector and the gate
    that keeps outliers out of both (OutlierGate; a confirmed step restarts the EWMA at the step's
    median). `count` is the samples admitted.

    The first `warmup` samples are all taken (there is nothing yet to judge them against); the one that
    completes the warm-up restarts the EWMA over those of them that most agree on, so a few odd ones
    among the first leave no trace."""

    def __init__(self, alpha: float, drift: float, count: int, log_domain: bool = False, persist_s: float = 0.0,
                 tol_abs: float | None = None, warmup: int = 0):
        self.ewma = Ewma(alpha)
        self.recent: deque[float] = deque(maxlen=max(count, 3))
        self.hysteresis = Hysteresis(drift, count)
        self.log_domain = log_domain
        # within the drift threshold a sample is never an outlier: log(1 + drift) in the log domain,
        # drift x |median| (+ tol_abs) in the linear one
        if log_domain:
            self.gate = OutlierGate(count, math.log1p(drift) if tol_abs is None else tol_abs, persist_s=persist_s)
        else:
            self.gate = OutlierGate(count, tol_abs or 0.0, tol_rel=drift, persist_s=persist_s)
        self._reference: deque[float] = deque(maxlen=max(5, 2 * count - 1))
        self.admitted = 0
        self.warmup = warmup
        self._warming: list[tuple[float, float]] = []  # (z, raw) of the warm-up samples

    @property
    def value(self) -> float | None:
        v = self.ewma.value
        return None if v is None else (math.exp(v) if self.log_domain else v)

    @property
    def count(self) -> int:
        """Samples admitted so far (a step's restart of the EWMA does not forget them)."""
        return self.admitted

    def _z(self, raw: float) -> float:
        return math.log(raw) if self.log_domain else raw

    def observe(self, raw: float, now: float = 0.0) -> bool:
        """Offer one raw sample; True when it was admitted (alone, or as the end of a confirmed step)."""
        z = self._z(raw)
        if not math.isfinite(z):
            raise ValueError(f"sample must be finite{' and positive' if self.log_domain else ''}, got {raw}")
        if self.admitted < self.warmup:
            self._warm_up(z, raw)
            return True
        admitted = self.gate.offer(z, raw, self._reference, now)
        if len(admitted) > 1:  # a step: the old level says nothing about the new one
            self.ewma = Ewma(self.ewma.alpha)
            self.ewma.update(self._z(statistics.median(admitted)))
            self._reference.clear()
            for x in admitted:
                self.recent.append(x)
                self._reference.append(self._z(x))
        elif admitted:
            self.recent.append(raw)
            self._reference.append(z)
            self.ewma.update(z)
        self.admitted += len(admitted)
        return bool(admitted)

    def _warm_up(self, z: float, raw: float) -> None:
        self.admitted += 1
        self.recent.append(raw)
        self._reference.append(z)
        self.ewma.update(z)
        self._warming.append((z, raw))
        if self.admitted == self.warmup:
            kept = [pair for pair, ok in zip(self._warming, self.gate.inliers(z for z, _ in self._warming)) if ok]
            self.ewma = Ewma(self.ewma.alpha)
            self.recent.clear()
            self._reference.clear()
            for z_kept, raw_kept in kept:
                self.ewma.update(z_kept)
                self.recent.append(raw_kept)
                self._reference.append(z_kept)
            self.ewma.count = self.admitted
            self._warming = []

    def jump_to_recent(self) -> None:
        """After a detected step: the median of the last `count` (the step's) samples, not an EWMA
        halfway there."""
        step = list(self.recent)[-self.hysteresis.count:]
        value = statistics.median(step)
        self.ewma = Ewma(self.ewma.alpha)
        self.ewma.update(self._z(value))
        self._reference.clear()
        self._reference.extend(self._z(x) for x in step)


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
    collinear samples.)

    Outliers: after `warmup` samples, a forward whose time the current fit does not predict is held
    back by an OutlierGate (log residuals); every fit leaves out the window's samples that disagree with
    most of the others (the same test), so odd samples taken during the warm-up leave no trace."""

    def __init__(self, flops_per_cycle: float, drift: float, count: int, forgetting: float = 0.9,
                 fixed_sd_s: float = 0.05, noise: float = 0.05, window: int = 30, persist_s: float = 0.0,
                 warmup: int = 0):
        self.theta = np.array([0.0, 1.0 / flops_per_cycle])
        self.fixed_sd_s = fixed_sd_s
        self.noise = noise  # relative spread of one measured time
        self.forgetting = forgetting
        self.samples: deque[tuple[float, float, float]] = deque(maxlen=window)
        self.hysteresis = Hysteresis(drift, count)
        # judged on log(measured / what the current fit predicts), against the last admitted samples'
        self.gate = OutlierGate(count, math.log1p(drift), persist_s=persist_s)
        self.reference_size = max(5, 2 * count - 1)
        self.warmup = warmup
        self.count = 0

    def predict(self, x: float, fixed_s: float | None, flops_per_cycle: float, slowdown: float = 1.0) -> float:
        """Seconds for work x at a clock `slowdown` = F / f times below the maximum."""
        return (fixed_s or 0.0) * slowdown + x / flops_per_cycle

    def _residual(self, slowdown: float, x: float, seconds: float) -> float:
        return math.log(seconds / (self.theta[0] * slowdown + self.theta[1] * x))

    def observe(self, x: float, seconds: float, slowdown: float = 1.0, now: float = 0.0) -> bool:
        """Offer one forward (work x, measured seconds, clock slowdown); True when it was admitted into
        the fit (alone, or as the end of a confirmed step). ValueError for a non-positive or
        non-finite one."""
        for name, v in (("x", x), ("seconds", seconds), ("slowdown", slowdown)):
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be positive and finite, got {v}")
        if self.count < self.warmup:
            admitted = [(slowdown, x, seconds)]
        else:
            reference = [self._residual(*sample) for sample in list(self.samples)[-self.reference_size:]]
            admitted = self.gate.offer(self._residual(slowdown, x, seconds), (slowdown, x, seconds), reference, now)
        if not admitted:
            return False
        before = list(self.samples)
        self.samples.extend(admitted)
        self.count += len(admitted)
        self._fit()
        if len(admitted) > 1 and before:
            # a confirmed step: if one fit explains the old samples and the step's alike, the step was
            # the model learning something (t0 against C, when rho moved); if not, the machine changed
            # and the old samples describe a machine that is gone
            tol = self.gate.tol_abs
            old = statistics.median(abs(self._residual(*sample)) for sample in before[-self.reference_size:])
            new = statistics.median(abs(self._residual(*sample)) for sample in admitted)
            if max(old, new) > tol:
                self.samples.clear()
                self.samples.extend(admitted)
                self._fit()
        return True

    def _fit(self) -> None:
        data = np.array(self.samples)
        age = np.arange(len(data) - 1, -1, -1)
        theta = self._solve(data, age)
        if theta is None:  # cannot happen for positive finite samples; keep the last fit
            return
        self.theta = theta
        keep = np.array(self.gate.inliers(self._residual(*sample) for sample in self.samples))
        if not keep.all():  # the fit of what most samples agree on
            theta = self._solve(data[keep], age[keep])
            if theta is not None:
                self.theta = theta

    def _solve(self, data: np.ndarray, age: np.ndarray) -> np.ndarray | None:
        from scipy.optimize import nnls

        weight = self.forgetting ** (0.5 * age) / (self.noise * data[:, 2])
        rows = np.vstack([data[:, :2] * weight[:, None], [1.0 / self.fixed_sd_s, 0.0]])
        target = np.append(data[:, 2] * weight, 0.0)
        theta, _ = nnls(rows, target)
        if theta[1] <= 0:  # all of it fixed cost: no sign of work yet; C from the slope alone
            theta = np.array([0.0, float(target[:-1] @ rows[:-1, 1] / (rows[:-1, 1] @ rows[:-1, 1]))])
        if not np.all(np.isfinite(theta)):
            return None
        return np.array([theta[0], max(theta[1], 1e-12)])

    @property
    def flops_per_cycle(self) -> float | None:
        return 1.0 / self.theta[1] if self.count else None

    @property
    def fixed_s(self) -> float | None:
        return float(self.theta[0]) if self.count else None
