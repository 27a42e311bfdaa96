"""The delay-energy frontier at fixed pruning ratios, in closed form plus one bisection.

With rho fixed, choosing frequencies and power is separable across stages: minimising E + lambda T
gives each stage time in closed form (compute stages: tau = (2K/lambda)^(1/3); upload: via Lambert W),
and lambda is found by bisection. This answers, without a conic solver:

* the least energy meeting a delay limit   (a feasible start for SCA, feasibility checks)
* the least delay meeting an energy limit  (the limits reported for an infeasible QoS)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from scipy.special import lambertw

from coinfer.planner.costs import LN2, Scaled, Shape

_BISECT = 100   # halvings of log(lambda); the bracket spans < 2^8 decades, so this is exact to ~1e-16


@dataclass(frozen=True)
class Frontier:
    """Stages at fixed ratios; `fixed_*` pin a stage at full speed (fixed frequency / fixed power).

    work_d, work_s: each compute stage's work relative to its unpruned self (Segment.work(rho)).
    """
    sc: Scaled
    shape: Shape
    work_d: float
    work_s: float
    fixed_freq_d: bool = False
    fixed_power: bool = False
    fixed_freq_s: bool = False

    # --- one stage at multiplier lam: (time, energy) ------------------------------------------
    def _compute(self, c: float, eh: float, rho: float, lam: float, fixed: bool) -> tuple[float, float]:
        tmin = c * rho
        k = eh * rho ** 3 * c * c          # E = k / tau^2
        if fixed or lam == math.inf:
            tau = tmin
        elif lam <= 0:
            return math.inf, 0.0
        else:
            tau = max(tmin, (2 * k / lam) ** (1 / 3))
        return tau, k / tau ** 2

    def _upload(self, lam: float) -> tuple[float, float]:
        sc = self.sc
        if self.fixed_power or lam == math.inf:
            u = 1.0
        elif lam <= 0:
            return math.inf, self.upload_energy_floor()
        else:
            # -dE/dtau = lam  <=>  (x ln2 - 1) 2^x + 1 = lam (2^r - 1) / P_max with x = r / u
            c = lam * sc.c_u * math.expm1(LN2 * sc.r) / sc.eu
            y = lambertw((c - 1) / math.e).real
            x = (y + 1) / LN2
            u = max(1.0, sc.r / x) if x > 0 else math.inf
            if u == math.inf:
                return math.inf, self.upload_energy_floor()
        return sc.c_u * u, self.upload_energy(u)

    def upload_energy(self, u: float) -> float:
        sc = self.sc
        return sc.eu * u * math.expm1(LN2 * sc.r / u) / math.expm1(LN2 * sc.r)

    def upload_energy_floor(self) -> float:
        sc = self.sc   # limit u -> inf of u (2^(r/u) - 1) = r ln 2
        return sc.eu * sc.r * LN2 / math.expm1(LN2 * sc.r)

    def at(self, lam: float) -> tuple[float, float, tuple[float, float, float]]:
        """(T, E, (tau_d, tau_u, tau_s)) minimising E + lam T."""
        sc, sh = self.sc, self.shape
        td = ed = tu = eu = ts = es = 0.0
        if sh.device:
            td, ed = self._compute(sc.c_d, sc.eh_d, self.work_d, lam, self.fixed_freq_d)
        if sh.upload:
            tu, eu = self._upload(lam)
        if sh.server:
            ts, es = self._compute(sc.c_s, sc.eh_s, self.work_s, lam, self.fixed_freq_s)
        return td + tu + ts, ed + eu + es, (td, tu, ts)

    # --- the two questions ----------------------------------------------------------------------
    def min_delay(self) -> float:
        return self.at(math.inf)[0]

    def energy_floor(self) -> float:
        return self.at(0.0)[1]

    def _bracket(self, pred) -> tuple[float, float]:
        """lo, hi with pred(lo) false and pred(hi) true, pred monotone in lam (false -> true)."""
        lo, hi = 1.0, 1.0
        while pred(lo) and lo > 1e-300:
            lo *= 1e-8
        while not pred(hi) and hi < 1e300:
            hi *= 1e8
        return lo, hi

    def _bisect(self, pred) -> tuple[float, float]:
        lo, hi = self._bracket(pred)
        for _ in range(_BISECT):
            mid = math.sqrt(lo * hi)
            if pred(mid):
                hi = mid
            else:
                lo = mid
        return lo, hi

    def min_energy_given_delay(self, t_max: float):
        """Least E with T <= t_max, and the stage times; None if even full speed is too slow."""
        t_min, e_full, taus = self.at(math.inf)
        if t_min > t_max:
            return None
        if t_min == t_max or self.fixed_freq_d and self.fixed_freq_s and self.fixed_power:
            return e_full, taus
        _, hi = self._bisect(lambda lam: self.at(lam)[0] <= t_max)
        if not self.at(hi)[0] <= t_max:
            return e_full, taus
        _, e, taus = self.at(hi)
        return e, taus

    def min_delay_given_energy(self, e_max: float):
        """Least T with E <= e_max, and the stage times; None if E cannot get that low."""
        t_min, e_full, taus = self.at(math.inf)
        if e_full <= e_max:
            return t_min, taus
        if self.energy_floor() > e_max:
            return None
        lo, _ = self._bisect(lambda lam: self.at(lam)[1] > e_max)
        t, e, taus = self.at(lo)
        return (t, taus) if e <= e_max else None
