"""The paper's solver for P1: successive convex approximation (SCA), kept as the baseline.

Variables are the paper's (ratios, frequencies, power) plus auxiliary stage times and energies,
each scaled by its stage's full-speed reference: f = f_j / F_j, p = p / P_max, t_j = tau_j / c_j,
t_u = tau_u / c_u, e_j >= rho_j f_j^2. The non-convex pieces are replaced at the current point
(rho0, f0, t0, p0) by first-order bounds that are tight there and conservative everywhere, so every
iterate is feasible and D never increases:

    compute time   rho_j <= t_j f_j,  with  t f = ((a t + f/a)^2 - (a t - f/a)^2) / 4  and the first
                   square replaced by its tangent at (t0, f0); a = sqrt(f0 / t0) balances the factors
    compute energy e_j >= rho_j f_j^2  <=>  f_j^2 / e_j <= 1 / rho_j,  1/rho >= 2/rho0 - rho/rho0^2
    upload time    log2(1 + SNR_max p) >= r / t_u                     (convex as it stands)
    upload energy  p t_u <= (a p + t_u / a)^2 / 4,  a = sqrt(t_u0 / p0)  (tight at the point)

Start: the least ratios, as fast as the energy limit allows (a feasible point whenever P1 is feasible). Stop when D improves by less than `tol` (relative) in one iteration.
"""
from __future__ import annotations

import math
import threading
import time

from coinfer.planner.convex import n_pieces, phi_term, phi_values
from coinfer.planner.costs import Point, Scaled, Shape, evaluate
from coinfer.planner.distortion import distortion
from coinfer.planner.result import Solution, back_off, frontier_of, infeasible, point_from_times, solution_at
from coinfer.errors import UsageError
from coinfer.planner.scenario import Fixes, Scenario

_CLARABEL = {"tol_gap_abs": 1e-10, "tol_gap_rel": 1e-9, "tol_feas": 1e-9, "max_iter": 200}

_cache: dict[tuple, "_SCA"] = {}
_cache_lock = threading.Lock()


class _SCA:
    """The convex subproblem (P3) at a local point, compiled once as a DPP problem."""

    def __init__(self, shape: Shape, fixes: Fixes, model: str, n_pieces: int):
        import cvxpy as cp

        self.shape, self.fixes = shape, fixes
        self.lock = threading.Lock()
        par: dict = {}

        def P(name, **kw):
            if name not in par:
                par[name] = cp.Parameter(name=name, **({"nonneg": True} | kw))
            return par[name]

        cons, t_terms, e_terms, obj = [], [], [], []
        self.var: dict = {}
        rmin = P("rmin")
        for j, present, fixed_rho in (("d", shape.device, fixes.rho_d), ("s", shape.server, fixes.rho_s)):
            if not present:
                continue
            if fixed_rho:
                r = 1.0
            else:
                r = self.var[f"r_{j}"] = cp.Variable(name=f"r_{j}")
                cons += [r >= rmin, r <= 1]
                obj.append(phi_term(cp, P, model, j, r, n_pieces, cons))
            if fixes.freq_of(j):
                t_terms.append(P(f"ct_{j}") * r)
                e_terms.append(P(f"eh_{j}") * r)
                continue
            f = self.var[f"f_{j}"] = cp.Variable(name=f"f_{j}", nonneg=True)
            t = self.var[f"t_{j}"] = cp.Variable(name=f"t_{j}", nonneg=True)
            e = cp.Variable(name=f"e_{j}", nonneg=True)
            # rho <= concave lower bound of t f, tight at (t0, f0)
            cons += [f <= 1, r <= P(f"A_{j}") * t + P(f"B_{j}") * f - P(f"C_{j}")
                     - cp.square(P(f"H1_{j}") * t - P(f"H2_{j}") * f)]
            if fixed_rho:
                cons.append(cp.square(f) <= e)
            else:   # f^2 / e <= linearised 1 / rho (a lower bound of 1/rho, tight at rho0)
                cons.append(cp.quad_over_lin(f, e) <= P(f"ia_{j}") - P(f"ib_{j}") * r)
            t_terms.append(P(f"ct_{j}") * t)
            e_terms.append(P(f"eh_{j}") * e)
        if shape.upload:
            if fixes.power:
                t_terms.append(P("ct_u"))
                e_terms.append(P("eu_full"))
            else:
                pp = self.var["p"] = cp.Variable(name="p", nonneg=True)
                tu = self.var["t_u"] = cp.Variable(name="t_u", pos=True)
                # log(1 + snr p) = ln snr + log(1/snr + p): no huge coefficient inside the cone
                cons += [pp <= 1, cp.log(P("inv_snr") + pp) + P("ln_snr", nonneg=False)
                         >= P("rl") * cp.inv_pos(tu)]
                t_terms.append(P("ct_u") * tu)
                # (Eu / E_max) p t_u <= (ka p + kb t_u)^2, tight at (p0, t_u0)
                e_terms.append(cp.square(P("ka") * pp + P("kb") * tu))
        cons += [cp.sum(cp.hstack(t_terms)) <= 1, cp.sum(cp.hstack(e_terms)) <= 1]
        objective = cp.sum(cp.hstack(obj)) if obj else cp.Constant(0.0)
        self.problem = cp.Problem(cp.Minimize(objective), cons)
        self.par = par
        assert self.problem.is_dpp()

    def set_parameters(self, scn: Scenario, sc: Scaled, x: Point) -> None:
        s, q = scn.system, scn.system.qos
        T, E = q.max_delay_s, q.max_energy_j
        vals = {"rmin": s.distortion.min_ratio, "ct_d": sc.c_d / T, "ct_s": sc.c_s / T, "ct_u": sc.c_u / T,
                "eh_d": sc.eh_d / E, "eh_s": sc.eh_s / E, "eu_full": sc.eu / E, "rl": sc.r * math.log(2)}
        vals.update(phi_values(scn, self.par))
        c = evaluate(scn, x)   # the local point's stage times (auxiliaries tight at x)
        for j, rho, f, tau, cref, fmax in (("d", x.rho_d, x.f_d, c.t_d, sc.c_d, s.device.max_freq_hz),
                                           ("s", x.rho_s, x.f_s, c.t_s, sc.c_s, s.server.max_freq_hz)):
            if cref <= 0:
                continue
            t0, f0 = tau / cref, f / fmax
            a = math.sqrt(f0 / t0)
            s0 = a * t0 + f0 / a
            vals.update({f"A_{j}": s0 * a / 2, f"B_{j}": s0 / (2 * a), f"C_{j}": s0 * s0 / 4,
                         f"H1_{j}": a / 2, f"H2_{j}": 1 / (2 * a), f"ia_{j}": 2 / rho, f"ib_{j}": 1 / rho ** 2})
        ch = s.channel
        snr = ch.gain * s.max_tx_power_w / (ch.bandwidth_hz * ch.noise_psd_w_per_hz)
        vals["inv_snr"], vals["ln_snr"] = 1 / snr, math.log(snr)
        if sc.c_u > 0:
            tu0, p0 = c.t_u / sc.c_u, x.p / s.max_tx_power_w
            a, k = math.sqrt(tu0 / p0), math.sqrt(sc.eu / E)
            vals["ka"], vals["kb"] = k * a / 2, k / (2 * a)
        for name, p in self.par.items():
            p.value = vals[name]

    def step(self, scn: Scenario, sc: Scaled, x: Point) -> Point | None:
        """Solve P3 at the local point x; the new point (None if the subproblem failed)."""
        import cvxpy as cp

        s = scn.system
        with self.lock:
            self.set_parameters(scn, sc, x)
            try:
                self.problem.solve(solver=cp.CLARABEL, warm_start=False, **_CLARABEL)
            except cp.error.SolverError:
                return None
            if self.problem.status not in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE):
                return None
            v = {k: float(var.value) for k, var in self.var.items()}
        return Point(
            rho_d=v.get("r_d", x.rho_d), rho_s=v.get("r_s", x.rho_s),
            f_d=s.device.max_freq_hz * min(1.0, v.get("f_d", 1.0)),
            f_s=s.server.max_freq_hz * min(1.0, v.get("f_s", 1.0)),
            p=s.max_tx_power_w * min(1.0, v.get("p", 1.0)))


def _get(scn: Scenario) -> _SCA:
    key = (scn.fixes, Shape.of(scn).key(), scn.system.distortion.model, n_pieces(scn))
    with _cache_lock:
        prob = _cache.get(key)
        if prob is None:
            prob = _cache[key] = _SCA(Shape.of(scn), scn.fixes, key[2], key[3])
        return prob


def start_point(scn: Scenario) -> Point | None:
    """The least ratios the scheme allows, run as fast as the energy limit permits.

    Any feasible point would do; this one keeps frequencies and power near their maxima, where the
    scaled subproblem is well conditioned (the least-energy start can sit decades below them).
    """
    rho_d, rho_s = scn.fixes.floor(scn.system.distortion.min_ratio)
    fr = frontier_of(scn, rho_d, rho_s)
    got = fr.min_delay_given_energy(scn.system.qos.max_energy_j)
    if got is None or got[0] > scn.system.qos.max_delay_s:
        return None
    return point_from_times(scn, fr.sc, rho_d, rho_s, got[1])


def solve_sca(scn: Scenario, tol: float = 1e-7, max_iter: int = 300) -> Solution:
    """The paper's SCA: its model only (work proportional to rho, parameter distortion)."""
    if scn.system.distortion.model == "output" or any(
            s.present and s.speed != 1.0 for s in (scn.device_segment, scn.server_segment)):
        raise UsageError("--solver sca solves the paper's model only (distortion by weights, compute "
                         "proportional to rho); use the convex solver for measured quality and speed")
    t0 = time.perf_counter()
    x = start_point(scn)
    if x is None:
        return infeasible(scn, solver="sca", t0=t0, iterations=0, objective_trajectory=[])
    prob, sc = _get(scn), Scaled.of(scn)
    d = distortion(scn, x.rho_d, x.rho_s)
    traj, it, status = [d], 0, "max_iterations"
    fixes = scn.fixes
    while it < max_iter:
        y = prob.step(scn, sc, x)
        it += 1
        if y is None:
            status = "subproblem_failed"
            break
        # The subproblem meets the limits only to its solver's tolerance: make the iterate exact.
        y = back_off(scn, y, fixes)
        d_new = distortion(scn, y.rho_d, y.rho_s)
        if not d_new < d:      # no further decrease: keep the last iterate (never go uphill)
            status = "converged"
            break
        x, gain, d = y, d - d_new, d_new
        traj.append(d)
        if gain <= tol * d:
            status = "converged"
            break
    return solution_at(scn, x, solver="sca", t0=t0, status=status, polish=False,
                       iterations=it, objective_trajectory=traj)
